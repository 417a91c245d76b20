"""The analog twin: the same training step, with the weights on a simulated chip.

Relaxations run on the crossbars (every weight product through the chip's periphery), the EP
estimate is formed from those settles, and the update is written back through the devices:

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

import torch

from analog_ep.hardware.chip import AnalogChip, ChipConfig
from analog_ep.model.base import EquilibriumModel
from analog_ep.train.optim import Lion, clip_gradients
from analog_ep.train.twin import DigitalTwin


class AnalogTwin(DigitalTwin):
    """A `DigitalTwin` whose model's weight matrices live on an `AnalogChip`."""

    def __init__(self, model: EquilibriumModel, chip_config: ChipConfig, *args, **kwargs):
        kwargs["ema"] = 0.0  # an average of device states is not something a chip can hold
        model = copy.deepcopy(model)  # the twin owns its weights; the caller's model stays digital
        super().__init__(model, *args, **kwargs)
        self.chip = AnalogChip(model, chip_config)
        held = {n for n in self.chip.arrays}
        self.constraints.matrices = [(n, p) for n, p in self.constraints.matrices if n not in held]
        self.current_step = 0

    def _apply(self, grads: dict[str, torch.Tensor]) -> float:
        if not grads or not all(bool(torch.isfinite(g).all()) for g in grads.values()):
            return float("nan") if grads else 0.0
        named = dict(self.model.named_parameters())
        self.optimizer.zero_grad(set_to_none=True)
        for name, g in grads.items():
            named[name].grad = g.detach().clone()
        norm = clip_gradients(self.params, self.optim_config.grad_clip)
        held = {n: p for n, p in named.items() if self.chip.holds(n)}
        if isinstance(self.optimizer, Lion) and self.chip.config.write == "sign_pulse":
            updates = self.optimizer.sign_updates()
            on_chip = {n: updates.pop(p) for n, p in held.items() if p in updates}
            self.optimizer.apply_sign_updates(updates)  # digital parameters only
            self.optimizer.update_momentum()
            deltas = {n: -u * lr for n, (u, lr) in on_chip.items()}
            counts = None
            if self.optim_config.trust_ratio:
                counts = {n: max(1, round(lr / self.chip.step_size[n])) for n, (_, lr) in on_chip.items()}
            self.chip.write(deltas, self.current_step, counts)
        else:
            before = {n: p.detach().clone() for n, p in held.items()}
            self.optimizer.step()
            deltas = {n: p.detach() - before[n] for n, p in held.items()}
            self.chip.write(deltas, self.current_step)  # refresh() mirrors the tiles into the params
        self.constraints.apply()
        self.scheduler.step()
        return norm
