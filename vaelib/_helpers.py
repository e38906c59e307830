"""Private helpers of :mod:`vaelib`: the input checks its public functions run, and small utilities.

Public functions check their arguments once, at the door, with the helpers below, so that a
wrong input stops with an exception from :mod:`vaelib.errors` that names the argument and the
problem instead of a silent ``nan`` further down. Internal calls skip them. The checks that
inspect values (finiteness, signs, sums) read the tensor: on a GPU, one synchronisation each.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from contextlib import contextmanager

import torch

from .errors import (
    NonFiniteError,
    NotLowerTriangularError,
    NotPositiveDefiniteError,
    ProbabilityError,
    ShapeError,
    VaelibInputError,
)


class checked:
    """Decorator: ``@checked(check)`` runs ``check`` on a call's arguments, then the function.

    The function itself stays reachable as ``.unchecked``, for callers that checked their input
    once already (a training loop checks the training set before its first step, then calls
    ``model.loss.unchecked(x)`` so that no step waits for a check). ``check`` takes the same
    arguments as the function and raises on bad input.
    """

    def __init__(self, check):
        self.check = check

    def __call__(self, fn):
        return _Checked(self.check, fn)


class _Checked:
    """A function (or method) that runs its check first; see :class:`checked`."""

    def __init__(self, check, fn, instance=None):
        self.check, self.fn, self.instance = check, fn, instance
        functools.update_wrapper(self, fn)
        self.unchecked = fn if instance is None else functools.partial(fn, instance)

    def __call__(self, *args, **kwargs):
        if self.instance is not None:
            args = (self.instance, *args)
        self.check(*args, **kwargs)
        return self.fn(*args, **kwargs)

    def __get__(self, instance, owner=None):  # as a method: bind both the checked and the unchecked call
        return self if instance is None else _Checked(self.check, self.fn, instance)


def unchecked(fn):
    """``fn.unchecked`` where ``fn`` has one (see :class:`checked`), else ``fn`` itself: how the bounds
    call a model's methods once its input has been checked at the door."""
    return getattr(fn, "unchecked", fn)


def check_model_input(model, x) -> None:
    """Run the model's own input check (``model.check_input(x)``) when it has one."""
    check = getattr(model, "check_input", None)
    if check is not None:
        check(x)


@contextmanager
def evaluating(model: torch.nn.Module):
    """Put ``model`` in eval mode for the block, then restore the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #
def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def _first_index(mask: torch.Tensor) -> tuple[int, ...]:
    """Index of the first ``True`` entry of ``mask`` (which must have one)."""
    idx = torch.nonzero(mask, as_tuple=False)[0]
    return tuple(int(i) for i in idx)


def _raise_at_first(mask: torch.Tensor, error: type, message) -> None:
    """Raise ``error(message(index))`` for the first ``True`` entry of ``mask``, if it has one."""
    if bool(mask.any()):
        raise error(message(_first_index(mask)))


def _describe_batch_index(index: tuple[int, ...]) -> str:
    return "at batch index " + str(index) if index else "in the (unbatched) input"


def check_tensor(x, name: str) -> torch.Tensor:
    """Raise ``TypeError`` unless ``x`` is a :class:`torch.Tensor`; return it."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_floating(x, name: str) -> torch.Tensor:
    """Raise ``TypeError`` unless ``x`` is a floating-point tensor; return it."""
    check_tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float32 or float64), got dtype {x.dtype}"
        )
    return x


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise :class:`NonFiniteError` if ``x`` has a ``nan`` or infinite entry."""
    check_tensor(x, name)
    if x.is_floating_point() or x.is_complex():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            where = _first_index(bad)
            value = x[where].item()
            n_bad = int(bad.sum())
            raise NonFiniteError(
                f"{name} must be finite but has {n_bad} non-finite "
                f"entr{'y' if n_bad == 1 else 'ies'} (first: {value} at index {where})"
            )
    return x


def check_no_nan(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise :class:`NonFiniteError` if ``x`` has a ``nan`` entry (infinities are allowed)."""
    check_tensor(x, name)
    if x.is_floating_point() or x.is_complex():
        bad = torch.isnan(x)
        if bool(bad.any()):
            raise NonFiniteError(
                f"{name} contains nan (first at index {_first_index(bad)}, "
                f"{int(bad.sum())} in all)"
            )
    return x


def check_same_shape(a: torch.Tensor, b: torch.Tensor, names: Sequence[str]) -> None:
    """Raise :class:`ShapeError` unless ``a`` and ``b`` have exactly the same shape.

    ``names`` is a pair of argument names used in the message.
    """
    name_a, name_b = names
    if a.shape != b.shape:
        raise ShapeError(
            f"{name_a} and {name_b} must have the same shape, "
            f"got {name_a}.shape={_shape(a)} and {name_b}.shape={_shape(b)}"
        )


def check_same_event(a: torch.Tensor, b: torch.Tensor, names: Sequence[str]) -> None:
    """Raise :class:`ShapeError` unless ``a`` and ``b`` have the same last (event) dimension."""
    if a.shape[-1] != b.shape[-1]:
        (na, nb) = names
        raise ShapeError(f"{na} and {nb} must have the same last (event) dimension, "
                         f"got {na}.shape={_shape(a)} and {nb}.shape={_shape(b)}")


def check_min_ndim(x: torch.Tensor, ndim: int, name: str) -> None:
    """Raise :class:`ShapeError` unless ``x`` has at least ``ndim`` dimensions."""
    if x.dim() < ndim:
        raise ShapeError(
            f"{name} must have at least {ndim} dimension{'s' if ndim != 1 else ''}, "
            f"got shape {_shape(x)}"
        )


def check_nonempty_batch(x, name: str) -> None:
    """Raise :class:`ShapeError` if the tensor ``x`` holds no entries (e.g. a batch of 0 images).

    A mean over such a batch would be ``nan``. Anything that is not a tensor is left to the
    caller's own checks.
    """
    if isinstance(x, torch.Tensor) and x.numel() == 0:
        raise ShapeError(
            f"{name} is an empty batch (shape {_shape(x)}); a mean over it needs at least one entry"
        )


def check_last_dims(x: torch.Tensor, sizes: Sequence[int | None], name: str) -> None:
    """Raise :class:`ShapeError` unless the trailing dimensions of ``x`` match ``sizes``.

    ``sizes`` lists the expected sizes of the last ``len(sizes)`` dimensions; a
    ``None`` entry accepts any size. ``x`` may have any number of leading
    (batch) dimensions in front.

    Example: ``check_last_dims(cov, (d, d), "cov")``.
    """
    sizes = tuple(sizes)
    check_min_ndim(x, len(sizes), name)
    tail = _shape(x)[x.dim() - len(sizes):]
    for got, want in zip(tail, sizes):
        if want is not None and got != want:
            pretty = "(..., " + ", ".join("*" if s is None else str(s) for s in sizes) + ")"
            raise ShapeError(f"{name} must have shape {pretty}, got shape {_shape(x)}")


def check_square(x: torch.Tensor, name: str) -> int:
    """Raise :class:`ShapeError` unless ``x`` is a (batch of) square matrices; return the size."""
    check_min_ndim(x, 2, name)
    if x.shape[-1] != x.shape[-2]:
        raise ShapeError(
            f"{name} must be a square matrix (..., d, d), got shape {_shape(x)}"
        )
    return int(x.shape[-1])


def broadcast_batch_shape(
    shapes: Sequence[Sequence[int]], names: Sequence[str]
) -> torch.Size:
    """Broadcast several batch shapes together, or raise :class:`ShapeError` naming them."""
    try:
        return torch.broadcast_shapes(*[tuple(s) for s in shapes])
    except RuntimeError:
        listed = ", ".join(f"{n}: {tuple(s)}" for n, s in zip(names, shapes))
        raise ShapeError(f"batch shapes do not broadcast together ({listed})") from None


def check_beta(beta) -> float:
    """Return ``beta``, the weight of the KL term, as a float after checking it is a finite number."""
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta):
        raise ValueError(f"beta, the weight of the KL term, must be a finite number, got {beta!r}")
    return float(beta)


def check_positive_int(n, name: str, minimum: int = 1) -> int:
    """Return ``n`` as an ``int`` after checking it is an integer ``>= minimum``."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {n!r}")
    n = int(n)
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return n


def positive_int_arg(text: str) -> int:
    """An ``argparse`` type for counts such as ``--limit``: a whole number of at least 1. A slice
    ``[:n]`` with a negative n would silently mean "all but the last |n|"."""
    import argparse

    try:
        return check_positive_int(int(text), "count")
    except ValueError:  # not a whole number, or below 1
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None


def check_generator_device(generator, device: torch.device, name: str = "generator") -> None:
    """Raise ``ValueError`` if ``generator`` lives on another kind of device than ``device``."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != torch.device(device).type:
        raise ValueError(
            f"{name} is on device '{generator.device}' but the tensors are on '{device}'; "
            f"create the generator with torch.Generator(device='{torch.device(device).type}')"
        )


def default_tolerance(dtype: torch.dtype) -> float:
    """Tolerance for "equal up to rounding" checks: the square root of the machine epsilon.

    About 3.5e-4 for float32 and 1.5e-8 for float64.
    """
    return math.sqrt(torch.finfo(dtype).eps)


# --------------------------------------------------------------------------- #
# Probabilities
# --------------------------------------------------------------------------- #
def check_probabilities(p: torch.Tensor, name: str, atol: float | None = None) -> torch.Tensor:
    """Check that ``p`` holds probability vectors along its last axis.

    Raises :class:`ShapeError` for a 0-d tensor or an empty last axis,
    :class:`NonFiniteError` for ``nan``/``inf`` entries, and
    :class:`ProbabilityError` for negative entries or a last axis whose sum
    differs from one by more than ``atol`` (default :func:`default_tolerance`
    of the dtype, times ``max(1, sqrt(k))`` for a last axis of length ``k``).
    Zeros are allowed.
    """
    check_floating(p, name)
    check_min_ndim(p, 1, name)
    if p.shape[-1] == 0:
        raise ShapeError(f"{name} has an empty last axis (shape {_shape(p)}); no outcomes to weigh")
    check_finite(p, name)
    negative = p < 0
    if bool(negative.any()):
        where = _first_index(negative)
        raise ProbabilityError(
            f"{name} has negative probabilities (first: {p[where].item()} at index {where})"
        )
    if atol is None:
        atol = default_tolerance(p.dtype) * max(1.0, math.sqrt(p.shape[-1]))
    sums = p.sum(dim=-1)
    off = (sums - 1).abs() > atol
    if bool(off.any()):
        where = _first_index(off)
        value = sums[where].item()
        raise ProbabilityError(
            f"{name} must sum to one along the last axis (tolerance {atol:.1e}), "
            f"but sums to {value!r} {_describe_batch_index(where)}"
        )
    return p


# --------------------------------------------------------------------------- #
# Matrices
# --------------------------------------------------------------------------- #
def check_symmetric(a: torch.Tensor, name: str, rtol: float | None = None) -> torch.Tensor:
    """Raise :class:`NotPositiveDefiniteError` unless each matrix of ``a`` is symmetric.

    The asymmetry ``max|A - A^T|`` of each matrix may be at most ``rtol`` times
    its largest entry in absolute value (default :func:`default_tolerance`), so
    that rounding in products such as ``A @ A.mT`` is accepted.
    """
    check_square(a, name)
    if rtol is None:
        rtol = default_tolerance(a.dtype)
    if a.numel() == 0:
        return a
    asym = (a - a.mT).abs().amax(dim=(-2, -1))
    scale = a.abs().amax(dim=(-2, -1))
    _raise_at_first(asym > rtol * scale, NotPositiveDefiniteError, lambda where: (
        f"covariance {name} is not symmetric {_describe_batch_index(where)}: "
        f"max |A - A^T| = {asym[where].item():.3g} against max |A| = {scale[where].item():.3g}"))
    return a


def check_lower_triangular(
    scale_tril: torch.Tensor, name: str, positive_diagonal: bool = True
) -> torch.Tensor:
    """Check that ``scale_tril`` is lower triangular (and, by default, has a positive diagonal).

    Entries above the diagonal must be exactly zero. Raises :class:`ShapeError`
    for a non-square input, :class:`NonFiniteError` for ``nan``/``inf`` and
    :class:`NotLowerTriangularError` otherwise.
    """
    check_floating(scale_tril, name)
    check_square(scale_tril, name)
    check_finite(scale_tril, name)
    _raise_at_first(torch.triu(scale_tril, diagonal=1) != 0, NotLowerTriangularError, lambda where: (
        f"{name} must be lower triangular, but has the nonzero entry "
        f"{scale_tril[where].item()!r} above the diagonal at index {where}"))
    if positive_diagonal:
        diag = scale_tril.diagonal(dim1=-2, dim2=-1)
        _raise_at_first(diag <= 0, NotLowerTriangularError, lambda where: (
            f"{name} must have a strictly positive diagonal, but has "
            f"{diag[where].item()!r} on the diagonal at index {where}"))
    return scale_tril


def cholesky_or_raise(cov: torch.Tensor, name: str, check_symmetry: bool = True) -> torch.Tensor:
    """Return the lower Cholesky factor ``L`` (``cov = L @ L.mT``) of ``cov``.

    ``cov`` has shape ``(..., d, d)``. Raises :class:`ShapeError` for a
    non-square input, :class:`NonFiniteError` for ``nan``/``inf`` entries,
    :class:`NotPositiveDefiniteError` when a matrix is not symmetric (see
    :func:`check_symmetric`; skip with ``check_symmetry=False``) or when the
    factorisation fails, i.e. the matrix is not positive definite in the
    working precision. The message says which batch element failed.
    """
    check_floating(cov, name)
    check_square(cov, name)
    check_finite(cov, name)
    if check_symmetry:
        check_symmetric(cov, name)
    L, info = torch.linalg.cholesky_ex(cov)
    failed = info != 0
    if bool(failed.any()):
        where = _first_index(failed)
        order = int(info[where])
        n_failed = int(failed.sum())
        extra = f" ({n_failed} matrices of the batch fail)" if n_failed > 1 else ""
        raise NotPositiveDefiniteError(
            f"covariance {name} is not positive definite {_describe_batch_index(where)}: "
            f"the Cholesky factorisation fails at the leading minor of order {order}{extra}"
        )
    return L


def mc_log_ratios(samples: torch.Tensor, log_p, log_q) -> torch.Tensor:
    """log p(x) − log q(x) for n >= 2 samples x on the first axis, after checking their shapes.

    Raises :class:`ShapeError` unless both log-densities have the samples on their first axis and
    the same number of batch axes, and :class:`NonFiniteError` for a nan or −inf ratio (a sample
    outside p's support: not drawn from p). +inf (q gives a sample zero density) is allowed.
    """
    check_tensor(samples, "samples")
    check_min_ndim(samples, 1, "samples")
    n = int(samples.shape[0])
    if n < 2:
        raise ValueError(f"need at least 2 samples for a standard error, got {n}")
    lp, lq = log_p(samples), log_q(samples)
    for t, name in ((lp, "log_p"), (lq, "log_q")):
        check_tensor(t, f"{name}(samples)")
        if t.dim() == 0 or t.shape[0] != n:
            raise ShapeError(f"{name} must return one log-density per sample, with the samples on the first axis "
                             f"(length {n}); got shape {_shape(t)}")
    if lp.dim() != lq.dim():  # broadcasting would meet one's sample axis with the other's batch axis
        raise ShapeError("log_p and log_q must have the samples on their first axis and the same number of "
                         f"batch axes, got shapes {_shape(lp)} and {_shape(lq)}")
    try:
        ratio = lp - lq
    except RuntimeError:
        raise ShapeError(f"log_p and log_q returned shapes {_shape(lp)} and {_shape(lq)} that do not broadcast") from None
    if bool(torch.isnan(ratio).any()):
        raise NonFiniteError("log p - log q is nan at some samples (e.g. -inf - (-inf): a sample outside "
                             "the support of p, or a nan log-density)")
    if bool((ratio == -math.inf).any()):
        raise NonFiniteError("log p - log q is -inf at some samples: p gives zero density to its own samples "
                             "(samples not drawn from p), or q an infinite one")
    return ratio


def check_likelihood_args(x, param, event_dims: int, func: str, pname: str) -> None:
    """x and a likelihood's parameter: tensors without nan, with the same event shape (the last
    ``event_dims`` axes), whose shapes broadcast."""
    for t, name in ((x, "x"), (param, pname)):
        check_tensor(t, f"{func}: {name}")
        check_no_nan(t, f"{func}: {name}")
    if event_dims < 0 or event_dims > min(x.dim(), param.dim()):
        raise ShapeError(f"event_dims={event_dims} is not valid for tensors of shapes {_shape(x)} and {_shape(param)}")
    xs, ps = _shape(x)[x.dim() - event_dims:], _shape(param)[param.dim() - event_dims:]
    if xs != ps:
        raise ShapeError(f"{func}: x and {pname} have different event shapes {xs} and {ps} "
                         f"(full shapes {_shape(x)} and {_shape(param)})")
    try:
        torch.broadcast_shapes(x.shape, param.shape)
    except RuntimeError:
        raise ShapeError(f"{func}: shapes {_shape(x)} and {_shape(param)} do not broadcast") from None


def check_unit_interval(x: torch.Tensor, name: str = "images") -> None:
    """Pixels must be finite and in [0, 1]: one check, which reads the tensor once."""
    outside = ~((x >= 0) & (x <= 1))  # nan fails both comparisons
    if bool(outside.any()):
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            raise NonFiniteError(f"{name} must be finite and lie in [0, 1], but hold {int(bad.sum())} nan or "
                                 f"infinite entries (first at index {_first_index(bad)})")
        raise VaelibInputError(
            f"{name} must lie in [0, 1], got values in [{x.min().item():g}, {x.max().item():g}]; "
            "scale grey levels 0..255 to [0, 1] first, e.g. with vaelib.data.to_float")


def check_model_settings(latent_dim, hidden_sizes, activation, activations, likelihood, likelihoods, sigma) -> None:
    """The settings of a VAE or autoencoder (:mod:`vaelib.models`)."""
    if not isinstance(latent_dim, int) or isinstance(latent_dim, bool) or latent_dim < 1:
        raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
    if any(int(h) < 1 for h in hidden_sizes):
        raise ValueError(f"hidden_sizes must be positive integers, got {tuple(hidden_sizes)}")
    if activation not in activations:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(activations)}")
    if likelihood not in likelihoods:
        raise ValueError(f"likelihood must be one of {likelihoods}, got {likelihood!r}")
    if not (float(sigma) > 0 and math.isfinite(float(sigma))):
        raise ValueError(f"sigma (the Gaussian decoder's standard deviation) must be positive, got {sigma!r}")
