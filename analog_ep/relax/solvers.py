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

import math
from dataclasses import dataclass, replace
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
    restarts: int = 0
    """Anderson: sample histories its safeguard dropped (0 for Euler)."""


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
    """Anderson acceleration (type II, Walker & Ni 2011) of G(z) = z + h F(z), per sample, safeguarded.

    Each sample mixes its own last `memory` iterates (samples never interact through the force),
    which converges faster than one global least-squares. A step is one evaluation of F; it
    converges (and stops moving) once every sample's residual ||eps F(z)|| / ||z|| is <= `tol`
    (always in the units of the Euler step `eps`, whatever the base step `h`).

    * `step` h (default `eps`): the step of the map being accelerated. For a force with a linear
      leak, F = -lambda z + N(z), h = 1/lambda is the leak's exact (Jacobi) step: z <- N(z)/lambda,
      which on the research block converges several times faster than Euler's eps = 0.1.
    * Safeguard (`restart`): a sample whose residual grew by more than `restart` x since its
      previous iterate drops its history and takes a plain step of G from where it is (inf: never).
      Early iterates far from z* (on the transformer block, |z| grows 20x and LayerNorm's slope
      ~1/|z| changes with it) poison the secant model; without the restart undamped Anderson
      stalls at residual ~0.1 on a trained block (README, Measured: Performance).
    * The least squares min ||r - dR gamma|| is solved from its normal equations in float64 with a
      1e-10 relative Tikhonov term: a near-rank-deficient history stays solvable.
    """

    def __init__(self, eps: float, memory: int = 5, tol: float = 1e-6, damping: float = 1.0,
                 step: float | None = None, restart: float = math.inf):
        self.eps, self.memory, self.tol, self.damping = eps, memory, tol, damping
        self.h = eps if step is None or step <= 0 else step
        self.restart = restart

    def step(self, term: Term, state: State, generator=None) -> State:
        # memory: AndersonMemory (the previous iterate and residual, the differences of the last
        # `memory` iterates, dX and dR (B, m, D), oldest first: each step appends one row instead
        # of re-differencing the whole history; the columns' order does not change the mix).
        shape, B = state.z.shape, state.z.shape[0]
        x = state.z.reshape(B, -1)  # (B, D): flatten each sample's state
        f = term(state.z).reshape(B, -1)  # (B, D)
        res_each = self.eps * f.norm(dim=1) / (x.norm(dim=1) + 1e-12)
        mem = state.memory[0] if state.memory else AndersonMemory()
        if bool((res_each <= self.tol).all()):
            # the global residual of this very state, so that `residual` costs no evaluation
            return replaced(state, converged=True, memory=(replace(
                mem, final_residual=float(self.eps * f.norm() / (x.norm() + 1e-12))),))
        r = self.h * f  # G(x) - x
        damping, dX, dR, restarts = self.damping, mem.dX, mem.dR, mem.restarts
        if mem.x is None:
            x_new = x + damping * r
        else:
            keep = self.memory - 1
            dx, dr = (x - mem.x).unsqueeze(1), (r - mem.r).unsqueeze(1)  # (B, 1, D)
            dX = dx if dX is None else torch.cat([dX[:, -keep:] if keep else dX[:, :0], dx], dim=1)  # (B, m, D)
            dR = dr if dR is None else torch.cat([dR[:, -keep:] if keep else dR[:, :0], dr], dim=1)
            grew = res_each > self.restart * mem.res_each  # (B,): restart these samples' histories
            if bool(grew.any()):
                restarts += int(grew.sum())
                kept = (~grew).to(dX.dtype)[:, None, None]
                dX, dR = dX * kept, dR * kept  # zero rows: their mixing coefficients solve to 0
            dR64 = dR.double()
            gram = dR64 @ dR64.transpose(1, 2)  # (B, m, m)
            trace = gram.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None]  # (B, 1, 1)
            reg = torch.where(trace > 0, 1e-10 * trace, torch.ones_like(trace))  # an empty history: gamma = 0
            eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
            gamma, info = torch.linalg.solve_ex(gram + reg * eye, dR64 @ r.double().unsqueeze(2))  # (B, m, 1)
            gamma = torch.where((info == 0)[:, None, None], gamma, torch.zeros_like(gamma)).to(x.dtype)  # plain step
            gamma_t = gamma.transpose(1, 2)  # (B, 1, m)
            mix = gamma_t @ (dX + damping * dR) if damping != 1 else gamma_t @ dX + gamma_t @ dR  # (B, 1, D)
            x_new = x + damping * r - mix.squeeze(1)
        return replaced(state, z=x_new.reshape(shape), t=state.t + 1, steps=state.steps + 1,
                        memory=(AndersonMemory(x, r, dX, dR, res_each, restarts),))

    def residual(self, term: Term, state: State) -> float:
        if state.converged and state.memory and state.memory[0].final_residual is not None:
            return state.memory[0].final_residual  # measured by the step that found convergence
        return float((self.eps * term(state.z)).norm() / (state.z.norm() + 1e-12))


@dataclass(frozen=True)
class AndersonMemory:
    """What Anderson carries between steps (never modified in place)."""

    x: torch.Tensor | None = None
    """Previous iterate, (B, D)."""
    r: torch.Tensor | None = None
    """Its step G(x) - x, (B, D)."""
    dX: torch.Tensor | None = None
    """Differences of the last iterates, (B, m, D), oldest first."""
    dR: torch.Tensor | None = None
    """Differences of their steps, (B, m, D)."""
    res_each: torch.Tensor | None = None
    """Each sample's residual at the previous iterate, (B,)."""
    restarts: int = 0
    """Sample histories dropped by the safeguard so far."""
    final_residual: float | None = None
    """The global residual of the converged state (set by the step that found convergence)."""


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
        solver = Anderson(config.eps, config.anderson_memory, config.anderson_tol, config.anderson_damping,
                          config.anderson_step, config.anderson_restart)
        phase = solve(term, solver, solver.init(term, z0), Fixed(config.steps, residual=True))
        res = phase.residual
        restarts = phase.state.memory[0].restarts if phase.state.memory else 0
        return Relaxation(phase.state.z, phase.state.z, res, res, phase.evals, phase.state.steps, restarts)
    solver = Euler(config.eps)
    controller = Refine(config.steps, config.refine_chunk, config.refine_to, config.refine_tol)
    phase = solve(term, solver, solver.init(term, z0), controller)
    return Relaxation(phase.state.z, phase.info["z_budget"], phase.info["residual_budget"], phase.residual,
                      phase.evals, phase.state.steps)
