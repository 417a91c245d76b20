"""Digital relaxation to the fixed point F(z*) = 0: the digital solvers of the phase API.

A relaxation is a term (the force closure), a solver and a controller joined by
`analog_ep.phase.solve`:

* the solvers: explicit Euler ``z <- z + eps F(z)`` (`Euler`: the research trainer's dynamics and
  what a chip's discrete loop does) and Anderson acceleration of the same map (`Anderson`: the fast
  digital twin); their unit of time is one step;
* the controllers: the free phase's budget of T1 steps, then optional refinement until the
  residual of one more Euler step is <= a tolerance (`analog_ep.phase.Refine`); a fixed budget
  (`analog_ep.phase.Fixed`).

`relax` is the digital twin's free phase. Nothing here builds an autograd graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from analog_ep.phase import Fixed, Refine, Solver, State, Term, replaced, solve
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


class Euler(Solver):
    """Explicit Euler z <- z + eps F(z); one step per unit of time."""

    def __init__(self, eps: float):
        self.eps = eps

    def step(self, term: Term, state: State, generator=None) -> State:
        return replaced(state, z=torch.add(state.z, term(state.z), alpha=self.eps), t=state.t + 1,
                        steps=state.steps + 1)

    def residual(self, term: Term, state: State) -> float:
        return float((self.eps * term(state.z)).norm() / (state.z.norm() + 1e-12))


class Anderson(Solver):
    """Anderson acceleration (type II, Walker & Ni 2011) of G(z) = z + eps F(z), per sample.

    Each sample mixes its own last `memory` iterates (samples never interact through the force),
    which converges faster than one global least-squares. A step is one evaluation of G; it
    converges (and stops moving) once every sample's residual ||G(z) - z|| / ||z|| is <= `tol`.
    """

    def __init__(self, eps: float, memory: int = 5, tol: float = 1e-6, damping: float = 1.0):
        self.eps, self.memory, self.tol, self.damping = eps, memory, tol, damping

    def step(self, term: Term, state: State, generator=None) -> State:
        # memory: (x, r) of the previous iterate and the differences of the last `memory` ones,
        # dX and dR (B, m, D), oldest first: each step appends one row instead of re-differencing
        # the whole history (the columns' order does not change the least-squares mix).
        shape, B = state.z.shape, state.z.shape[0]
        x = state.z.reshape(B, -1)  # (B, D): flatten each sample's state
        r = self.eps * term(state.z).reshape(B, -1)  # G(x) - x
        res_each = r.norm(dim=1) / (x.norm(dim=1) + 1e-12)
        history = state.memory[:4] if state.memory else (None, None, None, None)
        if bool((res_each <= self.tol).all()):
            # the global residual of this very state, so that `residual` costs no evaluation
            return replaced(state, converged=True, memory=(*history, float(r.norm() / (x.norm() + 1e-12))))
        x_prev, r_prev, dX, dR = history
        damping = self.damping
        if x_prev is None:
            x_new = x + damping * r
        else:
            keep = self.memory - 1
            dx, dr = (x - x_prev).unsqueeze(1), (r - r_prev).unsqueeze(1)  # (B, 1, D)
            dX = dx if dX is None else torch.cat([dX[:, -keep:] if keep else dX[:, :0], dx], dim=1)  # (B, m, D)
            dR = dr if dR is None else torch.cat([dR[:, -keep:] if keep else dR[:, :0], dr], dim=1)
            # Least squares min ||r - dR^T gamma|| via regularised normal equations, batched.
            gram = dR @ dR.transpose(1, 2)  # (B, m, m)
            # Tikhonov term above the dtype's resolution: a rank-deficient history stays solvable.
            tiny = 100 * torch.finfo(gram.dtype).eps
            reg = tiny * gram.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-30)[:, None, None]
            eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
            gamma, info = torch.linalg.solve_ex(gram + reg * eye, dR @ r.unsqueeze(2))  # (B, m, 1)
            gamma = torch.where((info == 0)[:, None, None], gamma, torch.zeros_like(gamma))  # plain step
            mix = gamma.transpose(1, 2) @ (dX + damping * dR) if damping != 1 else \
                gamma.transpose(1, 2) @ dX + gamma.transpose(1, 2) @ dR  # (B, 1, D)
            x_new = x + damping * r - mix.squeeze(1)
        return replaced(state, z=x_new.reshape(shape), t=state.t + 1, steps=state.steps + 1,
                        memory=(x, r, dX, dR))

    def residual(self, term: Term, state: State) -> float:
        if state.converged and len(state.memory) == 5:  # measured by the step that found convergence
            return state.memory[4]
        return float((self.eps * term(state.z)).norm() / (state.z.norm() + 1e-12))


def euler(force: Force, z: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """`steps` explicit Euler steps z <- z + eps F(z) (returns a new tensor)."""
    term = Term(force)
    solver = Euler(eps)
    return solve(term, solver, solver.init(term, z), Fixed(steps)).state.z


def relative_residual(force: Force, z: torch.Tensor, eps: float) -> float:
    """||z_{t+1} - z_t|| / ||z_t|| of one more Euler step (one force evaluation)."""
    return Euler(eps).residual(Term(force), State(z))


def relax(force: Force | Term, z0: torch.Tensor, config: RelaxConfig) -> Relaxation:
    """Relax from z0 to the fixed point with the configured solver and controller."""
    term = force if isinstance(force, Term) else Term(force)
    if config.method == "anderson":
        solver = Anderson(config.eps, config.anderson_memory, config.anderson_tol, config.anderson_damping)
        phase = solve(term, solver, solver.init(term, z0), Fixed(config.steps, residual=True))
        res = phase.residual
        return Relaxation(phase.state.z, phase.state.z, res, res, phase.evals, phase.state.steps)
    solver = Euler(config.eps)
    controller = Refine(config.steps, config.refine_chunk, config.refine_to, config.refine_tol)
    phase = solve(term, solver, solver.init(term, z0), controller)
    return Relaxation(phase.state.z, phase.info["z_budget"], phase.info["residual_budget"], phase.residual,
                      phase.evals, phase.state.steps)
