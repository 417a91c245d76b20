"""The analog twin: the same training step, with the weights on a simulated chip.

`AnalogTwin` is a `DigitalTwin` with two components swapped (`analog_ep.train.backend`): it relaxes
on the chip - every weight product through the chip's periphery, and with a circuit every phase a
measured settle (`CircuitBackend`) - and the estimator's linear algebra reads the chip's
effective conductances (reads='chip', `chip.learning: coprocessor`) or only reads through its
tiles (reads='tiles', `chip.learning: local`); and it writes through the devices (`ChipWriter`):

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
* `learning: local` (the equilibrium MLP): the update of each crossbar comes from its two layers'
  measured rates at the free and nudged equilibria (`analog_ep.estimator.local`), no conductance
  read and no backward pass. With 'outer_product' writes it is written as rank-1 pulse-train
  updates (`AnalogChip.write_outer`): plain SGD at the scheduled lr of each matrix, no per-weight
  digital work, so neither momentum nor gradient clipping reach the held matrices (the biases,
  digital, take the optimizer's step). With 'ideal' or 'quantized' writes the digital controller
  forms the dense gradient from the same rates and the optimizer steps as above.

With `chip.learning: local` the held matrices are unknown to the writer: the optimizer steps them
from zero (in a parameter group without weight decay), its result is the update, and weight
decay is written by the chip's controller as for Lion's signs (`AnalogChip.write(decay=...)`).

Evaluation draws its read noise and circuit noise from generators of its own (`AnalogTwin.evaluate`).

Norm caps and spectral projections do not apply to held matrices: the devices' bounds do.
"""
from __future__ import annotations

import copy

import torch

from analog_ep.circuit.dynamics import CircuitConfig
from analog_ep.circuit.energy import EnergyConfig
from analog_ep.circuit.measure import SettleConfig
from analog_ep.hardware.chip import AnalogChip, ChipConfig
from analog_ep.model.base import EquilibriumModel
from analog_ep.estimator.local import local_update
from analog_ep.train.backend import CircuitBackend, DigitalBackend
from analog_ep.train.optim import Lion
from analog_ep.train.twin import scaled_groups, DigitalTwin

#: Offset of the evaluation generators' seed from the twin's (see `AnalogTwin.evaluate`).
EVALUATION_SEED = 0x5EED_E7A1


class ChipWriter:
    """Writes an update through the chip (see module docstring); `pulses`, `rounds` and `reads`
    (the controller's row reads and devices converted: write-verify, weight decay) are this
    step's (0 until something is written)."""

    def __init__(self, chip: AnalogChip):
        self.chip = chip
        self.pulses = self.rounds = 0
        self.reads = (0, 0)
        self.terms: dict | None = None  # outer_product: this step's rank-1 terms (`AnalogTwin.ep_grads`)

    def begin(self) -> None:
        self.pulses = self.rounds = self.chip.last_pulses = self.chip.last_rounds = 0
        self.reads = (0, 0)

    def write(self, twin: DigitalTwin) -> None:
        """The loaded gradients' update: the held matrices through the chip, the rest digitally."""
        chip, optimizer, step = self.chip, twin.optimizer, twin.current_step
        reads_before = (chip.reads, chip.read_devices)
        held = {n: p for n, p in twin.model.named_parameters() if chip.holds(n)}
        group_of = {p: g for g in optimizer.param_groups for p in g["params"]}  # each tensor's lr (optim.lr_scale)
        if chip.config.write == "outer_product":
            terms, self.terms = self.terms or {}, None
            optimizer.step()  # the digital parameters: the held matrices have no gradient
            lrs = {n: group_of[p]["lr"] for n, p in held.items()}
            decay = {n: lrs[n] * group_of[p]["weight_decay"] for n, p in held.items()
                     if group_of[p].get("weight_decay", 0) > 0}
            chip.last_pulses = chip.write_outer(terms, lrs, step, decay)
        elif isinstance(optimizer, Lion) and chip.config.write == "sign_pulse":
            # trust_ratio reads ||W||: refused under chip.learning: local (`check_backend`)
            updates = optimizer.sign_updates()
            on_chip = {n: updates.pop(p) for n, p in held.items() if p in updates}
            optimizer.step(updates=updates)  # digital parameters only; the momentum of all
            deltas = {n: -u * lr for n, (u, lr) in on_chip.items()}
            counts = None
            if twin.optim_config.trust_ratio:
                counts = {n: max(1, round(lr / chip.step_size[n])) for n, (_, lr) in on_chip.items()}
            decay = {n: group_of[p]["lr"] * twin.optim_config.weight_decay for n, p in held.items()
                     if n in on_chip and twin.optim_config.weight_decay > 0}
            chip.last_pulses = chip.write(deltas, step, counts, decay)
        elif chip.local:
            # The held matrices are not known: the optimizer steps them from zero (their group has
            # no weight decay), so what it leaves there is the update itself; the controller writes
            # the decay (owed fraction, pulses toward zero).
            with torch.no_grad():
                for p in held.values():
                    p.zero_()
            optimizer.step()
            deltas = {n: p.detach().clone() for n, p in held.items()}
            decay = {n: group_of[p]["lr"] * twin.optim_config.weight_decay for n, p in held.items()} \
                if twin.optim_config.weight_decay > 0 else None
            chip.last_pulses = chip.write(deltas, step, decay=decay)  # refresh() rewrites the mirrors
        else:
            before = {n: p.detach().clone() for n, p in held.items()}
            optimizer.step()
            deltas = {n: p.detach() - before[n] for n, p in held.items()}
            chip.last_pulses = chip.write(deltas, step)  # refresh() mirrors the tiles
        self.pulses, self.rounds = chip.last_pulses, chip.last_rounds
        self.reads = (chip.reads - reads_before[0], chip.read_devices - reads_before[1])

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The chip's state (`AnalogChip.state_dict`: every device's state and step sizes, the
        read-noise and cycle-noise generators, the write controller's), merged into the twin's.
        Device-to-device variation and mismatch are rebuilt from the chip seed. With
        `chip.cycle_noise: seeded` a resumed twin continues bit for bit; with 'aihwkit' its later
        cycle noise is a fresh draw."""
        return {"chip": self.chip.state_dict(),
                "schedule": self.chip.schedule_state()}  # for `analog-ep export` (read only there)

    def load_state_dict(self, state: dict) -> None:
        self.chip.load_state_dict(state["chip"])


class AnalogTwin(DigitalTwin):
    """A `DigitalTwin` whose model's weight matrices live on an `AnalogChip`: it relaxes on the chip
    (and on `circuit`, when given: each phase a measured settle, see `analog_ep.circuit.measure`,
    with each step's physical settle time, energy and latency) and writes through it. Without a
    circuit the relaxation is the digital Euler loop with every product on the chip.
    """

    def __init__(self, model: EquilibriumModel, chip_config: ChipConfig, relax_config, ep_config, *args,
                 circuit: CircuitConfig | None = None, settle: SettleConfig | None = None,
                 energy: EnergyConfig | None = None, **kwargs):
        kwargs["ema"] = 0.0  # an average of device states is not something a chip can hold
        model = copy.deepcopy(model)  # the twin owns its weights; the caller's model stays digital
        self.chip = chip = AnalogChip(model, chip_config)
        reads = "tiles" if chip.local else "chip"
        if circuit is None:
            backend = DigitalBackend(relax_config, ep_config, reads=reads)
        else:
            backend = CircuitBackend(circuit, settle or SettleConfig(), energy or EnergyConfig(), ep_config,
                                     reads=reads, load=chip.load)
        super().__init__(model, relax_config, ep_config, *args, backend=backend, writer=ChipWriter(chip), **kwargs)
        held = set(chip.arrays)
        self.constraints.matrices = [(n, p) for n, p in self.constraints.matrices if n not in held]

    def ep_grads(self, x, y, x_in, free, adjoint) -> dict[str, torch.Tensor]:
        """`learning: local`: the local rule from the measured rates (module docstring); else the
        co-processor's vector-field estimator at the chip's effective conductances."""
        cfg = self.chip.config
        if cfg.learning != "local" or not hasattr(self.model, "local_pairs"):
            # the transformer learning locally: the vector-field estimator with every product a tile
            # read (`reads='tiles'`, `TileProduct`); the co-processor's at the effective conductances
            return super().ep_grads(x, y, x_in, free, adjoint)
        update = local_update(self.model, x_in, free.z, adjoint, self.ep_config, cfg.local_update,
                              self.backend.nudge_gain(y))
        if cfg.write == "outer_product":
            self.writer.terms = update.terms
            return dict(update.biases)
        return update.grads()

    def optimizer_groups(self):
        """Local learning: the held matrices in a group of their own without weight decay (the
        chip's controller writes it, `ChipWriter`); otherwise one group, as the digital twin."""
        if not self.chip.local:
            return super().optimizer_groups()
        held = [p for n, p in self.model.named_parameters() if self.chip.holds(n)]
        ids = {id(p) for p in held}
        rest = [p for p in self.params if id(p) not in ids]
        return (scaled_groups(self.model, rest, self.optim_config)
                + scaled_groups(self.model, held, self.optim_config, weight_decay=0.0))

    @torch.no_grad()
    def evaluate_metrics(self, batches) -> tuple[float, float]:
        """(mean loss, accuracy) at the free phase's evaluated state (the circuit's own settles when set).

        Evaluation draws its read noise and circuit noise from generators of its own, seeded
        afresh for every evaluation from the twin's seed: it never moves the training streams (so
        how often a run evaluates leaves training bit-identical), and every evaluation sees the
        same noise realisation (a function of the weights alone, like the fixed batches).
        """
        seed = self.generator.initial_seed() + EVALUATION_SEED
        training_noise, training_generator = self.chip.noise, self.generator
        self.chip.noise = training_noise.fork(torch.Generator().manual_seed(seed))
        self.generator = torch.Generator().manual_seed(seed + 1)
        try:
            return super().evaluate_metrics(batches)
        finally:
            self.chip.noise, self.generator = training_noise, training_generator
