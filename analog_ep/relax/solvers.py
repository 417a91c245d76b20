"""Digital relaxation to the fixed point F(z*) = 0.

Separate pieces, joined by `relax` (diffrax style):

* the *term*: a force closure ``z -> F(z)`` (the model with its clamp bound in);
* the *solvers*: explicit Euler ``z <- z + eps F(z)`` (the research trainer's dynamics and what a
  chip's discrete loop does) and Anderson acceleration of the same map (the fast digital twin);
* the *controller*: a fixed budget of T1 steps, then optional refinement until the residual of one
  more Euler step is <= a tolerance.

Nothing here builds an autograd graph: every step runs under ``torch.no_grad()``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from analog_ep.errors import check
from analog_ep.schema.relax import METHODS, RelaxConfig  # noqa: F401  (re-exported)

Force = Callable[[torch.Tensor], torch.Tensor]




@dataclass
class Relaxation:
    """Result of a relaxation."""

    z: torch.Tensor
    """The settled state (detached)."""
    z_budget: torch.Tensor
    """The state after the T1 budget, before any refinement (what evaluation sees)."""
    residual: float
    """Relative residual ||eps F(z)|| / ||z|| of the T1 state: the training health signal."""
    residual_final: float
    """Residual of `z` after refinement (equals `residual` without refinement)."""
    force_evals: int
    """Force evaluations spent, residual checks included."""
    steps: int
    """Solver iterations taken."""


def euler(force: Force, z: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """`steps` explicit Euler steps z <- z + eps F(z) (returns a new tensor)."""
    with torch.no_grad():
        z = z.clone()
        for _ in range(steps):
            z.add_(force(z), alpha=eps)
    return z


def relative_residual(force: Force, z: torch.Tensor, eps: float) -> float:
    """||z_{t+1} - z_t|| / ||z_t|| of one more Euler step (one force evaluation)."""
    with torch.no_grad():
        return float((eps * force(z)).norm() / (z.norm() + 1e-12))


def per_sample_residual(force: Force, z: torch.Tensor, eps: float) -> torch.Tensor:
    """The relative residual of each sample (batch on dim 0)."""
    with torch.no_grad():
        step = (eps * force(z)).flatten(1).norm(dim=1)
        return step / (z.flatten(1).norm(dim=1) + 1e-12)


def anderson(force: Force, z0: torch.Tensor, eps: float, memory: int = 5, tol: float = 1e-6,
             max_evals: int = 500, damping: float = 1.0) -> tuple[torch.Tensor, int, float]:
    """Anderson acceleration (type II, Walker & Ni 2011) of G(z) = z + eps F(z), per sample.

    Each sample mixes its own last `memory` iterates (samples never interact through the force),
    which converges faster than one global least-squares. Returns (z, force evaluations, residual).
    """
    with torch.no_grad():
        B = z0.shape[0]
        x = z0.reshape(B, -1).clone()  # (B, D): flatten each sample's state
        shape = z0.shape
        G = lambda v: v + eps * force(v.reshape(shape)).reshape(B, -1)  # noqa: E731
        X, R = [], []  # past iterates and their residuals G(x) - x
        evals, res = 0, float("inf")
        while evals < max_evals:
            gx = G(x)
            evals += 1
            r = gx - x
            res_each = r.norm(dim=1) / (x.norm(dim=1) + 1e-12)
            res = float(r.norm() / (x.norm() + 1e-12))
            if bool((res_each <= tol).all()):
                break
            X.append(x)
            R.append(r)
            if len(R) > memory + 1:
                X.pop(0)
                R.pop(0)
            if len(R) == 1:
                x = x + damping * r
                continue
            dR = torch.stack([R[i + 1] - R[i] for i in range(len(R) - 1)], dim=2)  # (B, D, m)
            dX = torch.stack([X[i + 1] - X[i] for i in range(len(X) - 1)], dim=2)
            # Least squares min ||r - dR gamma|| via regularised normal equations, batched.
            gram = dR.transpose(1, 2) @ dR  # (B, m, m)
            # Tikhonov term above the dtype's resolution: a rank-deficient history stays solvable.
            tiny = 100 * torch.finfo(gram.dtype).eps
            reg = tiny * gram.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-30)[:, None, None]
            eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
            gamma, info = torch.linalg.solve_ex(gram + reg * eye, dR.transpose(1, 2) @ r.unsqueeze(2))
            gamma = torch.where((info == 0)[:, None, None], gamma, torch.zeros_like(gamma))  # plain step
            x = x + damping * r - ((dX + damping * dR) @ gamma).squeeze(2)
        return x.reshape(shape), evals, res


def relax(force: Force, z0: torch.Tensor, config: RelaxConfig) -> Relaxation:
    """Relax from z0 to the fixed point with the configured solver and controller."""
    if config.method == "anderson":
        z, evals, _ = anderson(force, z0, config.eps, config.anderson_memory, config.anderson_tol,
                               max_evals=config.steps, damping=config.anderson_damping)
        res = relative_residual(force, z, config.eps)
        return Relaxation(z, z, res, res, evals + 1, evals)
    z = euler(force, z0, config.eps, config.steps)
    res = relative_residual(force, z, config.eps)
    evals, steps, z_budget, res_final = config.steps + 1, config.steps, z, res
    while steps < config.refine_to and res_final > config.refine_tol:
        chunk = min(config.refine_chunk, config.refine_to - steps)
        z = euler(force, z, config.eps, chunk)
        res_final = relative_residual(force, z, config.eps)
        steps += chunk
        evals += chunk + 1
    return Relaxation(z, z_budget, res, res_final, evals, steps)
