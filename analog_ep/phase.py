"""A phase: the state following a vector field until a controller stops it, digital or physical.

Every relaxation of the package - the digital twin's free phase, the nudged phases of EP, a
circuit's settle, an optical loop's passes - is three separate pieces joined by `solve`, in the
style of diffrax:

* the *term* (`Term`): the vector field z -> F(z) the state follows, with the nudge and the AEP
  correction folded in for a nudged phase (`analog_ep.estimator.ep.NudgedTerm`); it counts its
  evaluations and declares the linear self-decay (`leak`) an exponential integrator may take
  exactly;
* the *solver*: how the state moves. Digital: explicit Euler and Anderson acceleration
  (`analog_ep.relax.solvers`). Physical: a circuit's node dynamics with its amplifier pole,
  thermal noise and rails, and the optical loop (`analog_ep.circuit.dynamics`). `step` is pure
  (state in, state out: no tensor of the input state is modified); `advance` covers a duration in
  the solver's unit (steps, or seconds for circuits);
* the *controller*: how long. A fixed duration (`Fixed`), a budget then refinement until a
  residual threshold (`Refine`, the digital free phase), the settle monitor
  (`analog_ep.circuit.measure.Monitored`), or the most settled of periodic snapshots
  (`SelectSettled`, adaptive T2). Between
  two checks the solver advances by the duration the controller asks for; at a check the
  controller reads the state (and the solver's residual) and says how much longer, or stop.

`solve(term, solver, start, controller)` returns a `Phase`: the final state, the controller's
output (the final state, or a selected snapshot), the residual and verdict, and what it cost.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch


class Term:
    """A vector field z -> F(z) (no autograd graph), counting its evaluations.

    `leak` is lambda >= 0 with F(z) = -lambda z + N(z) (the node leak of the model's force): an
    exponential integrator integrates that part exactly and only N explicitly.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], leak: float = 0.0):
        self.fn, self.leak, self.evals = fn, float(leak), 0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.evals += 1
        with torch.no_grad():
            return self.fn(z)


@dataclass(frozen=True)
class State:
    """Where a phase is: the state z and what the solver carries with it."""

    z: torch.Tensor
    """The state (node voltages)."""
    u: torch.Tensor | None = None
    """Amplifier outputs of a circuit with a finite-bandwidth amplifier (None otherwise)."""
    t: float = 0.0
    """Time in the solver's unit (steps, or seconds for circuits)."""
    steps: int = 0
    """Accepted solver steps so far."""
    rejected: int = 0
    """Rejected trial steps (adaptive solvers)."""
    dt_next: float = 0.0
    """Step size an adaptive solver continues with (never a step shortened to hit an end time)."""
    memory: tuple = ()
    """Solver memory between steps (Anderson's history), never modified in place."""
    converged: bool = False
    """The solver met its own convergence test (Anderson): further steps change nothing."""


class Solver:
    """How a state moves under a term (see module docstring)."""

    unit = "steps"
    """Unit of `State.t` and of durations: 'steps' or 's'."""

    def init(self, term: Term, z0: torch.Tensor) -> State:
        return State(z0.detach())

    def step(self, term: Term, state: State, generator: torch.Generator | None = None) -> State:
        raise NotImplementedError

    def advance(self, term: Term, state: State, duration: float, generator: torch.Generator | None = None) -> State:
        """`duration` (rounded to whole steps) steps, or until the solver has converged."""
        for _ in range(int(round(duration))):
            if state.converged:
                break
            state = self.step(term, state, generator)
        return state

    def residual(self, term: Term, state: State) -> float:
        """The relative residual ||eps F(z)|| / ||z|| of the state, in the digital relaxation's units."""
        raise NotImplementedError


class Controller:
    """How long a phase lasts (see module docstring). One controller runs one phase."""

    residual: float = math.nan
    verdict: str = ""
    explanation: str = ""

    def start(self, state: State) -> float:
        """Duration until the first check."""
        raise NotImplementedError

    def check(self, term: Term, solver: Solver, state: State) -> float | None:
        """After a chunk: the duration until the next check, or None to stop."""
        raise NotImplementedError

    def output(self, state: State) -> Any:
        """What the phase delivers: the final state's z unless the controller selects."""
        return state.z


@dataclass
class Phase:
    """One solved phase."""

    state: State
    """Where the solver ended."""
    output: Any
    """What the controller delivers (the final z, or the selected snapshot's measurement)."""
    residual: float
    """The controller's last residual (nan where none was computed)."""
    verdict: str
    """'fixed', 'refined', 'selected', or the settle monitor's verdict."""
    explanation: str
    """One line on the verdict."""
    evals: int
    """Term evaluations spent, residual checks included."""
    duration: float
    """Time covered, in the solver's unit."""
    info: dict = field(default_factory=dict)
    """Controller specifics (e.g. the state and residual at a free phase's budget)."""


def solve(term: Term, solver: Solver, start: State, controller: Controller,
          generator: torch.Generator | None = None) -> Phase:
    """Advance `start` under `term` with `solver` until `controller` stops it."""
    evals0, t0 = term.evals, start.t
    state, chunk = start, controller.start(start)
    while chunk is not None:
        state = solver.advance(term, state, chunk, generator)
        chunk = controller.check(term, solver, state)
    return Phase(state, controller.output(state), controller.residual, controller.verdict, controller.explanation,
                 term.evals - evals0, state.t - t0, dict(getattr(controller, "info", {})))


# ---- controllers ----------------------------------------------------------------------------------

class Fixed(Controller):
    """A fixed duration (steps or seconds); with `residual`, one residual check at the end."""

    def __init__(self, duration: float, residual: bool = False):
        self.duration, self.want_residual = duration, residual

    def start(self, state: State) -> float:
        return self.duration

    def check(self, term, solver, state):
        if self.want_residual:
            self.residual = solver.residual(term, state)
        self.verdict, self.explanation = "fixed", f"fixed duration of {self.duration:g} {solver.unit}"
        return None


class Refine(Controller):
    """A budget of `budget` steps, then chunks of `chunk` until the residual is <= `tol` or `limit`
    steps in all (limit <= budget: no refinement). `info` keeps the state and residual at the
    budget (what evaluation sees) besides the final ones."""

    def __init__(self, budget: int, chunk: int = 50, limit: int = 0, tol: float = 0.0):
        self.budget, self.chunk, self.limit, self.tol = budget, chunk, limit, tol
        self.info: dict = {}

    def start(self, state: State) -> float:
        return self.budget

    def check(self, term, solver, state):
        self.residual = solver.residual(term, state)
        if not self.info:
            self.info = {"z_budget": state.z, "residual_budget": self.residual}
        self.verdict = "refined" if state.steps > self.budget else "fixed"
        self.explanation = f"{state.steps} steps, residual {self.residual:.1e}"
        if state.steps < self.limit and self.residual > self.tol:
            return min(self.chunk, self.limit - state.steps)
        return None


class SelectSettled(Controller):
    """Adaptive T2: up to `cap` steps, a snapshot `measure(z)` every `every` steps (and at the
    cap); delivers the snapshot that changed least since the previous one (the most settled), or
    the last one when fewer than two were taken."""

    def __init__(self, cap: int, every: int, measure: Callable[[torch.Tensor], Any]):
        self.cap, self.every, self.measure = cap, every, measure
        self.best, self.best_change, self.previous, self.last = None, math.inf, None, None
        self.info: dict = {"selected_step": cap}

    def start(self, state: State) -> float:
        return min(self.every, self.cap)

    def check(self, term, solver, state):
        snap = self.measure(state.z)
        if self.previous is not None:
            change = float((snap - self.previous).norm())
            if change <= self.best_change:
                self.best, self.best_change, self.info["selected_step"] = snap, change, state.steps
        self.previous = self.last = snap
        self.verdict = "selected"
        self.explanation = f"snapshot of step {self.info['selected_step']} of {self.cap}"
        remaining = self.cap - state.steps
        return min(self.every, remaining) if remaining > 0 else None

    def output(self, state: State):
        if self.best is None:
            self.info["selected_step"] = state.steps
            return self.last
        return self.best


def replaced(state: State, **changes) -> State:
    """A copy of `state` with some fields changed (tensors are shared, never modified)."""
    return replace(state, **changes)
