"""Exact gradients the EP estimates are judged against.

* BPTT: backpropagation through the T1-step Euler unroll, the same architecture and start point as
  the free phase (the research trainer's exact-gradient reference).
* The exact fixed point (`exact_fixed_point`): the references' z*, relaxed by safeguarded
  Anderson and then by Euler steps until the residual is at the tolerance, so it cannot stall
  short of it on a stable fixed point (Euler converges wherever z* is stable at step eps).
* Equilibrium adjoint: the implicit-function gradient at z*, with the adjoint state a solving the
  transposed linear system J^T a = -dloss/dz by matrix-free GMRES (scipy), then
  grad = d/dtheta <a, F(z*; theta)> + readout gradient. Exact for any converged fixed point,
  conservative or not; it is the beta -> 0, AEP-corrected limit of EP.

Both read the weights the caller names (`reads`, see `analog_ep.linear`): BPTT of a chip is BPTT
through its deterministic effective conductances (a noisy, quantised read has no derivative).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, gmres

from analog_ep.errors import ConvergenceError
from analog_ep.estimator.ep import vector_field_gradient
from analog_ep.linear import linearize, operator_weights, weight_leaves
from analog_ep.model.base import EquilibriumModel
from analog_ep.phase import Term
from analog_ep.relax.solvers import Relaxation, RelaxConfig, relax


def bptt_gradient(model: EquilibriumModel, x: torch.Tensor, y: torch.Tensor, steps: int, eps: float,
                  reads: str = "parameters") -> tuple[dict[str, torch.Tensor], float]:
    """(name -> d loss(z_T1) / d theta, loss) by backpropagating through `steps` Euler steps."""
    names = [n for n, _ in model.named_parameters()]
    leaves = weight_leaves(model, reads, names)
    substitutes = {n: t for n, t in leaves.items() if not isinstance(t, torch.nn.Parameter)}
    with torch.enable_grad(), model.substituted(substitutes):
        x_in = model.drive(x)
        z = model.initial_state(x_in)
        for _ in range(steps):
            z = z + eps * model.force(z, x_in)
        loss = model.loss(z, y)
        gs = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    grads = {n: torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(names, gs)}
    return grads, float(loss.detach())


def exact_fixed_point(model: EquilibriumModel, x: torch.Tensor, tol: float = 1e-10, eps: float = 0.1,
                      anderson_budget: int = 400, euler_limit: int = 20000, strict: bool = True) -> Relaxation:
    """The free fixed point to relative residual ||eps F(z)|| / ||z|| <= `tol`, in the model's dtype
    (float64 for a reference: float32 rounding floors the residual near 1e-7).

    Safeguarded Anderson (memory 10, the leak's exact step 1/lambda, restart on growth) does the
    bulk in at most `anderson_budget` evaluations; explicit Euler steps of `eps` then continue from
    its last iterate until the residual is at `tol` (at most `euler_limit` steps), so a stall of
    Anderson costs time, never accuracy. `force_evals` counts both stages. Raises ConvergenceError
    (`strict`) if the tolerance is still not met: the fixed point is unstable at this step size.
    """
    leak = float(getattr(model, "leak", 0.0))
    with torch.no_grad():
        x_in = model.drive(x)
        term = Term(lambda z: model.force(z, x_in), leak)
        fast = relax(term, model.initial_state(x_in),
                     RelaxConfig(method="anderson", eps=eps, steps=anderson_budget, anderson_memory=10,
                                 anderson_tol=tol, anderson_step=1.0 / leak if leak > 0 else 0.0))
        if fast.residual <= tol:
            return fast
        slow = relax(term, fast.z, RelaxConfig(method="euler", eps=eps, steps=1, refine_to=euler_limit,
                                               refine_chunk=20, refine_tol=tol))
    if slow.residual_final > tol and strict:
        raise ConvergenceError(f"the fixed point reached residual {slow.residual_final:.2e} > {tol:.0e} after "
                               f"{fast.force_evals} Anderson and {slow.force_evals} Euler evaluations; is it stable "
                               "at this step size? lower eps or raise euler_limit")
    return Relaxation(slow.z, slow.z, slow.residual_final, slow.residual_final, fast.force_evals + slow.force_evals,
                      fast.steps + slow.steps, fast.restarts)


@dataclass
class AdjointSolve:
    """Result of the equilibrium-adjoint solve."""

    grads: dict[str, torch.Tensor]
    adjoint: torch.Tensor
    """The adjoint state a with J^T a = -dloss/dz at z*."""
    matvecs: int
    """Vector-Jacobian products GMRES used."""
    relative_residual: float
    """||J^T a + g|| / ||g|| reached (g = dloss/dz)."""


def adjoint_gradient(model: EquilibriumModel, x: torch.Tensor, y: torch.Tensor, z_star: torch.Tensor,
                     tol: float = 1e-8, maxiter: int = 2000, strict: bool = True, reads: str = "parameters"
                     ) -> AdjointSolve:
    """Exact equilibrium gradient at the fixed point z* (see module docstring)."""
    with torch.no_grad():
        x_in = model.drive(x)
    with torch.enable_grad(), model.substituted(operator_weights(model, reads)):
        zr = z_star.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model.loss(zr, y), zr)
    jac = linearize(model, x_in, z_star, part="force", reads=reads)
    shape, dtype = z_star.shape, z_star.dtype

    def rmatvec(v: np.ndarray) -> np.ndarray:  # J^T v in float64 on the scipy side
        out = jac.vjp(torch.from_numpy(v.reshape(shape)).to(dtype))
        return out.double().reshape(-1).numpy()

    n = z_star.numel()
    op = LinearOperator((n, n), matvec=rmatvec, dtype=np.float64)
    b = -g.double().reshape(-1).numpy()
    sol, info = gmres(op, b, rtol=tol, atol=0.0, restart=min(n, 60), maxiter=maxiter)
    resid = float(np.linalg.norm(rmatvec(sol) - b) / (np.linalg.norm(b) + 1e-300))
    if info != 0 and strict:
        raise ConvergenceError(f"adjoint GMRES stopped at relative residual {resid:.2e} (info={info}); "
                               "is the fixed point stable? relax tighter or raise maxiter")
    adjoint = torch.from_numpy(sol.reshape(shape)).to(dtype)
    grads = vector_field_gradient(model, x, y, z_star, adjoint, reads)
    return AdjointSolve(grads, adjoint, jac.products, resid)
