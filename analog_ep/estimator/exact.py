"""Exact gradients the EP estimates are judged against.

* BPTT: backpropagation through the T1-step Euler unroll, the same architecture and start point as
  the free phase (the research trainer's exact-gradient reference).
* Equilibrium adjoint: the implicit-function gradient at z*, with lambda solving the transposed
  linear system J^T lambda = -dloss/dz by matrix-free GMRES (scipy), then
  grad = d/dtheta <lambda, F(z*; theta)> + readout gradient. Exact for any converged fixed point,
  conservative or not; it is the beta -> 0, AEP-corrected limit of EP.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, gmres

from analog_ep.errors import ConvergenceError
from analog_ep.estimator.ep import vector_field_gradient
from analog_ep.estimator.linear import JacobianProducts
from analog_ep.model.base import EquilibriumModel


def bptt_gradient(model: EquilibriumModel, x: torch.Tensor, y: torch.Tensor, steps: int, eps: float
                  ) -> tuple[dict[str, torch.Tensor], float]:
    """(name -> d loss(z_T1) / d theta, loss) by backpropagating through `steps` Euler steps."""
    params = list(model.named_parameters())
    with torch.enable_grad():
        x_in = model.drive(x)
        z = model.initial_state(x_in)
        for _ in range(steps):
            z = z + eps * model.force(z, x_in)
        loss = model.loss(z, y)
        gs = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    grads = {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params, gs)}
    return grads, float(loss.detach())


@dataclass
class AdjointSolve:
    """Result of the equilibrium-adjoint solve."""

    grads: dict[str, torch.Tensor]
    adjoint: torch.Tensor
    """lambda with J^T lambda = -dloss/dz at z*."""
    matvecs: int
    """Vector-Jacobian products GMRES used."""
    relative_residual: float
    """||J^T lambda + g|| / ||g|| reached."""


def adjoint_gradient(model: EquilibriumModel, x: torch.Tensor, y: torch.Tensor, z_star: torch.Tensor,
                     tol: float = 1e-8, maxiter: int = 2000, strict: bool = True) -> AdjointSolve:
    """Exact equilibrium gradient at the fixed point z* (see module docstring)."""
    with torch.no_grad():
        x_in = model.drive(x)
    with torch.enable_grad():
        zr = z_star.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model.loss(zr, y), zr)
    jac = JacobianProducts(lambda u: model.force(u, x_in), z_star)
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
    lam = torch.from_numpy(sol.reshape(shape)).to(dtype)
    grads = vector_field_gradient(model, x, y, z_star, lam)
    return AdjointSolve(grads, lam, jac.products, resid)
