"""Linear operators of the equilibrium dynamics: the one implementation of Jacobian products and
spectra that the estimator (the AEP correction), the stabilisers (jacreg, eigreg) and the
diagnostics (the fingerprint's eigenvalues) share.

* `linearize(model, x_in, z, part, reads)` - J v and J^T u of the force (`part='force'`) or of
  its non-conservative part (`part='nc'`) at a fixed state z: the model's closed form when it has
  one (`ThickLinearization` of the thick block: slopes computed once, each product the block's
  matmuls), otherwise `JacobianProducts` on autograd (one recorded graph, J v by the double-vjp
  trick, forward mode when that trick would drop terms). `differentiable=True` keeps the graph
  through the weights (jacreg and eigreg differentiate the products in theta).
* `symmetric(op, v)` = (J + J^T) v / 2 and `antisymmetric(op, v)` = (J - J^T) v, the AEP
  correction (twice the antisymmetric part).
* `check_adjoint(op, like)` - the dot-product test <u, J v> = <J^T u, v>.
* `abscissa(op, like)` - the numerical abscissa omega(J) = lambda_max((J + J^T)/2) and its unit
  eigenvector: Lanczos (ARPACK `eigsh`), or dense below `DENSE_MAX_N` unknowns.
* `leading_eigenvalues(op, like, config)` - the eigenvalues of J with the largest real parts
  (ARPACK `eigs`, or dense), with the abscissa.

What is read (`reads`), always an explicit argument:

* 'parameters' - the model's own parameters: the digital twin's weights. On an analog twin these
  are the mirror that `AnalogChip.refresh` writes (the co-processor's copy of the conductances).
* 'chip' - the chip's deterministic effective conductances, read from its tiles
  (`AnalogChip.effective_weights`: programmed level x static mismatch gain, in model units); read
  noise, optical noise and the converters are excluded, because a Jacobian of a noisy, quantised
  read is not defined: the operator is that of the chip's mean read. Parameters the chip does
  not hold (biases, LayerNorms) are the model's. This is `chip.learning: coprocessor`: a digital
  co-processor that knows every conductance.
* 'tiles' - no conductance at all (`chip.learning: local`): every product with a held matrix is
  a read through the chip's tiles with their periphery, converters, noise, mismatch and levels
  included (`AnalogChip.read`): J v by forward reads, J^T u by transposed reads
  (`chip.periphery_backward`), the slopes of LayerNorm, softmax and GELU evaluated on measured
  activations, and a gradient in theta as the outer products of measured inputs and read-back
  errors (`analog_ep.hardware.chip.TileProduct`). The model's parameters of held matrices only
  carry those gradients; their values are never read. Needs a chip built with learning 'local'.

The operator is then the same whatever autograd routing the model does: `linearize` substitutes
the chosen weights into the model for the products (`EquilibriumModel.substituted`).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigs, eigsh

from analog_ep.errors import ConfigError, ConvergenceError, check

READS = ("parameters", "chip", "tiles")
PARTS = ("force", "nc")

#: Below this many unknowns n products building the dense J cost less than ARPACK's restarts (and
#: ARPACK needs k < n - 1 anyway).
DENSE_MAX_N = 64
#: An eigenvalue counts as complex when |imag| exceeds this fraction of max(1, |lambda|).
IMAG_RTOL = 1e-6


class Linearization(Protocol):
    """J v and J^T u of a map at a fixed point, on tensors shaped like the state."""

    products: int
    """Products computed so far (J v and J^T u count one each, whatever the batch)."""

    def jvp(self, v: torch.Tensor) -> torch.Tensor: ...

    def vjp(self, u: torch.Tensor) -> torch.Tensor: ...


def symmetric(op: Linearization, v: torch.Tensor) -> torch.Tensor:
    """(J + J^T) v / 2."""
    return 0.5 * (op.jvp(v) + op.vjp(v))


def antisymmetric(op: Linearization, v: torch.Tensor) -> torch.Tensor:
    """(J - J^T) v: twice the antisymmetric part of J applied to v (the AEP correction)."""
    return op.jvp(v) - op.vjp(v)


# ---- what is read ---------------------------------------------------------------------------------

def operator_weights(model, reads: str) -> dict[str, torch.Tensor]:
    """name -> the tensor the operator reads instead of the model's parameter ({} for 'parameters')."""
    check(reads in READS, "reads", reads, "unknown weight source", f"use one of {', '.join(READS)}")
    if reads == "parameters":
        return {}
    chip = model.hardware
    check(chip is not None, "reads", reads, f"{type(model).__name__} has no chip",
          "build an AnalogChip on the model, or read its parameters")
    if reads == "tiles":  # the model itself routes every held product through the tiles
        check(chip.local, "reads", reads, "the chip learns through a co-processor (chip.learning: coprocessor)",
              "build the chip with learning: local, or read 'chip'")
        return {}
    return chip.effective_weights()


def weight_leaves(model, reads: str, names: list[str]) -> dict[str, torch.Tensor]:
    """name -> a tensor to differentiate in theta: the parameter itself ('parameters'; 'tiles',
    where it only carries the gradient of the chip's reads), or (reads='chip') a fresh leaf
    holding the chip's effective conductances, for every name in `names`."""
    chip_weights = operator_weights(model, reads)
    return {n: chip_weights[n].detach().clone().requires_grad_(True) if n in chip_weights
            else model.get_parameter(n) for n in names}


# ---- products -------------------------------------------------------------------------------------

class JacobianProducts:
    """J v and J^T u of `fn` at `z0` by autograd, reusing one recorded graph.

    J^T u is one backward pass through the graph recorded at z0. J v uses the double-vjp trick
    J v = d/du <J^T u, v> (a second backward pass: for attention blocks ~10x faster than re-running
    the force in forward mode); if the dot-product test shows it silently drops terms (a backward
    that is not itself differentiable, as in aihwkit's tiles) it switches to forward mode
    (`torch.func.jvp`), which ops without a forward-mode formula refuse. With `differentiable`
    every product keeps its graph through whatever `fn` reads (the weights), so a penalty built
    from products can be differentiated in theta; `check` is then skipped.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, differentiable: bool = False,
                 check: bool = True):
        self.fn, self.differentiable, self.products = fn, differentiable, 0
        self._forward_mode = False
        with torch.enable_grad():
            self._z = z0.detach().clone().requires_grad_(True)
            self._out = fn(self._z)
            check_shape(self._out, z0)
            self._u = torch.zeros_like(self._out, requires_grad=True)
            try:
                (self._jt_u,) = torch.autograd.grad(self._out, self._z, self._u, create_graph=True,
                                                    allow_unused=True, materialize_grads=True)
            except (NotImplementedError, RuntimeError):  # no double backward: forward mode for J v
                self._forward_mode = True
        if check and not differentiable:
            try:
                check_adjoint(self, z0)
            except ConfigError as reverse_failure:
                if self._forward_mode:
                    raise
                self._forward_mode = True  # the double-vjp dropped terms: test forward mode instead
                try:
                    check_adjoint(self, z0)
                except (NotImplementedError, RuntimeError):
                    raise reverse_failure from None

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        self.products += 1
        if self._forward_mode:
            with torch.enable_grad(), warnings.catch_warnings():
                # torch's first forward-mode product imports its jvp decompositions, which call
                # torch.jit.script and warn it is deprecated: torch's own internals, nothing a
                # caller can act on (torch 2.10)
                warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", DeprecationWarning)
                return torch.func.jvp(self.fn, (self._z.detach(),), (v,))[1].detach()
        with torch.enable_grad():
            (out,) = torch.autograd.grad(self._jt_u, self._u, v, retain_graph=True, create_graph=self.differentiable,
                                         allow_unused=True, materialize_grads=True)
        return out

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        self.products += 1
        with torch.enable_grad():
            (out,) = torch.autograd.grad(self._out, self._z, u, retain_graph=True, create_graph=self.differentiable,
                                         allow_unused=True, materialize_grads=True)
        return out


def check_shape(y, z: torch.Tensor) -> None:
    check(isinstance(y, torch.Tensor) and y.shape == z.shape, "force", getattr(y, "shape", type(y)),
          f"must return a tensor of the state's shape {tuple(z.shape)}", "a force maps a state to its time derivative")


def check_adjoint(op: Linearization, like: torch.Tensor, seed: int = 12345) -> tuple[float, float]:
    """Dot-product test <u, J v> = <J^T u, v> on random u, v; returns both sides.

    Raises ConfigError when they disagree beyond sqrt(machine epsilon) of the products' scale: a
    backward that silently drops terms under double-vjp (aihwkit tiles do), a closed form that is
    not the adjoint of itself, or a custom autograd.Function whose forward and backward disagree.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    u, v = (torch.randn(like.shape, generator=gen, dtype=torch.float64).to(like) for _ in range(2))
    jv, jtu = op.jvp(v), op.vjp(u)
    lhs, rhs = float((u * jv).sum().detach()), float((jtu * v).sum().detach())
    scale = float((u.norm() * jv.norm() + jtu.norm() * v.norm()).detach())
    rtol = math.sqrt(torch.finfo(like.dtype).eps)
    check(abs(lhs - rhs) <= rtol * scale + 1e-30, "force", type(op).__name__,
          f"forward and reverse derivatives disagree (<u,Jv>={lhs:.6g}, <J^T u,v>={rhs:.6g})",
          "its ops need a forward-mode derivative, or a backward that is itself differentiable")
    return lhs, rhs


def linearize(model, x_in: torch.Tensor, z: torch.Tensor, part: str = "nc", reads: str = "parameters",
              differentiable: bool = False, leaves: dict[str, torch.Tensor] | None = None,
              closed_form: bool = True) -> Linearization | None:
    """J v / J^T u of the model's force (`part='force'`) or non-conservative part ('nc') at z.

    `reads` names the weights (module docstring). With `differentiable`, the products keep their
    graph through `leaves` (from `weight_leaves(model, reads, ...)`: the tensors to differentiate
    in theta), which replace `reads`. Returns None when `part='nc'` and the force is conservative.
    The model's closed form is used when it has one (and `closed_form`, not `differentiable`).
    """
    check(part in PARTS, "part", part, "unknown part", f"use one of {', '.join(PARTS)}")
    weights = operator_weights(model, reads) if leaves is None or reads == "tiles" else leaves
    x_in = x_in.detach()
    if part == "nc" and not model.has_nc_force:
        return None
    if closed_form and not differentiable and part == "nc" and not z.is_complex():
        closed = getattr(model, "linearize_nc", None)
        if closed is not None:
            with model.substituted(weights):
                op = closed(z)
            if op is not None:
                return op
    method = model.nc_force if part == "nc" else model.force

    def fn(u: torch.Tensor) -> torch.Tensor:
        with model.substituted(weights):
            return method(u, x_in)

    return JacobianProducts(fn, z, differentiable=differentiable, check=False)


def force_products(force: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> JacobianProducts:
    """Products of an arbitrary force closure (no model): autograd, dot-product tested."""
    check(isinstance(z, torch.Tensor) and z.dtype in (torch.float32, torch.float64), "z_star",
          getattr(z, "dtype", type(z)), "must be a float32 or float64 tensor", "cast the state with .double()")
    check(z.numel() >= 1, "z_star", tuple(z.shape), "must not be empty")
    return JacobianProducts(force, z)


# ---- spectra --------------------------------------------------------------------------------------

def _numpy_operator(op: Linearization, like: torch.Tensor):
    shape, dtype, device = like.shape, like.dtype, like.device

    def to_torch(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(x, dtype=np.float64).reshape(shape)).to(dtype=dtype, device=device)

    def to_numpy(t: torch.Tensor) -> np.ndarray:
        return t.detach().reshape(-1).to(device="cpu", dtype=torch.float64).numpy()

    return to_torch, to_numpy


def dense_jacobian(op: Linearization, like: torch.Tensor) -> np.ndarray:
    """J as a dense float64 matrix, column i = J e_i (n products)."""
    to_torch, to_numpy = _numpy_operator(op, like)
    n = like.numel()
    return np.stack([to_numpy(op.jvp(to_torch(e))) for e in np.eye(n)], axis=1)


def abscissa(op: Linearization, like: torch.Tensor, v0: torch.Tensor | None = None, tol: float = 1e-3,
             maxiter: int | None = None, seed: int = 0, dense: np.ndarray | None = None
             ) -> tuple[float, torch.Tensor]:
    """omega(J) = largest eigenvalue of (J + J^T)/2, and its unit eigenvector (shaped like `like`).

    Lanczos (ARPACK `eigsh`, start vector `v0` or a seeded Gaussian) on the symmetric part's
    products; with `dense` (J as a matrix) or at most `DENSE_MAX_N` unknowns, a dense eigh. omega
    is the initial growth rate d/dt ||e^{tJ}|| at t=0: > 0 means transient growth even when every
    eigenvalue has Re < 0 (non-normal J).
    """
    to_torch, to_numpy = _numpy_operator(op, like)
    n = like.numel()
    if dense is None and n <= DENSE_MAX_N:
        dense = dense_jacobian(op, like)
    if dense is not None:
        vals, vecs = np.linalg.eigh((dense + dense.T) / 2)
        return float(vals[-1]), to_torch(vecs[:, -1])
    sym = LinearOperator((n, n), matvec=lambda v: to_numpy(symmetric(op, to_torch(v))), dtype=np.float64)
    start = np.random.default_rng(seed).standard_normal(n) if v0 is None else to_numpy(v0)
    try:
        vals, vecs = eigsh(sym, k=1, which="LA", v0=start, tol=tol, maxiter=maxiter)
    except ArpackNoConvergence as exc:
        raise ConvergenceError(f"Lanczos did not converge on the numerical abscissa after {op.products} "
                               "Jacobian products; raise the tolerance or maxiter") from exc
    return float(vals[0]), to_torch(vecs[:, 0])


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
              "maxiter", self.maxiter, "must be None or an int >= 1", "use None for ARPACK's default", src)
        check(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed, "must be an int >= 0", "", src)


@dataclass
class Spectrum:
    """Leading part of the spectrum of J at z*, sorted by real part, descending."""

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
        eig = self.leading
        tol = IMAG_RTOL * max(1.0, abs(eig))
        if abs(eig.imag) <= tol:
            return False
        return any(abs(complex(re, im) - eig.conjugate()) <= tol
                   for re, im in zip(self.eig_re[1:], self.eig_im[1:]))


def _complete_and_sort(vals: np.ndarray, k: int) -> list[complex]:
    """Sort eigenvalues by real part (then imag) descending; add missing conjugates (J is real, so
    they are exact eigenvalues too) and keep k, or k + 1 where the k-th starts a pair."""
    out = [complex(v) for v in vals]
    for eig in list(out):
        tol = IMAG_RTOL * max(1.0, abs(eig))
        if abs(eig.imag) > tol and not any(abs(mu - eig.conjugate()) <= tol for mu in out):
            out.append(eig.conjugate())
    out.sort(key=lambda z: (-z.real, -z.imag))
    keep = k
    if len(out) > k:
        last, nxt = out[k - 1], out[k]
        tol = IMAG_RTOL * max(1.0, abs(last))
        if abs(last.imag) > tol and abs(nxt - last.conjugate()) <= tol:
            keep = k + 1
    return out[:keep]


def leading_eigenvalues(op: Linearization | Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor,
                        config: SpectrumConfig = SpectrumConfig()) -> Spectrum:
    """Eigenvalues of J with the largest real parts, and the numerical abscissa.

    `op` is a `Linearization` (from `linearize`), or a force closure z -> F(z) (products by
    autograd, dot-product tested). The whole tensor `like` is one vector: a batch on dim 0 gives a
    block-diagonal J whose identical blocks Krylov methods see once each (the ARPACK path lists
    such an eigenvalue once, the dense path, below `DENSE_MAX_N` unknowns, with its multiplicity).
    Raises `ConfigError` for bad inputs and `ConvergenceError` when ARPACK does not converge.
    """
    if callable(op) and not hasattr(op, "jvp"):
        op = force_products(op, like)
    start = op.products
    to_torch, to_numpy = _numpy_operator(op, like)
    n, k = like.numel(), config.k
    if n <= max(k + 2, DENSE_MAX_N):
        jac = dense_jacobian(op, like)
        vals = np.linalg.eigvals(jac)
        omega, _ = abscissa(op, like, dense=jac)
    else:
        v0 = np.random.default_rng(config.seed).standard_normal(n)
        j_op = LinearOperator((n, n), matvec=lambda v: to_numpy(op.jvp(to_torch(v))),
                              rmatvec=lambda u: to_numpy(op.vjp(to_torch(u))), dtype=np.float64)
        try:
            vals = eigs(j_op, k=k, which="LR", return_eigenvectors=False, tol=config.tol, maxiter=config.maxiter,
                        v0=v0)
        except ArpackNoConvergence as exc:
            raise ConvergenceError(
                f"ARPACK did not converge ({len(exc.eigenvalues)} of the requested eigenvalues "
                f"after {op.products - start} Jacobian products); raise SpectrumConfig.maxiter or tol") from exc
        omega, _ = abscissa(op, like, v0=to_torch(v0), tol=config.tol, maxiter=config.maxiter)
    lams = _complete_and_sort(vals, k)
    return Spectrum(eig_re=[z.real for z in lams], eig_im=[z.imag for z in lams], abscissa=omega,
                    jvp_evals=op.products)
