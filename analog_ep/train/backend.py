"""What a twin relaxes on and writes through: the only things that differ between twins.

A twin's step (`analog_ep.train.twin.DigitalTwin.step`) is the same for every twin: free phase,
validity gate, gradient, stabilisers, update. Two components vary:

* the *backend* runs the phases and says what the update path reads (`reads`, see
  `analog_ep.linear`):
  - `DigitalBackend` - digital relaxations (`relax.*`) and nudges (`ep.*`); with a chip on the
    model every product of a relaxation reads the tiles through their periphery, and the
    estimator's linear algebra reads `reads`: 'parameters' for the digital twin; for an analog
    twin 'chip' (chip.learning: coprocessor - a digital co-processor that knows every
    conductance) or 'tiles' (chip.learning: local - every product a read through the tiles);
  - `CircuitBackend` - the circuit's measured settles (`circuit.*`), the same estimator, and the
    step's energy and latency, which include what the update path reads: every device once
    ('chip', `readout_cost`) or the estimator's reads through the tiles ('tiles',
    `update_read_cost`);
* the *writer* applies the update: `ParameterWriter` (the optimizer's step on the parameters) or
  `analog_ep.train.analog.ChipWriter` (pulses through the devices).

`check_backend(cfg)` refuses, before a run starts, an option set explicitly (chip file or --set,
`analog_ep.config.explicit_keys`) to a value the analog twin's circuit does not realise; the
defaults a circuit ignores are documented in the fields' docstrings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from analog_ep.circuit.dynamics import CircuitConfig, check_step, circuit_solver
from analog_ep.circuit.energy import (ChipLoad, EnergyConfig, StepCost, controller_read_cost, phase_cost,
                                      readout_cost, update_read_cost, write_cost)
from analog_ep.circuit.measure import Settle, SettleConfig, circuit_adjoint, settle_free
from analog_ep.errors import ConfigError
from analog_ep.estimator.ep import Adjoint, EPConfig, NudgePoints, estimate_adjoint
from analog_ep.model.base import EquilibriumModel
from analog_ep.phase import Term
from analog_ep.relax.solvers import RelaxConfig, relax


@dataclass
class FreePhase:
    """A free phase as the rest of the step sees it."""

    z: torch.Tensor
    """The state the estimator works at (digital: the settled state; circuit: the ADC sample)."""
    z_eval: torch.Tensor
    """The state the loss and evaluation read (digital: after the T1 budget; circuit: the sample)."""
    residual: float
    """Residual of `z_eval`: the training health signal."""
    residual_gate: float
    """Residual the validity gate compares (digital: after refinement)."""
    force_evals: int
    """Force evaluations of B samples."""
    verdict: str = ""
    """Settle monitor's verdict (circuits)."""
    settle: Settle | None = None
    """The circuit's measurement (circuits)."""


@dataclass
class StepCosts:
    """Physical cost of a step (circuits)."""

    settle_time: float | None = 0.0
    """Physical settle time of every phase (s); None when no circuit ran (nothing physical was
    simulated: the digital loop has no physical time)."""
    energy: float | None = 0.0
    """Estimated energy (J); None without a circuit, like `settle_time`."""
    latency: float = 0.0
    """Estimated time of the step on the chip (s): settles, sampling, writes."""
    detail: StepCost = field(default_factory=StepCost)
    """The terms the energy and latency are summed from."""


class DigitalBackend:
    """Digital relaxations; see module docstring."""

    def __init__(self, relax_config: RelaxConfig, ep_config: EPConfig, reads: str = "parameters"):
        self.relax_config, self.ep_config, self.reads = relax_config, ep_config, reads

    def free(self, model: EquilibriumModel, x_in: torch.Tensor, generator: torch.Generator | None) -> FreePhase:
        with torch.no_grad():
            free = relax(Term(lambda z: model.force(z, x_in), model.leak), model.initial_state(x_in),
                         self.relax_config)
        return FreePhase(free.z, free.z_budget, free.residual, free.residual_final, free.force_evals)

    def adjoint(self, model: EquilibriumModel, x_in: torch.Tensor, y: torch.Tensor, free: FreePhase,
                generator: torch.Generator | None) -> Adjoint:
        return estimate_adjoint(model, x_in, y, free.z, self.ep_config, self.reads)

    def cost(self, model, free: FreePhase, adjoint: Adjoint | None, pulses: int, rounds: int,
             reads: tuple[int, int] = (0, 0)) -> StepCosts:
        return StepCosts(settle_time=None, energy=None)

    def nudge_gain(self, y: torch.Tensor) -> float:
        """What the nudge multiplies the batch-mean loss's gradient by (1: the batch-mean nudge)."""
        return 1.0


class CircuitBackend:
    """Measured settles of a circuit; see module docstring. `load` gives what the chip's arrays
    present to a phase (`AnalogChip.load`) for the energy estimate."""

    def __init__(self, circuit: CircuitConfig, settle: SettleConfig, energy: EnergyConfig, ep_config: EPConfig,
                 reads: str = "parameters", load=None):
        self.circuit, self.settle_config, self.energy_config = circuit, settle, energy
        self.ep_config, self.reads, self.load = ep_config, reads, load
        self.solver = circuit_solver(circuit)

    def free(self, model: EquilibriumModel, x_in: torch.Tensor, generator: torch.Generator | None) -> FreePhase:
        with torch.no_grad():
            s = settle_free(model, x_in, self.solver, self.settle_config, generator)
        return FreePhase(s.sample, s.sample, s.residual, s.residual, s.force_evals, s.verdict, s)

    def adjoint(self, model: EquilibriumModel, x_in: torch.Tensor, y: torch.Tensor, free: FreePhase,
                generator: torch.Generator | None) -> Adjoint:
        return circuit_adjoint(model, x_in, y, free.settle, self.solver, self.settle_config, self.ep_config,
                               generator, self.reads)

    def nudge_gain(self, y: torch.Tensor) -> float:
        """What the nudge multiplies the batch-mean loss's gradient by: the token count for a
        per-token nudge (`SettleConfig.nudge_per_token`), else 1."""
        return float(y.numel()) if self.settle_config.nudge_per_token else 1.0

    def cost(self, model, free: FreePhase, adjoint: Adjoint | None, pulses: int, rounds: int,
             reads: tuple[int, int] = (0, 0)) -> StepCosts:
        """The step's energy and latency; `reads` = (row reads, devices converted) of the write
        controller (`AnalogChip.read_matrix`)."""
        cfg, s = self.energy_config, self.settle_config
        load = self.load(cfg.g_max) if self.load is not None else None
        cost = StepCost()
        nodes = free.z.numel()
        vectors = nodes // free.z.shape[-1]  # token vectors per copy: every dim but the channels
        common = dict(nodes=nodes, lockin=s.lockin, lockin_interval=s.lockin_interval, vectors=vectors)
        phases = [(free.settle, 1)] + [(n, NudgePoints.from_config(self.ep_config).count)
                                       for n in (adjoint.phases if adjoint is not None else [])]
        loop = self.circuit.kind == "loop"
        for settle, copies in phases:
            passes = (settle.settle_time + settle.window) / self.circuit.pass_time if loop else 0.0
            phase_cost(cost, cfg, load or ChipLoad(), settle_time=settle.settle_time, window=settle.window,
                       copies=copies, passes=passes, **common)
        if load is not None and self.reads == "chip":  # the co-processor's knowledge: every device read
            readout_cost(cost, cfg, load)
        elif load is not None and self.reads == "tiles" and adjoint is not None:  # the estimator's tile reads
            update_read_cost(cost, cfg, load, vectors, adjoint.jacobian_products)
        write_cost(cost, cfg, pulses, rounds)
        controller_read_cost(cost, cfg, reads[1], reads[0])
        return StepCosts(cost.settle_s, cost.energy_j, cost.latency_s, cost)


# ---- explicitly set options the circuit does not realise -----------------------------------------

def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0)


def check_backend(cfg, explicit: frozenset[str] | None = None) -> None:
    """Refuse an option set explicitly to a value the analog twin's circuit does not realise.

    The analog twin (in `train.twins`) relaxes on `cfg.circuit`; its phases last `circuit.settle`,
    so the digital nudged phase's length and step (`ep.steps`, `ep.eps`) are realised only as the
    nudged phases' settle (`circuit.settle.nudge_time`, or `time` when that is 0): an RC circuit
    with a fixed nudged settle time T realises steps x eps x tau = T; a loop with a fixed time
    realises eps = loop_eps and steps = T / pass_time passes; a monitored settle realises neither.
    `ep.select_cap` (the monitor is the circuit's adaptive T2), tracking AEP (the
    co-processor linearises once, at the sampled free state) and holomorphic nudges (real node
    voltages) are not realised at all. Also refuses a circuit dt at which its integrator is
    unstable for the model's leak (`analog_ep.circuit.dynamics.check_step`). `explicit` defaults to
    `analog_ep.config.explicit_keys(cfg)`; a key set to its schema default counts as not set (a full
    `analog-ep validate --show` dump restates every default, and must load as the chip it came from).
    """
    from analog_ep.config import explicit_keys

    if "analog" not in cfg.train.twins:
        return
    explicit = explicit_keys(cfg) if explicit is None else explicit
    # A key restated at its default is the default (a `validate --show` dump restates every key).
    defaults = EPConfig()
    explicit = {key for key in explicit if not (key.startswith("ep.") and hasattr(defaults, key[3:])
                                                and getattr(cfg.ep, key[3:]) == getattr(defaults, key[3:]))}
    circuit, settle, ep = cfg.circuit.dynamics, cfg.circuit.settle, cfg.ep
    check_step(circuit, cfg.model.leak)
    where = "the analog twin's circuit"

    def refuse(key: str, value, problem: str, fix: str) -> None:
        raise ConfigError(key, value, f"{where} {problem}", fix)

    if cfg.chip.learning == "local":
        if cfg.optim.trust_ratio:
            refuse("optim.trust_ratio", True, "learns locally (chip.learning: local) and cannot know ||W|| of an "
                   "array, which Lion's trust ratio scales by", "set optim.trust_ratio: false, or chip.learning: "
                   "coprocessor")
        if ep.holomorphic:
            refuse("ep.holomorphic", ep.holomorphic, "learns locally (chip.learning: local) from real reads of "
                   "its tiles", "use ep.holomorphic: 0")
    if "ep.select_cap" in explicit and ep.select_cap > 0:
        refuse("ep.select_cap", ep.select_cap, "ends its nudged phase by circuit.settle (its monitor is the "
               "adaptive T2)", "set ep.select_cap: 0, or monitor the settle (circuit.settle.time: 0)")
    if "ep.aep" in explicit and ep.aep == "tracking":
        refuse("ep.aep", ep.aep, "linearises the AEP correction once, at the sampled free state (a "
               "co-processor sees samples, not the moving nodes)", "use ep.aep: frozen or none")
    if ep.nudge == "linear":
        refuse("ep.nudge", ep.nudge, "settles the nonlinear nudged dynamics (the linear nudge needs the "
               "operator's transpose, which a chip does not know)",
               "use ep.nudge: nonlinear, or train the digital twin alone (train.twins: [digital])")
    if "ep.holomorphic" in explicit and ep.holomorphic:
        refuse("ep.holomorphic", ep.holomorphic, "settles real node voltages", "use ep.holomorphic: 0")
    if not ({"ep.steps", "ep.eps"} & explicit):
        return
    key = "ep.steps" if "ep.steps" in explicit else "ep.eps"
    value = getattr(ep, key.split(".")[1])
    nudge = settle.nudged()  # T2 is the nudged phases' settle: nudge_time when set
    time_key = "circuit.settle.nudge_time" if settle.nudge_time > 0 else "circuit.settle.time"
    if nudge.time <= 0:
        refuse(key, value, "ends each phase by its settle monitor, not after a number of steps",
               "remove it, or give circuit.settle.nudge_time a fixed length")
    if circuit.kind == "loop":
        passes = nudge.time / circuit.pass_time
        if "ep.eps" in explicit and not _close(ep.eps, circuit.loop_eps):
            refuse("ep.eps", ep.eps, f"re-injects loop_eps={circuit.loop_eps:g} of the force per pass",
                   f"set ep.eps: {circuit.loop_eps:g} or circuit.dynamics.loop_eps: {ep.eps:g}")
        if "ep.steps" in explicit and not _close(ep.steps, passes):
            refuse("ep.steps", ep.steps, f"settles each nudged phase for {passes:g} passes ({time_key} "
                   f"{nudge.time:g} s / pass_time {circuit.pass_time:g} s)",
                   f"set ep.steps: {passes:g}, or circuit.settle.nudge_time: {ep.steps * circuit.pass_time:g}")
        return
    realised = nudge.time / circuit.tau
    if not _close(ep.steps * ep.eps, realised):
        refuse(key, value, f"settles each nudged phase for {realised:g} tau ({time_key} {nudge.time:g} s), "
               f"not ep.steps x ep.eps = {ep.steps * ep.eps:g} tau",
               f"set circuit.settle.nudge_time: {ep.steps * ep.eps * circuit.tau:g}, or make ep.steps x ep.eps = "
               f"{realised:g}")
