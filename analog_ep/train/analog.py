"""The analog twin: the same training step, with the weights on a simulated chip.

Relaxations run on the crossbars (every weight product through the chip's periphery), the EP
estimate is formed from those settles, and the update is written back through the devices:

* Lion with 'sign_pulse' writes: each held matrix receives Lion's sign update as at most one
  fixed-amplitude pulse per device, so its effective learning rate is the pulse step
  dw_min x scale (the configured lr still drives the digital parameters: biases, LayerNorms...).
  With Lion's trust ratio the per-tensor gain becomes a whole number of pulses,
  clamp(round(lr_eff / pulse step), 1, max_pulses).
  Lion's decoupled weight decay is not in the signs: the chip writes it as pulses toward zero
  (`AnalogChip.write(decay=...)`), as the digital twin applies it.
* Any other optimizer (or 'quantized'/'ideal' writes): the optimizer's digital step is computed,
  weight decay included, and its change of each held matrix is written through the chip
  (stochastically rounded to pulses, or exact).

Norm caps and spectral projections do not apply to held matrices: the devices' bounds do.
"""
from __future__ import annotations

import copy

import torch

from analog_ep.circuit.dynamics import CircuitConfig, CircuitTerm
from analog_ep.circuit.energy import EnergyConfig, StepCost, settle_cost, write_cost
from analog_ep.circuit.measure import SettleConfig, circuit_ep_gradient, settle
from analog_ep.hardware.chip import AnalogChip, ChipConfig
from analog_ep.model.base import EquilibriumModel
from analog_ep.train.optim import Lion
from analog_ep.train.twin import DigitalTwin, StepRecord

#: Offset of the evaluation generators' seed from the twin's (see `AnalogTwin.evaluate`).
EVALUATION_SEED = 0x5EED_E7A1


class AnalogTwin(DigitalTwin):
    """A `DigitalTwin` whose model's weight matrices live on an `AnalogChip`.

    Without a `circuit` the relaxation is the digital Euler loop with every product on the chip,
    and a step's `settle_time` and `energy` are None (nothing physical was simulated); with one,
    each phase is a measured settle of the circuit (see `analog_ep.circuit.measure`), and each
    step reports its physical settle time and estimated energy.
    """

    def __init__(self, model: EquilibriumModel, chip_config: ChipConfig, *args, circuit: CircuitConfig | None = None,
                 settle: SettleConfig | None = None, energy: EnergyConfig | None = None, **kwargs):
        kwargs["ema"] = 0.0  # an average of device states is not something a chip can hold
        model = copy.deepcopy(model)  # the twin owns its weights; the caller's model stays digital
        super().__init__(model, *args, **kwargs)
        self.chip = AnalogChip(model, chip_config)
        held = {n for n in self.chip.arrays}
        self.constraints.matrices = [(n, p) for n, p in self.constraints.matrices if n not in held]
        self.current_step = 0
        self.circuit, self.settle_config = circuit, settle or SettleConfig()
        self.energy_config = energy or EnergyConfig()
        self.last_cost: StepCost | None = None

    def step(self, x: torch.Tensor, y: torch.Tensor, step: int) -> StepRecord:
        if self.circuit is None:
            record = super().step(x, y, step)
            record.pulses = self.chip.last_pulses
            return record
        self.current_step = step
        result = circuit_ep_gradient(self.model, x, y, self.circuit, self.settle_config, self.ep_config,
                                     self.generator)
        res = result.free.residual
        skipped = self.stab.gate > 0 and res > self.stab.gate
        grads = {} if skipped else result.grads
        with torch.no_grad():
            x_in = self.model.drive(x)
        # The stabilisers run on the digital co-processor at the sampled free state.
        lam = self.stabilize(grads, x_in, result.free.sample, result.free.sample, res, skipped, step)
        norm = self._apply(grads)
        cost = StepCost()
        g_total = self.chip.total_conductance(self.energy_config.g_max)
        nodes = result.free.sample.numel()
        points = result.phases["nudged"]["points"]
        lockin = self.settle_config.lockin
        settle_cost(cost, self.energy_config, g_total, result.free.settle_time, 1, nodes * lockin)
        settle_cost(cost, self.energy_config, g_total, result.nudged.settle_time, points, nodes * points * lockin)
        write_cost(cost, self.energy_config, self.chip.last_pulses, self.chip.last_rounds)
        self.last_cost = cost
        evals = result.free.force_evals + result.nudged.force_evals * points
        return StepRecord(result.loss, res, evals, norm, lam, skipped, cost.settle_s, cost.energy_j,
                          result.free.verdict, self.chip.last_pulses)

    @torch.no_grad()
    def evaluate(self, batches) -> float:
        """Mean loss at the sampled free state of each batch (the circuit's own settles when set).

        Evaluation draws its read noise and circuit noise from generators of its own, seeded
        afresh for every evaluation from the twin's seed: it never moves the training streams (so
        how often a run evaluates leaves training bit-identical), and every evaluation sees the
        same noise realisation (a function of the weights alone, like the fixed batches).
        """
        seed = self.generator.initial_seed() + EVALUATION_SEED
        training_noise = self.chip.noise
        self.chip.noise = training_noise.fork(torch.Generator().manual_seed(seed))
        try:
            if self.circuit is None:
                return super().evaluate(batches)
            generator = torch.Generator().manual_seed(seed + 1)
            total = 0.0
            for x, y in batches:
                x_in = self.model.drive(x)
                term = CircuitTerm(lambda z: self.model.force(z, x_in), self.circuit)
                free = settle(term, term.initial(self.model.initial_state(x_in)), self.settle_config, generator)
                total += float(self.model.loss(free.sample, y))
            return total / len(batches)
        finally:
            self.chip.noise = training_noise

    def _update(self) -> None:
        """Write the loaded gradients' update: the held matrices through the chip, the rest digitally."""
        held = {n: p for n, p in self.model.named_parameters() if self.chip.holds(n)}
        if isinstance(self.optimizer, Lion) and self.chip.config.write == "sign_pulse":
            updates = self.optimizer.sign_updates()
            on_chip = {n: updates.pop(p) for n, p in held.items() if p in updates}
            self.optimizer.step(updates=updates)  # digital parameters only; the momentum of all
            deltas = {n: -u * lr for n, (u, lr) in on_chip.items()}
            counts = None
            if self.optim_config.trust_ratio:
                counts = {n: max(1, round(lr / self.chip.step_size[n])) for n, (_, lr) in on_chip.items()}
            group_of = {p: g for g in self.optimizer.param_groups for p in g["params"]}
            decay = {n: group_of[p]["lr"] * group_of[p]["weight_decay"] for n, p in held.items()
                     if n in on_chip and group_of[p]["weight_decay"] > 0}
            self.chip.last_pulses = self.chip.write(deltas, self.current_step, counts, decay)
        else:
            before = {n: p.detach().clone() for n, p in held.items()}
            self.optimizer.step()
            deltas = {n: p.detach() - before[n] for n, p in held.items()}
            self.chip.last_pulses = self.chip.write(deltas, self.current_step)  # refresh() mirrors tiles
        self.constraints.apply()
        self.scheduler.step()

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The digital state plus the chip's (`AnalogChip.state_dict`: every device's state and
        step sizes, the read-noise and cycle-noise generators). Device-to-device variation and
        mismatch are rebuilt from the chip seed. With `chip.cycle_noise: seeded` a resumed twin
        continues bit for bit; with 'aihwkit' its later cycle noise is a fresh draw."""
        state = super().state_dict()
        state["chip"] = self.chip.state_dict()
        state["schedule"] = self.chip.schedule_state()  # for `analog-ep export` (read only there)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.chip.load_state_dict(state["chip"])

