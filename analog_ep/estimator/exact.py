"""Exact gradients the EP estimates are judged against.

* BPTT: backpropagation through the T1-step Euler unroll, the same architecture and start point as
  the free phase (the research trainer's exact-gradient reference).
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
