"""Measured settles: run a phase for a physical time, then sample the nodes as a chip would.

A phase settles for a fixed time or until the settle monitor reports the residual below its
threshold (checked every `check_every` seconds, capped at `cap`). The nodes are then read
through an ADC (bits, range, input-referred noise), optionally averaged over a lock-in window
of samples taken while the circuit keeps running. Only these samples leave the chip.

EP on the circuit (`circuit_ep_gradient`): the free phase settles and is sampled; each nudge
point injects the nudge as a current -beta_k dloss_token/dz at every output node, the gradient of
that token's own loss (so beta is per token: the nodes move by ~beta, which an ADC can resolve;
the contrast is divided by the token count to give the gradient of the mean loss), and, with AEP, a
correction current from a digital co-processor linearised at the *sampled* free state) and
settles from the free state; the contrast a = -Re[sum_k w_k e^{-i phi_k} (s_k - s_free)] / (N r)
uses sampled states only; the vector-field gradient is taken at the sampled free state.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from analog_ep.circuit.dynamics import CircuitConfig, CircuitState, CircuitTerm, integrate
from analog_ep.circuit.monitor import SettleMonitor
from analog_ep.errors import check
from analog_ep.estimator.ep import EPConfig, NudgePoints, _Correction, clip_correction, vector_field_gradient
from analog_ep.model.base import EquilibriumModel
from analog_ep.schema.circuit import SettleConfig  # noqa: F401  (re-exported)

#: The monitor's residual is ||RESIDUAL_EPS * tau dz/dt|| / ||z||, numerically the digital
#: relaxation's residual at its default step eps = 0.1, so thresholds carry over.
RESIDUAL_EPS = 0.1


@dataclass
class Settle:
    """One settled and sampled phase."""

    state: CircuitState
    """The circuit at the end of the phase (after the lock-in window)."""
    sample: torch.Tensor
    """What the ADC reported (lock-in average): the only thing the estimator may use."""
    settle_time: float
    """Physical seconds until sampling started."""
    force_evals: int
    """Force evaluations of the simulation (all nudge points of a stacked phase count once each)."""
    residual: float
    """Monitor residual at the last check."""
    verdict: str
    """'settled', 'slow', 'oscillating', 'noise_floor' or 'fixed' (a fixed-time settle)."""
    explanation: str = ""
    """One line from the monitor."""


def residual(term: CircuitTerm, z: torch.Tensor) -> float:
    """||0.1 F(z)|| / ||z||: the digital relaxation's residual, from the circuit's own force."""
    return float((RESIDUAL_EPS * term.evaluate(z)).norm() / (z.norm() + 1e-12))


def sample(z: torch.Tensor, config: SettleConfig, generator: torch.Generator | None) -> torch.Tensor:
    """One ADC reading of the nodes."""
    s = z.clone()
    if config.adc_noise > 0:
        s.add_(torch.randn(s.shape, generator=generator, dtype=s.dtype), alpha=config.adc_noise)
    if config.adc_bits:
        step = 2 * config.adc_range / (2 ** config.adc_bits - 2)
        s = (s / step).round_().mul_(step).clamp_(-config.adc_range, config.adc_range)
    return s


def settle(term: CircuitTerm, state: CircuitState, config: SettleConfig, generator: torch.Generator | None = None
           ) -> Settle:
    """Run a phase to its settle criterion, then sample (see module docstring)."""
    start_evals, t0 = term.evals, state.t
    dt = None
    if config.time > 0:
        state, stats = integrate(term, state, config.time, generator)
        res, verdict, why = residual(term, state.z), "fixed", f"fixed settle of {config.time:g} s"
    else:
        monitor = SettleMonitor(config.monitor)
        streak, last = 0, ""  # consecutive checks with the same floor/cycle diagnosis
        while True:
            state, stats = integrate(term, state, config.check_every, generator, dt)
            dt = stats.dt_next or None
            res = residual(term, state.z)
            monitor.update(state.t - t0, state.z, res)
            if monitor.settled or state.t - t0 >= config.cap * (1 - 1e-9):
                break
            if config.stop_on_floor:
                verdict = monitor.verdict()
                streak = streak + 1 if verdict == last and verdict in ("noise_floor", "oscillating") else 0
                last = verdict
                if streak >= config.monitor.window:  # a transient can look like either for a while
                    break
        verdict, why = monitor.verdict(), monitor.explain()
    settle_time = state.t - t0
    total = sample(state.z, config, generator)
    for _ in range(config.lockin - 1):
        state, _ = integrate(term, state, config.lockin_interval, generator, dt)
        total += sample(state.z, config, generator)
    return Settle(state, total / config.lockin, settle_time, term.evals - start_evals, res, verdict, why)


@dataclass
class CircuitEPResult:
    """A circuit EP step: the gradient and what each phase measured."""

    grads: dict[str, torch.Tensor]
    """Parameter name -> gradient estimate from the sampled states."""
    free: Settle
    """The free phase, settled and sampled."""
    nudged: Settle
    """The stacked nudge phase (all nudge points settle side by side, each on its own copy)."""
    loss: float
    """Task loss at the sampled free state."""
    phases: dict = field(default_factory=dict)
    """Per phase: settle_time (s), force_evals, verdict."""


def circuit_ep_gradient(model: EquilibriumModel, x: torch.Tensor, y: torch.Tensor, circuit: CircuitConfig,
                        settle_config: SettleConfig, ep: EPConfig, generator: torch.Generator | None = None
                        ) -> CircuitEPResult:
    """Free settle, nudged settles, contrast from samples, vector-field gradient at the sample."""
    with torch.no_grad():
        x_in = model.drive(x)
        free_term = CircuitTerm(lambda z: model.force(z, x_in), circuit)
        free = settle(free_term, free_term.initial(model.initial_state(x_in)), settle_config, generator)
        s_free = free.sample
        points = NudgePoints.from_config(ep)
        check(not points.complex, "holomorphic", ep.holomorphic,
              "a circuit settles real node voltages: complex nudges need a holomorphic chip",
              "use the real centred or one-sided estimator (holomorphic: 0) on a circuit")
        P = len(points.betas)
        rep = lambda t: t.repeat(P, *([1] * (t.ndim - 1)))  # noqa: E731  (B, ...) -> (P*B, ...)
        x_rep, y_rep, s_rep = rep(x_in), rep(y), rep(s_free)
        beta = torch.tensor([b.real for b in points.betas], dtype=s_free.dtype)
        beta = beta.view(P, *([1] * s_free.ndim)).expand(P, *s_free.shape).reshape(s_rep.shape)
        aep = ep.aep != "none" and model.nc_force(s_free[:1], x_in[:1]) is not None
        corr = _Correction(model, x_in, s_free, P) if aep else None  # digital co-processor, frozen

        # Per token: each output node gets its own error current (a batch-mean nudge moves the
        # nodes ~tokens x less, far below an ADC's LSB); the contrast is rescaled below.
        tokens = y.numel() if settle_config.nudge_per_token else 1

        def nudged_force(z):
            g = model.loss_grad(z, y_rep) * (P * tokens)
            if ep.nudge_clip > 0:
                g = g.clamp(-ep.nudge_clip, ep.nudge_clip)
            f = model.force(z, x_rep) - beta * g
            if corr is not None:  # clipped per nudge point, as in the digital estimator
                f = f - clip_correction(corr(z - s_rep), f, P, ep.aep_clip)
            return f

        nudge_term = CircuitTerm(nudged_force, circuit)
        start = CircuitState(rep(free.state.z), None if free.state.u is None else rep(free.state.u), 0.0)
        nudged = settle(nudge_term, start, settle_config, generator)
        a = points.contrast(nudged.sample, s_free) / tokens  # back to the gradient of the mean loss
        loss = float(model.loss(s_free, y))
    grads = vector_field_gradient(model, x, y, s_free, a)
    phases = {"free": {"settle_time": free.settle_time, "force_evals": free.force_evals, "verdict": free.verdict},
              "nudged": {"settle_time": nudged.settle_time, "force_evals": nudged.force_evals,
                         "verdict": nudged.verdict, "points": P}}
    return CircuitEPResult(grads, free, nudged, loss, phases)
