"""Tools the notebooks use to check claims numerically.

A notebook states a claim, computes the number, and asserts it. These are the small helpers
those cells share, so that no notebook defines them again: float64 tensors (:func:`t64`),
seeded random generators (:func:`gen`), a Monte Carlo mean with its standard error
(:func:`mean_se`) and the test that an estimate lies within a few standard errors of the exact
value (:func:`check_mc`), and random covariance matrices with a chosen condition number
(:func:`random_rotation`, :func:`random_cov`). Each checks its input; none is on the path of
training. This module imports only NumPy and torch.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

__all__ = ["Z_TOL", "t64", "gen", "mean_se", "check_mc", "random_rotation", "random_cov"]

#: How many standard errors a Monte Carlo estimate may lie from the exact value. A standard normal
#: lies beyond 4 with probability 6.3e-5; every draw in the notebooks is seeded, so a check either
#: always passes or always fails.
Z_TOL = 4.0


def t64(values) -> torch.Tensor:
    """``values`` (a number, nested lists, a NumPy array or a tensor) as a float64 torch tensor.

    A tensor is converted with ``.to(torch.float64)``, so it stays on the autograd graph (and is
    returned as it is when it is float64 already); anything else is copied. Notebooks 01, 02 and
    04 use it, since ``vaelib.kl`` and ``vaelib.reparam`` work on torch tensors.
    """
    if isinstance(values, torch.Tensor):
        return values.to(torch.float64)
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"t64 needs numbers, arrays or tensors, got {type(values).__name__}: {e}") from None
    return torch.tensor(array)


def gen(seed: int) -> torch.Generator:
    """A fresh CPU ``torch.Generator`` seeded with ``seed``: the same seed, the same draws.

    Pass it as ``generator=gen(7)`` so that one Monte Carlo check does not depend on what the
    cells before it drew. Notebooks 02, 03 and 04 use it.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return torch.Generator().manual_seed(int(seed))


def mean_se(samples) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of ``samples`` over axis 0 and its standard error, sd / sqrt(n), in float64.

    ``samples`` has shape ``(n, ...)``, n >= 2 independent draws; sd is the sample standard
    deviation (divisor n - 1). Both results have shape ``(...)`` and no gradient. Notebooks 01,
    02 and 04 use it.
    """
    x = t64(samples).detach()
    if x.dim() == 0 or x.shape[0] < 2:
        raise ValueError(f"mean_se needs at least 2 samples along axis 0, got shape {tuple(x.shape)}")
    return x.mean(0), x.std(0) / math.sqrt(x.shape[0])


def check_mc(estimate, se, truth, what: str, z_tol: float = Z_TOL, quiet: bool = False) -> float:
    """Assert that a Monte Carlo ``estimate`` lies within ``z_tol`` standard errors of ``truth``.

    ``estimate``, ``se`` and ``truth`` are numbers, arrays or tensors that broadcast together; the
    test is ``|estimate - truth| / se < z_tol`` everywhere. Prints the largest of these z-values
    (unless ``quiet``) and returns it; raises ``AssertionError`` naming ``what`` and z when the
    claim fails, and ``ValueError`` when an ``se`` is not finite and positive. Notebooks 01, 02
    and 04 use it.
    """
    if not isinstance(what, str):
        raise TypeError(f"what must be a str describing the check, got {type(what).__name__}")
    if not (isinstance(z_tol, numbers.Real) and math.isfinite(z_tol) and z_tol > 0):
        raise ValueError(f"{what}: z_tol must be a positive finite number, got {z_tol!r}")
    estimate, se, truth = (t64(v).detach() for v in (estimate, se, truth))
    try:
        torch.broadcast_shapes(estimate.shape, se.shape, truth.shape)
    except RuntimeError:
        raise ValueError(f"{what}: the shapes of estimate {tuple(estimate.shape)}, se {tuple(se.shape)} and "
                         f"truth {tuple(truth.shape)} do not broadcast") from None
    if se.numel() == 0 or not bool(torch.isfinite(se).all() and (se > 0).all()):
        raise ValueError(f"{what}: every standard error must be finite and > 0, got {se.flatten()[:5].tolist()}")
    if not bool(torch.isfinite(truth).all()):
        raise ValueError(f"{what}: the exact value must be finite, got {truth.flatten()[:5].tolist()}")
    z = ((estimate - truth).abs() / se).max().item()   # a nan estimate gives nan, which fails below
    if not quiet:
        print(f"{what}: max |estimate - truth| = {z:.2f} SE (limit {z_tol})")
    if not z < z_tol:
        raise AssertionError(f"{what}: the estimate is {z:.2f} standard errors from the exact value "
                             f"(limit {z_tol})")
    return z


def _check_dim(d) -> int:
    if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
        raise ValueError(f"d must be an integer >= 1, got {d!r}")
    return int(d)


def _check_rng(rng) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal ``d x d`` matrix: the Q of the QR factorisation of a Gaussian matrix.

    The signs of Q's columns are fixed by the diagonal of R, which makes Q uniformly distributed
    over the orthogonal matrices (Haar measure). Notebook 02 uses it.
    """
    d = _check_dim(d)
    _check_rng(rng)
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def random_cov(d: int, cond: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random symmetric positive definite ``d x d`` covariance with condition number ``cond``.

    The eigenvalues are spaced geometrically from 1 down to 1/cond, times a random overall scale
    between 1/e and e, in a random orientation: ``cov = rot @ diag(eig) @ rot.T``. Returns
    ``(cov, rot, eig)``. ``cond`` must be >= 1; for ``d = 1`` the matrix is 1 x 1 and its
    condition number is 1 whatever ``cond`` is. Notebook 02 uses it.
    """
    d = _check_dim(d)
    if not (isinstance(cond, numbers.Real) and math.isfinite(cond) and cond >= 1):
        raise ValueError(f"cond is a condition number: a finite number >= 1, got {cond!r}")
    _check_rng(rng)
    rot = random_rotation(d, rng)
    eig = np.geomspace(1.0, 1.0 / cond, d) * np.exp(rng.uniform(-1.0, 1.0))
    cov = (rot * eig) @ rot.T
    return (cov + cov.T) / 2, rot, eig
