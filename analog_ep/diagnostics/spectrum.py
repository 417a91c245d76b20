"""Leading eigenvalues of the Jacobian J = dF/dz of a force at a state z*, matrix-free.

The relaxation dz/dt = F(z) is locally stable at a fixed point z* when every eigenvalue of J has a
negative real part. A complex pair crossing the imaginary axis (a Hopf bifurcation) turns the
fixed point into an oscillation, and a positive numerical abscissa omega(J) = lambda_max((J+J^T)/2)
means transient growth ||e^{tJ}|| > 1 even when J is stable (non-normal J).

Nothing here forms J for large states: ARPACK (`scipy.sparse.linalg.eigs`/`eigsh`) only needs
exact products J v (forward-mode AD) and J^T u (reverse-mode AD). The whole tensor z* is one
vector, so a batch on dim 0 gives a block-diagonal J whose identical blocks (e.g. copies of the
same input) Krylov methods see only once each: the ARPACK path lists such an eigenvalue once,
the dense path (small n) with its full multiplicity.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigs, eigsh

from analog_ep.errors import ConfigError, ConvergenceError, check

Force = Callable[[torch.Tensor], torch.Tensor]

# Below this size, n JVPs building the dense J cost less than ARPACK's restarts (and ARPACK needs
# k < n - 1 anyway).
_DENSE_MAX_N = 64
# An eigenvalue counts as complex when |imag| exceeds this fraction of max(1, |lambda|).
_IMAG_RTOL = 1e-6


@dataclass(frozen=True)
class SpectrumConfig:
    """How `leading_eigenvalues` runs ARPACK."""

    k: int = 6
    """Number of leading eigenvalues (largest real part) to report; a conjugate pair is never split,
    so up to k + 1 are listed."""
    tol: float = 1e-6
    """ARPACK relative tolerance on the Ritz values (0 would mean machine precision; use a positive
    value)."""
    maxiter: int | None = None
    """Maximum ARPACK restarts; None keeps ARPACK's default of 10 n."""
    seed: int = 0
    """Seed of ARPACK's start vector v0, so repeated probes give identical results."""

    def __post_init__(self):
        src = "SpectrumConfig"
        check(isinstance(self.k, int) and self.k >= 1, "k", self.k, "must be an int >= 1",
              "ask for at least one eigenvalue", src)
        check(isinstance(self.tol, (int, float)) and math.isfinite(self.tol) and self.tol > 0,
              "tol", self.tol, "must be a finite float > 0", "e.g. 1e-6", src)
        check(self.maxiter is None or (isinstance(self.maxiter, int) and self.maxiter >= 1),
              "maxiter", self.maxiter, "must be None or an int >= 1",
              "use None for ARPACK's default", src)
        check(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed,
              "must be an int >= 0", "", src)


@dataclass
class Spectrum:
    """Leading part of the spectrum of J = dF/dz at z*, sorted by real part, descending."""

    eig_re: list[float]
    """Real parts of the leading eigenvalues (largest first); a pair a +- bi lists +b first."""
    eig_im: list[float]
    """Imaginary parts, aligned with `eig_re`."""
    abscissa: float
    """Numerical abscissa omega(J) = largest eigenvalue of (J + J^T)/2: the initial growth rate
    d/dt ||e^{tJ}|| at t=0; >= leading_re, equal when J is normal."""
    jvp_evals: int
    """Jacobian products used (J v and J^T u each count one), a cost measure in forces evaluated."""

    @property
    def leading(self) -> complex:
        """The leading eigenvalue (for a pair, the one with positive imaginary part)."""
        return complex(self.eig_re[0], self.eig_im[0])

    @property
    def leading_re(self) -> float:
        """Spectral abscissa: the largest real part of an eigenvalue of J."""
        return self.eig_re[0]

    @property
    def is_stable(self) -> bool:
        """Whether z* is a linearly stable fixed point (every eigenvalue in the left half plane)."""
        return self.leading_re < 0

    @property
    def has_hopf_pair(self) -> bool:
        """Whether the leading eigenvalue is a complex conjugate pair (oscillatory mode)."""
        lam = self.leading
        tol = _IMAG_RTOL * max(1.0, abs(lam))
        if abs(lam.imag) <= tol:
            return False
        return any(abs(complex(re, im) - lam.conjugate()) <= tol
                   for re, im in zip(self.eig_re[1:], self.eig_im[1:]))


class _JacobianProducts:
    """Exact products J v and J^T u of `force` at z*, on flat float64 numpy vectors.

    J v first uses the double-vjp trick J v = d/du <J^T u, v> through one graph recorded at z*
    (a backward pass per product: for attention blocks ~10x faster than re-running the force in
    forward mode). If the dot-product test shows it silently drops terms (a backward that is not
    itself differentiable, as in aihwkit's tiles), it switches to forward mode (`torch.func.jvp`).
    Ops without a forward-mode formula (cdist, pdist, grid_sample, embedding_bag, index_reduce)
    or old-style `autograd.Function`s raise there. J^T u uses `torch.func.vjp`, with plain
    autograd as fallback.
    """

    def __init__(self, force: Force, z_star: torch.Tensor):
        self.force = force
        self.z = z_star.detach()
        self.n = self.z.numel()
        self.evals = 0
        self._vjp = self._build_vjp()
        try:
            self._double_vjp: Callable[[torch.Tensor], torch.Tensor] | None = self._build_double_vjp()
            self._check_adjoint()
        except (ConfigError, NotImplementedError, RuntimeError) as reverse_failure:
            self._double_vjp = None  # fall back to forward mode, and test that instead
            try:
                self._check_adjoint()
            except (NotImplementedError, RuntimeError):
                if isinstance(reverse_failure, ConfigError):
                    raise reverse_failure from None  # the informative one: derivatives disagree
                raise

    # -- numpy <-> torch -------------------------------------------------------------------------
    def _to_torch(self, x: np.ndarray) -> torch.Tensor:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        return torch.from_numpy(x).to(dtype=self.z.dtype, device=self.z.device).view_as(self.z)

    @staticmethod
    def _to_numpy(t: torch.Tensor) -> np.ndarray:
        return t.detach().reshape(-1).to(device="cpu", dtype=torch.float64).numpy()

    def _check_output(self, y: torch.Tensor) -> None:
        check(isinstance(y, torch.Tensor) and y.shape == self.z.shape, "force",
              getattr(y, "shape", type(y)),
              f"must return a tensor of z*'s shape {tuple(self.z.shape)}",
              "a force maps a state to its time derivative")

    # -- products --------------------------------------------------------------------------------
    def _build_vjp(self) -> Callable[[torch.Tensor], torch.Tensor]:
        # Built once at z*: every J^T u afterwards is one backward pass through the stored graph.
        try:
            y, fn = torch.func.vjp(self.force, self.z)
            self._check_output(y)
            return lambda u: fn(u)[0]
        except (NotImplementedError, RuntimeError):
            pass
        with torch.enable_grad():
            x = self.z.clone().requires_grad_(True)
            y = self.force(x)
        self._check_output(y)

        def vjp(u: torch.Tensor) -> torch.Tensor:
            (g,) = torch.autograd.grad(y, x, u, retain_graph=True, allow_unused=True,
                                       materialize_grads=True)
            return g

        return vjp

    def _build_double_vjp(self) -> Callable[[torch.Tensor], torch.Tensor]:
        # g(u) = J^T u is linear in u, so its vjp with cotangent v is (J^T)^T v = J v.
        with torch.enable_grad():
            x = self.z.clone().requires_grad_(True)
            y = self.force(x)
            u = torch.zeros_like(y, requires_grad=True)
            (g,) = torch.autograd.grad(y, x, u, create_graph=True, allow_unused=True,
                                       materialize_grads=True)

        def jvp(v: torch.Tensor) -> torch.Tensor:
            (jv,) = torch.autograd.grad(g, u, v, retain_graph=True, allow_unused=True,
                                        materialize_grads=True)
            return jv

        return jvp

    def jvp_t(self, v: torch.Tensor) -> torch.Tensor:
        """J v on torch tensors shaped like z*."""
        self.evals += 1
        if self._double_vjp is None:
            with warnings.catch_warnings():
                # torch's first forward-mode product imports its jvp decompositions, which call
                # torch.jit.script and warn it is deprecated: torch's own internals, nothing a
                # caller can act on (torch 2.10)
                warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", DeprecationWarning)
                return torch.func.jvp(self.force, (self.z,), (v,))[1]
        return self._double_vjp(v)

    def vjp_t(self, u: torch.Tensor) -> torch.Tensor:
        """J^T u on torch tensors shaped like z*."""
        self.evals += 1
        return self._vjp(u)

    def jvp(self, v: np.ndarray) -> np.ndarray:
        return self._to_numpy(self.jvp_t(self._to_torch(v)))

    def vjp(self, u: np.ndarray) -> np.ndarray:
        return self._to_numpy(self.vjp_t(self._to_torch(u)))

    def sym(self, v: np.ndarray) -> np.ndarray:
        """(J + J^T) v / 2."""
        t = self._to_torch(v)
        return self._to_numpy((self.jvp_t(t) + self.vjp_t(t)) / 2)

    def _check_adjoint(self) -> None:
        # Dot-product test <u, J v> = <J^T u, v>. It catches a backward that is not itself
        # differentiable but silently drops terms under double-vjp (aihwkit tiles do), and a
        # custom autograd.Function whose jvp disagrees with its backward.
        gen = torch.Generator(device="cpu").manual_seed(12345)
        u, v = (torch.randn(self.z.shape, generator=gen, dtype=torch.float64) for _ in range(2))
        u, v = u.to(self.z), v.to(self.z)
        jv, jtu = self.jvp_t(v), self.vjp_t(u)
        lhs, rhs = float((u * jv).sum().detach()), float((jtu * v).sum().detach())
        scale = float((u.norm() * jv.norm() + jtu.norm() * v.norm()).detach())
        rtol = math.sqrt(torch.finfo(self.z.dtype).eps)
        name = getattr(self.force, "__name__", self.force)
        check(abs(lhs - rhs) <= rtol * scale + 1e-30, "force", name,
              f"forward and reverse derivatives disagree (<u,Jv>={lhs:.6g}, <J^T u,v>={rhs:.6g})",
              "its ops need a forward-mode derivative, or a backward that is itself differentiable "
              "(probe the digital twin instead of a simulated analog tile)")


def _complete_and_sort(vals: np.ndarray, k: int) -> list[complex]:
    """Sort eigenvalues by real part (then imag) descending; add missing conjugates (J is real, so
    they are exact eigenvalues too) and keep k, or k + 1 where the k-th starts a pair."""
    out = [complex(v) for v in vals]
    for lam in list(out):
        tol = _IMAG_RTOL * max(1.0, abs(lam))
        if abs(lam.imag) > tol and not any(abs(mu - lam.conjugate()) <= tol for mu in out):
            out.append(lam.conjugate())
    out.sort(key=lambda z: (-z.real, -z.imag))
    keep = k
    if len(out) > k:
        last, nxt = out[k - 1], out[k]
        tol = _IMAG_RTOL * max(1.0, abs(last))
        if abs(last.imag) > tol and abs(nxt - last.conjugate()) <= tol:
            keep = k + 1
    return out[:keep]


def leading_eigenvalues(force: Force, z_star: torch.Tensor,
                        config: SpectrumConfig = SpectrumConfig()) -> Spectrum:
    """Eigenvalues of J = dF/dz at `z_star` with the largest real parts, and the numerical abscissa.

    `force` maps a tensor shaped like `z_star` (real float32/float64, any device; the whole tensor
    is one vector) to one of the same shape; it must be differentiable with torch autograd.
    Raises `ConfigError` for bad inputs and `ConvergenceError` when ARPACK does not converge.
    """
    check(isinstance(z_star, torch.Tensor) and z_star.dtype in (torch.float32, torch.float64),
          "z_star", getattr(z_star, "dtype", type(z_star)), "must be a float32 or float64 tensor",
          "cast the state with .double()")
    check(z_star.numel() >= 1, "z_star", tuple(z_star.shape), "must not be empty")
    ops = _JacobianProducts(force, z_star)
    n, k = ops.n, config.k

    if n <= max(k + 2, _DENSE_MAX_N):
        # Dense: column i of J is J e_i.
        jac = np.stack([ops.jvp(e) for e in np.eye(n)], axis=1)
        vals = np.linalg.eigvals(jac)
        abscissa = float(np.linalg.eigvalsh((jac + jac.T) / 2)[-1])
    else:
        v0 = np.random.default_rng(config.seed).standard_normal(n)
        arpack = dict(tol=config.tol, maxiter=config.maxiter, v0=v0)
        j_op = LinearOperator((n, n), matvec=ops.jvp, rmatvec=ops.vjp, dtype=np.float64)
        s_op = LinearOperator((n, n), matvec=ops.sym, dtype=np.float64)
        try:
            vals = eigs(j_op, k=k, which="LR", return_eigenvectors=False, **arpack)
            abscissa = float(eigsh(s_op, k=1, which="LA", return_eigenvectors=False, **arpack)[0])
        except ArpackNoConvergence as exc:
            raise ConvergenceError(
                f"ARPACK did not converge ({len(exc.eigenvalues)} of the requested eigenvalues "
                f"after {ops.evals} Jacobian products); raise SpectrumConfig.maxiter or tol"
            ) from exc

    lams = _complete_and_sort(vals, k)
    return Spectrum(eig_re=[z.real for z in lams], eig_im=[z.imag for z in lams],
                    abscissa=abscissa, jvp_evals=ops.evals)
