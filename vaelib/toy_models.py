"""Toy latent variable models of notebooks 03 and 05, small enough that every quantity is exact.

- :class:`GaussianMixture` (section 1): three 2-D Gaussians and a uniform prior over them; z is discrete.
- :class:`LinearGaussian` (sections 2 to 6 and 8): z ~ N(0, I), x | z ~ N(W z + b, s² I); its
  marginal and posterior are Gaussians in closed form.
- :class:`ArcModel` (section 7): a nonlinear decoder on a circle; log p(x) by quadrature.
- :func:`log1p_relative_variance` (section 6): the second moment of an importance weight.
- Section 7's fitting helpers: :func:`lbfgs`, :class:`LinearEncoder`, :class:`MLPEncoder`,
  :func:`train_encoder` and :func:`optimal_q`.

The two Gaussian-latent models have the interface :mod:`vaelib.bounds` expects (``prepare_input``,
``encode``, ``decode``, ``log_px_given_z``, ``kl``), so ``bounds.elbo`` and ``bounds.log_weights``
run on them; ``model.with_encoder(fn)`` chooses the q(z|x) that ``encode`` returns (:func:`fixed_encoder`: one
fixed q per data point). Everything is float64. Public methods check their input once (``@checked``);
internal calls skip the checks.
"""

from __future__ import annotations

import copy
import math
import numbers

import torch
from torch import nn
from torch.distributions import MultivariateNormal

from ._helpers import (
    cholesky_or_raise,
    check_finite,
    check_floating,
    check_last_dims,
    check_positive_int,
    check_square,
    check_tensor,
    checked,
)
from .bounds import gaussian_log_likelihood
from .errors import ShapeError, VaelibInputError
from .kl import kl_standard_normal

__all__ = ["GaussianMixture", "LinearGaussian", "ArcModel", "fixed_encoder", "log1p_relative_variance", "lbfgs",
           "LinearEncoder", "MLPEncoder", "train_encoder", "optimal_q"]

F64 = torch.float64
MIXTURE_MEANS = ((-2.5, -0.5), (2.0, -1.0), (0.0, 2.2))
MIXTURE_COVS = (((1.0, 0.6), (0.6, 1.0)), ((0.8, -0.3), (-0.3, 0.6)), ((1.5, 0.0), (0.0, 0.4)))


def _check_points(x, dim: int, name: str = "x") -> None:
    check_floating(x, name)
    check_last_dims(x, (dim,), name)
    check_finite(x, name)


def _check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise VaelibInputError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _check_generator(generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (seeded), got {type(generator).__name__}")


def _check_q_params(mu, logvar, dim: int) -> None:
    for t, name in ((mu, "mu"), (logvar, "logvar")):
        _check_points(t, dim, name)
    if mu.shape != logvar.shape:
        raise ShapeError(f"mu and logvar must have the same shape, got {tuple(mu.shape)} and {tuple(logvar.shape)}")


# --------------------------------------------------------------------------- section 1: the mixture
def _check_mixture_args(model, x, means=None) -> None:
    _check_points(x, model.dim)
    if means is not None:
        check_floating(means, "means")
        check_last_dims(means, (model.n_components, model.dim), "means")


def _check_elbo_args(model, q, x) -> None:
    _check_mixture_args(model, x)
    check_floating(q, "q")
    check_last_dims(q, (model.n_components,), "q")
    if bool((q < 0).any()) or not torch.allclose(q.sum(-1), torch.ones((), dtype=q.dtype)):
        raise VaelibInputError("q must hold probability vectors on its last axis (non-negative, summing to 1)")


class GaussianMixture:
    """p(z = k) = 1/K and x | z = k ~ N(μ_k, Σ_k): the worked example of notebook 03, section 1.

    A discrete latent, so the marginal p(x) = Σ_k p(x, z=k) and the posterior p(z=k | x) are
    sums of K terms, computed with logsumexp. The defaults are the notebook's three components
    in the plane.
    """

    def __init__(self, means=MIXTURE_MEANS, covs=MIXTURE_COVS):
        self.means, self.covs = torch.as_tensor(means, dtype=F64), torch.as_tensor(covs, dtype=F64)
        self.n_components, self.dim = self.means.shape
        check_last_dims(self.covs, (self.dim, self.dim), "covs")
        self.log_prior = torch.full((self.n_components,), -math.log(self.n_components), dtype=F64)
        # checked here, not left to torch.distributions, whose checks can be switched off globally
        self.components = MultivariateNormal(self.means, scale_tril=cholesky_or_raise(self.covs, "covs"))

    @checked(_check_mixture_args)
    def log_joint(self, x, means=None):
        """log p(x, z=k) = log p(z=k) + log N(x; μ_k, Σ_k), shape (..., K). ``means`` (..., K, D)
        replaces the μ_k, e.g. by a tensor that requires gradients."""
        components = self.components if means is None else MultivariateNormal(means, covariance_matrix=self.covs)
        return self.log_prior + components.log_prob(x.unsqueeze(-2))

    @checked(_check_mixture_args)
    def log_marginal(self, x, means=None):
        """log p(x) = log Σ_k p(x, z=k), by logsumexp (no underflow far from every component)."""
        return torch.logsumexp(self.log_joint.unchecked(x, means), dim=-1)

    @checked(_check_mixture_args)
    def posterior(self, x):
        """p(z=k | x) = p(x, z=k) / p(x), Bayes' rule: shape (..., K)."""
        log_joint = self.log_joint.unchecked(x)
        return torch.exp(log_joint - torch.logsumexp(log_joint, dim=-1, keepdim=True))

    @checked(_check_elbo_args)
    def elbo(self, q, x):
        """ELBO(q) = Σ_k q_k [log p(x, z=k) − log q_k], with 0·log 0 = 0 (section 2's definition)."""
        log_q = torch.log(torch.where(q > 0, q, 1.0))
        return torch.where(q > 0, q * (self.log_joint.unchecked(x) - log_q), 0.0).sum(-1)

    def sample(self, n: int, generator: torch.Generator):
        """Ancestral sampling, z ~ p(z) then x ~ p(x | z): returns x (n, D) and z (n,)."""
        n = check_positive_int(n, "n")
        _check_generator(generator)
        z = torch.multinomial(torch.full((self.n_components,), 1 / self.n_components, dtype=F64), n, replacement=True,
                              generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=F64)
        scale = torch.linalg.cholesky(self.covs)
        return self.means[z] + (scale[z] @ eps.unsqueeze(-1)).squeeze(-1), z


# --------------------------------------------------------------------------- section 2: linear-Gaussian
def _check_linear_gaussian(W, b, s) -> None:
    check_tensor(W, "W")
    check_tensor(b, "b")
    check_floating(W, "W")
    if W.dim() != 2:
        raise ShapeError(f"W must be a matrix (x_dim, z_dim), got shape {tuple(W.shape)}")
    check_floating(b, "b")
    if b.shape != W.shape[:1]:
        raise ShapeError(f"b must have shape ({W.shape[0]},) to match W, got {tuple(b.shape)}")
    _check_positive(s, "s")


def fixed_encoder(mu, logvar):
    """An encoder that gives every data point the q(z|x) = N(μ, diag exp(logvar)) of its row (notebook 03,
    section 4, and notebook 05):
    ``mu`` and ``logvar`` (n, d) are tiled to the N = r·n rows of ``x`` (``x.repeat(r, 1)``: r copies of
    n points). A (1, d) pair serves any batch."""
    check_floating(mu, "mu")
    if mu.dim() != 2 or mu.shape != logvar.shape:
        raise ShapeError(f"mu and logvar must both have shape (n, d), got {tuple(mu.shape)}, {tuple(logvar.shape)}")

    def encode(x):
        if len(x) % len(mu):
            raise ShapeError(f"fixed_encoder for {len(mu)} points cannot serve a batch of {len(x)}")
        return mu.repeat(len(x) // len(mu), 1), logvar.repeat(len(x) // len(mu), 1)
    return encode


class _GaussianLatentModel:
    """p(z) = N(0, I) and p(x | z) = N(decode(z), s² I), with the interface of vaelib.bounds."""

    x_dim: int
    z_dim: int
    s: float
    encoder = None

    def check_input(self, x) -> None:
        """x: floats of shape (..., x_dim), finite."""
        _check_points(x, self.x_dim)

    def prepare_input(self, x):
        return x

    def encode(self, x):
        """(μ, log σ²) of q(z|x): from ``self.encoder`` (e.g. :func:`fixed_encoder`)."""
        if self.encoder is None:
            raise VaelibInputError(f"{type(self).__name__} has no encoder: use model.with_encoder(fn), fn mapping "
                                   "x to (mu, logvar)")
        return self.encoder(x)

    def with_encoder(self, encoder):
        """A copy of the model (sharing its parameters) whose q(z|x) comes from ``encoder``: x → (μ, log σ²)."""
        if not callable(encoder):
            raise TypeError(f"encoder must be a function x -> (mu, logvar), got {type(encoder).__name__}")
        other = copy.copy(self)
        other.encoder = encoder
        return other

    def log_px_given_z(self, x, mean):
        return gaussian_log_likelihood.unchecked(x, mean, self.s)

    def kl(self, mu, logvar):
        return kl_standard_normal.unchecked(mu, logvar)

    def sample(self, n: int, generator: torch.Generator):
        """Ancestral sampling: z ~ N(0, I), then x = decode(z) + s ε. Returns x (n, x_dim)."""
        n = check_positive_int(n, "n")
        _check_generator(generator)
        z = torch.randn(n, self.z_dim, generator=generator, dtype=F64)
        return self.decode(z) + self.s * torch.randn(n, self.x_dim, generator=generator, dtype=F64)


class LinearGaussian(_GaussianLatentModel):
    """z ~ N(0, I_d), x | z ~ N(W z + b, s² I_p): notebook 03, section 2 (again in notebook 05).

    Marginal p(x) = N(b, W Wᵀ + s² I); posterior p(z|x) = N(m, S) with S⁻¹ = I + WᵀW / s² and
    m = S Wᵀ(x − b) / s². With orthogonal columns of W (:meth:`random`), S is diagonal and
    :meth:`exact_posterior` is the exact posterior; it is the default encoder.
    """

    def __init__(self, W, b, s: float):
        _check_linear_gaussian(W, b, s)
        self.W, self.b, self.s = W.to(F64), b.to(F64), float(s)
        self.x_dim, self.z_dim = W.shape
        self.encoder = self.exact_posterior

    @classmethod
    def random(cls, x_dim: int, z_dim: int, s: float, generator: torch.Generator):
        """W with orthogonal columns of random lengths in [1, 3], b ~ N(0, I): the posterior covariance
        is diagonal, so a diagonal Gaussian q can be the exact posterior."""
        if check_positive_int(z_dim, "z_dim") > check_positive_int(x_dim, "x_dim"):
            raise ValueError(f"orthogonal columns need z_dim <= x_dim, got {z_dim} > {x_dim}")
        _check_generator(generator)
        Q, _ = torch.linalg.qr(torch.randn(x_dim, z_dim, generator=generator, dtype=F64))
        lengths = 1 + 2 * torch.rand(z_dim, generator=generator, dtype=F64)
        return cls(Q * lengths, torch.randn(x_dim, generator=generator, dtype=F64), s)

    def decode(self, z):
        return z @ self.W.T + self.b

    @checked(_GaussianLatentModel.check_input)
    def log_px(self, x):
        """log p(x) = log N(x; b, W Wᵀ + s² I)."""
        cov = self.W @ self.W.T + self.s**2 * torch.eye(self.x_dim, dtype=F64)
        return MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    @checked(_GaussianLatentModel.check_input)
    def posterior(self, x):
        """Mean m(x) (..., d) and covariance S (d, d) of the Gaussian posterior p(z | x)."""
        cov = torch.linalg.inv(torch.eye(self.z_dim, dtype=F64) + self.W.T @ self.W / self.s**2)
        return ((x - self.b) @ self.W / self.s**2) @ cov, cov

    def exact_posterior(self, x):
        """p(z | x) as (μ, log σ²) of a diagonal Gaussian: exact when WᵀW is diagonal."""
        mean, cov = self.posterior.unchecked(x)
        return mean, torch.log(torch.diagonal(cov)).expand_as(mean)

    @checked(lambda self, x, mu, logvar: (self.check_input(x), _check_q_params(mu, logvar, self.z_dim)))
    def expected_log_lik(self, x, mu, logvar):
        """E_q[log p(x | z)] for q = N(μ, diag v), v = exp(logvar):
        −(p/2) log(2π s²) − (‖x − Wμ − b‖² + Σ_j v_j ‖w_j‖²) / (2 s²)."""
        sq = ((x - self.decode(mu)) ** 2).sum(-1) + (logvar.exp() * (self.W**2).sum(0)).sum(-1)
        return -0.5 * self.x_dim * math.log(2 * math.pi * self.s**2) - 0.5 * sq / self.s**2

    @checked(lambda self, x, mu, logvar: (self.check_input(x), _check_q_params(mu, logvar, self.z_dim)))
    def elbo_closed_form(self, x, mu, logvar):
        """ELBO = E_q[log p(x | z)] − KL(q ‖ N(0, I)) for q = N(μ, diag exp(logvar)) (section 3's form)."""
        return self.expected_log_lik.unchecked(x, mu, logvar) - kl_standard_normal.unchecked(mu, logvar)


# --------------------------------------------------------------------------- section 6: importance weights
def _check_gaussian_pair(m, S, mu, V) -> None:
    for t, name in ((m, "m"), (S, "S"), (mu, "mu"), (V, "V")):
        check_floating(t, name)
        check_finite(t, name)
    if m.dim() != 1 or mu.shape != m.shape:
        raise ShapeError(f"m and mu must be vectors of one length d, got shapes {tuple(m.shape)}, {tuple(mu.shape)}")
    for t, name in ((S, "S"), (V, "V")):
        if t.dim() != 2 or check_square(t, name) != len(m):
            raise ShapeError(f"{name} must be a ({len(m)}, {len(m)}) covariance, got shape {tuple(t.shape)}")


@checked(_check_gaussian_pair)
def log1p_relative_variance(m, S, mu, V):
    """log ∫ N(z; m, S)² / N(z; μ, V) dz = log(1 + Var_q(w) / p(x)²) for the importance weights w of the
    proposal q = N(μ, V) when the posterior is N(m, S) (notebook 05, section 1). With A = 2S⁻¹ − V⁻¹ and
    h = 2S⁻¹m − V⁻¹μ it is −log det S + ½ log det V − ½ log det A + ½ hᵀA⁻¹h − mᵀS⁻¹m + ½ μᵀV⁻¹μ,
    and +inf when A is not positive definite (the weights then have infinite variance).
    """
    S_inv, V_inv = torch.linalg.inv(S), torch.linalg.inv(V)
    A = 2 * S_inv - V_inv
    if torch.linalg.eigvalsh(A).min() <= 0:
        return torch.tensor(math.inf, dtype=m.dtype)
    h = 2 * S_inv @ m - V_inv @ mu
    return (-torch.logdet(S) + 0.5 * torch.logdet(V) - 0.5 * torch.logdet(A)
            + 0.5 * h @ torch.linalg.solve(A, h) - m @ S_inv @ m + 0.5 * mu @ V_inv @ mu)


# --------------------------------------------------------------------------- section 7: the arc model
def _check_q_args(model, x, mu, logvar) -> None:
    model.check_input(x)
    _check_q_params(mu, logvar, 1)
    if mu.shape[:-1] != x.shape[:-1]:
        raise ShapeError(f"mu and logvar need one row per point of x, got {tuple(mu.shape)} for x {tuple(x.shape)}")


class ArcModel(_GaussianLatentModel):
    """z ~ N(0, 1), x | z ~ N(f(z), s² I₂) with f(z) = R (sin az, cos az): notebook 05, section 2.

    A nonlinear decoder (the data lie along an arc) whose quantities stay exact: log p(x) by
    quadrature over z, and the ELBO of q = N(μ, v) in closed form, since ‖f(z)‖ = R and
    E_q[sin az] = e^(−a²v/2) sin aμ, E_q[cos az] = e^(−a²v/2) cos aμ.
    """

    x_dim, z_dim = 2, 1

    def __init__(self, R: float = 2.0, a: float = 1.0, s: float = 0.6):
        self.R, self.a, self.s = (_check_positive(v, n) for v, n in ((R, "R"), (a, "a"), (s, "s")))
        self.encoder = None

    def decode(self, z):
        return self.R * torch.cat([torch.sin(self.a * z), torch.cos(self.a * z)], -1)

    def angle(self, x):
        """The z whose f(z) points the way x does: a rough posterior mean, used to start optimizers."""
        return torch.atan2(x[..., :1], x[..., 1:]) / self.a

    @checked(lambda self, x, zs: (self.check_input(x), check_floating(zs, "zs")))
    def log_joint_grid(self, x, zs):
        """log p(x, z) for every point x (N, 2) and every grid value z (G,): shape (N, G)."""
        log_prior = -0.5 * zs**2 - 0.5 * math.log(2 * math.pi)
        return log_prior + gaussian_log_likelihood.unchecked(x[:, None, :], self.decode(zs[:, None])[None], self.s)

    @checked(lambda self, x, n_grid=8001, z_max=9.0: (self.check_input(x), check_positive_int(n_grid, "n_grid", 2)))
    def log_px(self, x, n_grid: int = 8001, z_max: float = 9.0):
        """log p(x) = log ∫ p(x, z) dz by a Riemann sum on ``n_grid`` points of [−z_max, z_max]."""
        zs = torch.linspace(-z_max, z_max, n_grid, dtype=F64)
        return torch.logsumexp(self.log_joint_grid.unchecked(x, zs), -1) + math.log(zs[1] - zs[0])

    @checked(_check_q_args)
    def elbo_closed_form(self, x, mu, logvar):
        """ELBO of q = N(μ, v), v = exp(logvar), μ and logvar (N, 1):
        −log(2π s²) − E_q‖x − f(z)‖² / (2 s²) − KL(q ‖ N(0, 1)), with
        E_q‖x − f(z)‖² = ‖x‖² + R² − 2R e^(−a²v/2) (x₁ sin aμ + x₂ cos aμ)."""
        damp = torch.exp(-0.5 * self.a**2 * logvar.exp())
        sq = ((x**2).sum(-1, keepdim=True) + self.R**2
              - 2 * self.R * damp * (x[:, :1] * torch.sin(self.a * mu) + x[:, 1:] * torch.cos(self.a * mu)))
        reconstruction = -math.log(2 * math.pi * self.s**2) - 0.5 * sq / self.s**2
        return reconstruction[:, 0] - kl_standard_normal.unchecked(mu, logvar)


# --------------------------------------------------------------------------- section 7: fitting q
def lbfgs(params, objective, max_iter: int) -> None:
    """Minimize ``objective()`` over ``params`` with full-batch L-BFGS and a strong-Wolfe line search,
    to tight tolerances (notebook 05, section 2: every objective there is deterministic)."""
    opt = torch.optim.LBFGS(params, max_iter=check_positive_int(max_iter, "max_iter"), tolerance_grad=1e-11,
                            tolerance_change=1e-15, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss
    opt.step(closure)


class _Encoder(nn.Module):
    """x → (μ, log v): the two halves of the output of ``self.net``."""

    net: nn.Module

    def forward(self, x):
        return self.net(x).chunk(2, dim=-1)


class LinearEncoder(_Encoder):
    """μ and log v affine in x (notebook 05, section 2): the restricted amortized family."""

    def __init__(self, x_dim: int = 2, z_dim: int = 1):
        super().__init__()
        self.net = nn.Linear(x_dim, 2 * z_dim, dtype=F64)


class MLPEncoder(_Encoder):
    """μ and log v from two hidden layers of ``hidden`` tanh units (notebook 05, section 2)."""

    def __init__(self, x_dim: int = 2, z_dim: int = 1, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(x_dim, hidden, dtype=F64), nn.Tanh(), nn.Linear(hidden, hidden, dtype=F64),
                                 nn.Tanh(), nn.Linear(hidden, 2 * z_dim, dtype=F64))


def train_encoder(encoder: nn.Module, model, x, steps: int = 1500, lr: float = 1e-2) -> None:
    """Fit ``encoder`` by maximizing the mean closed-form ELBO of ``model`` on the points ``x``: Adam with a
    cosine learning-rate schedule, full batch (notebook 05, section 2)."""
    model.check_input(x)
    opt = torch.optim.Adam(encoder.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=check_positive_int(steps, "steps"))
    for _ in range(steps):
        opt.zero_grad()
        loss = -model.elbo_closed_form.unchecked(x, *encoder(x)).mean()
        loss.backward()
        opt.step()
        schedule.step()


def optimal_q(model: ArcModel, x, max_iter: int = 2000):
    """The best q_i = N(μ_i, v_i) of each point on its own (notebook 05, section 2): L-BFGS on the sum of
    the independent ELBOs from two starts (the prior, and the angle of x with v = e⁻²), the better one
    kept per point. Returns (μ, log v, ELBO, largest gradient entry at the two optima), no gradients."""
    model.check_input(x)
    n = len(x)
    best = None
    for mu0, lv0 in [(torch.zeros(n, 1, dtype=F64), torch.zeros(n, 1, dtype=F64)),
                     (model.angle(x), torch.full((n, 1), -2.0, dtype=F64))]:
        mu, lv = mu0.clone().requires_grad_(), lv0.clone().requires_grad_()
        lbfgs([mu, lv], lambda: -model.elbo_closed_form.unchecked(x, mu, lv).sum(), max_iter)
        value = model.elbo_closed_form.unchecked(x, mu, lv)
        grad = max(g.abs().max().item() for g in torch.autograd.grad(value.sum(), [mu, lv]))
        found = (mu.detach(), lv.detach(), value.detach(), grad)
        best = found if best is None else _better(best, found)
    return best


def _better(a, b):
    """Per point, the (μ, log v, ELBO) with the higher ELBO; the larger of the two gradients."""
    keep_b = b[2] > a[2]
    pick = [torch.where(keep_b[:, None], tb, ta) for ta, tb in zip(a[:2], b[:2])]
    return pick[0], pick[1], torch.maximum(a[2], b[2]), max(a[3], b[3])
