"""The analog twin: the same training step, with the weights on a simulated chip.

`AnalogTwin` is a `DigitalTwin` with two components swapped (`analog_ep.train.backend`): it relaxes
on the chip - every weight product through the chip's periphery, and with a circuit every phase a
measured settle (`CircuitBackend`) - and the co-processor's linear algebra reads the chip's
effective conductances (reads='chip'); and it writes through the devices (`ChipWriter`):

* Lion with 'sign_pulse' writes: each held matrix receives Lion's sign update as at most one
  fixed-amplitude pulse per device, so its effective learning rate is the pulse step
  dw_min x scale (the configured lr still drives the digital parameters: biases, LayerNorms...).
  With Lion's trust ratio the per-tensor gain becomes a whole number of pulses,
  clamp(round(lr_eff / pulse step), 1, max_pulses).
* Any other optimizer (or 'quantized'/'ideal' writes): the optimizer's digital step is computed,
  and its change of each held matrix is written through the chip (rounded to pulses, or exact).

Norm caps and spectral projections do not apply to held matrices: the devices' bounds do.
"""
from __future__ import annotations

import copy


from analog_ep.circuit.dynamics import CircuitConfig
from analog_ep.circuit.energy import EnergyConfig
from analog_ep.circuit.measure import SettleConfig
from analog_ep.hardware.chip import AnalogChip, ChipConfig
from analog_ep.model.base import EquilibriumModel
from analog_ep.train.backend import CircuitBackend, DigitalBackend
from analog_ep.train.optim import Lion
from analog_ep.train.twin import DigitalTwin


class ChipWriter:
    """Writes an update through the chip (see module docstring); `pulses` and `rounds` are this
    step's (0 until something is written)."""

    def __init__(self, chip: AnalogChip):
        self.chip = chip
        self.pulses = self.rounds = 0

    def begin(self) -> None:
        self.pulses = self.rounds = self.chip.last_pulses = self.chip.last_rounds = 0

    def write(self, twin: DigitalTwin) -> None:
        """The loaded gradients' update: the held matrices through the chip, the rest digitally."""
        chip, optimizer, step = self.chip, twin.optimizer, twin.current_step
        held = {n: p for n, p in twin.model.named_parameters() if chip.holds(n)}
        if isinstance(optimizer, Lion) and chip.config.write == "sign_pulse":
            updates = optimizer.sign_updates()
            on_chip = {n: updates.pop(p) for n, p in held.items() if p in updates}
            optimizer.apply_sign_updates(updates)  # digital parameters only
            optimizer.update_momentum()
            deltas = {n: -u * lr for n, (u, lr) in on_chip.items()}
            counts = None
            if twin.optim_config.trust_ratio:
                counts = {n: max(1, round(lr / chip.step_size[n])) for n, (_, lr) in on_chip.items()}
            chip.last_pulses = chip.write(deltas, step, counts)
        else:
            before = {n: p.detach().clone() for n, p in held.items()}
            optimizer.step()
            deltas = {n: p.detach() - before[n] for n, p in held.items()}
            chip.last_pulses = chip.write(deltas, step)  # refresh() mirrors the tiles
        self.pulses, self.rounds = chip.last_pulses, chip.last_rounds

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What the tiles hold (conductances in model units) and the pulses sent.

        Device-to-device variation is rebuilt from the chip seed; the cycle-to-cycle noise of the
        pulses after a resume is a fresh draw (aihwkit keeps its device RNG internal).
        """
        return {"tiles": {n: a.read() for n, a in self.chip.arrays.items()}, "pulses": self.chip.pulses}

    def load_state_dict(self, state: dict) -> None:
        for name, weights in state["tiles"].items():
            self.chip.arrays[name].set(weights)
        self.chip.refresh()


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
        chip = AnalogChip(model, chip_config)
        if circuit is None:
            backend = DigitalBackend(relax_config, ep_config, reads="chip")
        else:
            backend = CircuitBackend(circuit, settle or SettleConfig(), energy or EnergyConfig(), ep_config,
                                     reads="chip", load=chip.load)
        super().__init__(model, relax_config, ep_config, *args, backend=backend, writer=ChipWriter(chip), **kwargs)
        self.chip = chip
        held = set(chip.arrays)
        self.constraints.matrices = [(n, p) for n, p in self.constraints.matrices if n not in held]
