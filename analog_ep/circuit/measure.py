"""Measured settles: run a phase for a physical time, then sample the nodes as a chip would.

A phase (`analog_ep.phase`) settles for a fixed time or until the settle monitor reports the
residual below its threshold (`Monitored`: checked every `check_every` seconds, capped at `cap`).
The nodes are then read through an ADC (bits, range, input-referred noise), optionally averaged
over a lock-in window of samples taken while the circuit keeps running. Only these samples leave
the chip.

EP on the circuit (`circuit_ep_gradient`): the free phase settles and is sampled; the nudged
phases are the estimator's own (`analog_ep.estimator.ep.estimate_adjoint`, the same `NudgedTerm`
as the digital twin's), settled by the circuit from its free state (for `nudge_time` when set,
the circuit's T2) and sampled: each nudge point
injects the nudge as a current -beta_k d l_t / d z_t at every output node, the gradient of that
token's own loss (so beta is per token: the nodes move by ~beta, which an ADC can resolve; the
contrast is divided by the token count to give the gradient of the mean loss), and, with AEP, a
correction current from a digital co-processor linearised once at the *sampled* free state. The
contrast a = -Re[sum_k w_k e^{-i phi_k} (s_k - s_free)] / (N r) uses sampled states only;
`ep.restarts` repeats the nudged settle and averages; the vector-field gradient is taken at the
sampled free state.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from analog_ep.circuit.dynamics import CircuitConfig, circuit_solver
from analog_ep.circuit.monitor import SettleMonitor
from analog_ep.errors import check
from analog_ep.estimator.ep import Adjoint, EPConfig, NudgePoints, estimate_adjoint, vector_field_gradient
from analog_ep.model.base import EquilibriumModel
from analog_ep.phase import Controller, Fixed, Solver, State, Term, solve
from analog_ep.schema.circuit import MonitorConfig, SettleConfig  # noqa: F401  (re-exported)


class Monitored(Controller):
    """Checks every `check_every` seconds: the solver's residual goes to a `SettleMonitor`; stops
    once it is at or below the monitor's threshold, at `cap`, or (with `stop_on_floor`) once the
    same noise-floor or limit-cycle diagnosis has held for a whole monitor window."""

    def __init__(self, check_every: float, cap: float, monitor: MonitorConfig, stop_on_floor: bool = True):
        self.check_every, self.cap, self.stop_on_floor = check_every, cap, stop_on_floor
        self.monitor = SettleMonitor(monitor)
        self.streak, self.last, self.t0 = 0, "", 0.0

    def start(self, state: State) -> float:
        self.t0 = state.t
        return self.check_every

    def check(self, term, solver, state):
        self.residual = solver.residual(term, state)
        elapsed = state.t - self.t0
        self.monitor.update(elapsed, state.z, self.residual)
        stop = self.monitor.settled or elapsed >= self.cap * (1 - 1e-9)
        if not stop and self.stop_on_floor:
            verdict = self.monitor.verdict()
            self.streak = self.streak + 1 if verdict == self.last and verdict in ("noise_floor", "oscillating") else 0
            self.last = verdict
            stop = self.streak >= self.monitor.config.window  # a transient can look like either for a while
        if stop:
            self.verdict, self.explanation = self.monitor.verdict(), self.monitor.explain()
            return None
        return self.check_every



@dataclass
class Settle:
    """One settled and sampled phase."""

    state: State
    """The circuit at the end of the phase (after the lock-in window)."""
    sample: torch.Tensor
    """What the ADC reported (lock-in average): the only thing the estimator may use."""
    settle_time: float
    """Physical seconds until sampling started."""
    window: float
    """Physical seconds of the lock-in window after it ((lockin - 1) x lockin_interval)."""
    force_evals: int
    """Force evaluations of the simulation (all nudge points of a stacked phase count once each)."""
    residual: float
    """Monitor residual at the last check."""
    verdict: str
    """'settled', 'slow', 'oscillating', 'noise_floor' or 'fixed' (a fixed-time settle)."""
    explanation: str = ""
    """One line from the monitor."""


def sample(z: torch.Tensor, config: SettleConfig, generator: torch.Generator | None) -> torch.Tensor:
    """One ADC reading of the nodes."""
    s = z.clone()
    if config.adc_noise > 0:
        s.add_(torch.randn(s.shape, generator=generator, dtype=s.dtype), alpha=config.adc_noise)
    if config.adc_bits:
        step = 2 * config.adc_range / (2 ** config.adc_bits - 2)
        s = (s / step).round_().mul_(step).clamp_(-config.adc_range, config.adc_range)
    return s


def settle(term: Term, solver: Solver, state: State, config: SettleConfig, generator: torch.Generator | None = None
           ) -> Settle:
    """Run a phase to its settle criterion, then sample (see module docstring)."""
    start_evals = term.evals
    controller = Fixed(config.time, residual=True) if config.time > 0 else \
        Monitored(config.check_every, config.cap, config.monitor, config.stop_on_floor)
    phase = solve(term, solver, state, controller, generator)
    state = phase.state
    total = sample(state.z, config, generator)
    for _ in range(config.lockin - 1):
        state = solver.advance(term, state, config.lockin_interval, generator)
        total += sample(state.z, config, generator)
    return Settle(state, total / config.lockin, phase.duration, (config.lockin - 1) * config.lockin_interval,
                  term.evals - start_evals, phase.residual, phase.verdict, phase.explanation)


def settle_free(model: EquilibriumModel, x_in: torch.Tensor, solver: Solver, config: SettleConfig,
                generator: torch.Generator | None = None) -> Settle:
    """The free phase: the model's force from its initial state, settled and sampled."""
    term = Term(lambda z: model.force(z, x_in), model.leak)
    return settle(term, solver, solver.init(term, model.initial_state(x_in)), config, generator)


def circuit_adjoint(model: EquilibriumModel, x_in: torch.Tensor, y: torch.Tensor, free: Settle, solver: Solver,
                    config: SettleConfig, ep: EPConfig, generator: torch.Generator | None = None,
                    reads: str = "parameters") -> Adjoint:
    """The nudged settles from the free circuit state and the adjoint from samples; `Adjoint.phases`
    holds each restart's nudged `Settle`."""
    points = NudgePoints.from_config(ep)
    check(not points.complex, "holomorphic", ep.holomorphic,
          "a circuit settles real node voltages: complex nudges need a holomorphic chip",
          "use the real centred or one-sided estimator (holomorphic: 0) on a circuit")
    stack = lambda t: t.repeat(points.count, *([1] * (t.ndim - 1)))  # noqa: E731  (B, ...) -> (n_points*B, ...)
    start = State(stack(free.state.z), None if free.state.u is None else stack(free.state.u))
    s_free, nudge_config = free.sample, config.nudged()

    def run_phase(term, _):
        nudged = settle(term, solver, start, nudge_config, generator)
        return points.contrast(nudged.sample, s_free), nudged.state.steps, nudged

    # Per token: each output node gets its own error current (a batch-mean nudge moves the nodes
    # ~tokens x less, far below an ADC's LSB); estimate_adjoint divides the contrast back.
    tokens = y.numel() if config.nudge_per_token else 1
    return estimate_adjoint(model, x_in, y, s_free, ep, reads, run_phase, gain=tokens)


@dataclass
class CircuitEPResult:
    """A circuit EP step: the gradient and what each phase measured."""

    grads: dict[str, torch.Tensor]
    """Parameter name -> gradient estimate from the sampled states."""
    free: Settle
    """The free phase, settled and sampled."""
    nudged: list[Settle]
    """The stacked nudge phase of each restart (all nudge points settle side by side, each on its
    own copy of the circuit)."""
    loss: float
    """Task loss at the sampled free state."""
    phases: dict = field(default_factory=dict)
    """Per phase: settle_time (s, summed over restarts), force_evals, verdict (the last)."""


def circuit_ep_gradient(model: EquilibriumModel, x: torch.Tensor, y: torch.Tensor, circuit: CircuitConfig,
                        settle_config: SettleConfig, ep: EPConfig, generator: torch.Generator | None = None,
                        reads: str = "parameters") -> CircuitEPResult:
    """Free settle, nudged settles, contrast from samples, vector-field gradient at the sample
    (`reads`: the weights of the co-processor's products, see `analog_ep.linear`)."""
    solver = circuit_solver(circuit)
    with torch.no_grad():
        x_in = model.drive(x)
        free = settle_free(model, x_in, solver, settle_config, generator)
        loss = float(model.loss(free.sample, y))
    adjoint = circuit_adjoint(model, x_in, y, free, solver, settle_config, ep, generator, reads)
    grads = vector_field_gradient(model, x, y, free.sample, adjoint.a, reads)
    nudged = adjoint.phases
    phases = {"free": {"settle_time": free.settle_time, "force_evals": free.force_evals, "verdict": free.verdict},
              "nudged": {"settle_time": sum(n.settle_time for n in nudged),
                         "force_evals": sum(n.force_evals for n in nudged), "verdict": nudged[-1].verdict,
                         "points": NudgePoints.from_config(ep).count, "restarts": len(nudged)}}
    return CircuitEPResult(grads, free, nudged, loss, phases)
