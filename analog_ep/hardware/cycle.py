"""Cycle-to-cycle and write noise from our own seeded generator, so noisy chips re-run bit for bit.

aihwkit draws a device's cycle-to-cycle noise (`dw_min_std`) and its read-visible write noise
(`write_noise_std`) from a C++ generator seeded from the clock: no Python call seeds it and
`dump_extra()` does not hold its state, so a run with either noise differs from its re-run and
from its own resume. `CycleNoise` realises both from a `torch.Generator` instead, with the same
statistics:

* aihwkit builds the device with `dw_min_std = 0` and `write_noise_std = 0` (so its update is
  deterministic), and before each pulse round the step sizes of every device (the hidden
  parameters `dwmin_up`, `dwmin_down`) are set to their nominal values times a factor f drawn per
  device and per round. Every aihwkit update rule we support is linear in the step size, so the
  realised step becomes the device's noiseless step times f, and f reproduces the noise law:

  ================================  ===========================================  ====================
  device (update rule)              aihwkit's noisy step                         factor f
  ================================  ===========================================  ====================
  ConstantStep, PowStep,            s(w) (1 + std xi)                            1 + std xi
  PiecewiseStep, ExpStep,
  SoftBoundsReference (mult_noise)
  LinearStep, SoftBounds            (slope w + dw)(1 + std xi)                   1 + std xi, applied
  (mult_noise: true)                                                             to slope and dw
  LinearStep (mult_noise: false)    slope w + dw (1 + std xi)                    1 + std xi
  SoftBoundsReference (additive)    dw (1 - a(w) + std xi)                       1 + std xi / (1 - a)
  ExpStep with dw_min_std_add or    s + std (|s| + add + slope |w|) xi           1 + std xi (|s| + add
  _slope (PCM)                                                                   + slope |w|) / |s|
  ================================  ===========================================  ====================

  (xi ~ N(0, 1); s the noiseless step at the device's state w; a = (w + ref) / bound.) The
  last two are state dependent: f is computed from each device's state before the round. Where
  the noiseless step is exactly zero (a SoftBoundsReference device sitting on its bound, an
  ExpStep device whose step saturated to 0) no factor can realise aihwkit's purely additive
  excursion: such a device does not move, where aihwkit would move it inward by the clipped
  noise (on average 0.4 std dw). This is the one known difference.
* Write noise (aihwkit: a device's visible weight is its state plus write_noise_std x dw_min x
  xi, redrawn whenever the device is pulsed and, with `apply_write_noise_on_set`, when it is
  set) is kept as a visible offset beside the tile and redrawn the same way. One-sided devices
  in a differential pair with write noise are not supported (each device of the pair has its
  own offset inside aihwkit); use `cycle_noise: aihwkit` for them.

One factor is drawn for every device of a tile (both devices of a pair) in every round, whether
or not the device is pulsed, so the generator's position depends only on the rounds sent. Its
state is part of the chip's state, so a resumed run continues the same stream.
"""
from __future__ import annotations

import torch
from aihwkit.simulator.configs import (ExpStepDevice, LinearStepDevice, SoftBoundsDevice,
                                       SoftBoundsReferenceDevice)

from analog_ep.errors import ConfigError

#: The noise laws of the module docstring's table.
SCALE, SCALE_SLOPE, REFERENCE_ADD, EXP_COMPLEX = "scale", "scale_slope", "reference_add", "exp_complex"


def noise_law(device) -> str:
    """Which factor realises this aihwkit device's cycle-to-cycle noise (module docstring)."""
    if isinstance(device, (LinearStepDevice, SoftBoundsDevice)):
        return SCALE_SLOPE if device.mult_noise else SCALE
    if isinstance(device, SoftBoundsReferenceDevice) and not device.mult_noise:
        return REFERENCE_ADD
    if isinstance(device, ExpStepDevice) and (device.dw_min_std_add != 0 or device.dw_min_std_slope != 0):
        return EXP_COMPLEX
    return SCALE


class CycleNoise:
    """The seeded cycle-to-cycle and write noise of one device model (see module docstring).

    `device` is the aihwkit device *with* its noise parameters (what the user configured);
    the tiles are built without them (`DeviceConfig.rpu_config(..., seeded_noise=True)`).
    """

    def __init__(self, device, differential: bool, generator: torch.Generator):
        self.device, self.differential, self.generator = device, differential, generator
        self.std = float(device.dw_min_std)
        self.law = noise_law(device)
        self.write_std = float(getattr(device, "write_noise_std", 0.0)) * float(device.dw_min)
        self.write_on_set = bool(getattr(device, "apply_write_noise_on_set", False))
        if self.write_std > 0 and differential:
            raise ConfigError("device.overrides.write_noise_std", getattr(device, "write_noise_std"),
                              "write noise on a differential pair has no seeded realisation",
                              "set it to 0, or chip.cycle_noise: aihwkit (not reproducible)")

    @property
    def active(self) -> bool:
        return self.std > 0 or self.write_std > 0

    # ---- cycle-to-cycle: step-size factors before a round ----------------------------------------
    def _rows(self, names: list[str]) -> list[dict[str, int]]:
        """Per device of a cell (one, or two for a pair): row index of each hidden parameter."""
        subs = ["_0", "_1"] if self.differential else [""]
        return [{key: names.index(key + s) for key in
                 ("dwmin_up", "dwmin_down", "slope_up", "slope_down", "max_bound", "min_bound",
                  "reference", "hidden_weights") if key + s in names} for s in subs]

    def before_round(self, tile, nominal: torch.Tensor) -> None:
        """Draw one factor per device and set the scaled step sizes on the tile.

        `nominal` is the tile's hidden parameters as built (`tile.tile.get_hidden_parameters()`
        before any round): the step sizes and slopes every round's factors scale.
        """
        if self.std <= 0:
            return
        rows = self._rows(tile.tile.get_hidden_parameter_names())
        hidden = tile.tile.get_hidden_parameters()  # (parameters, out, in)
        # float32 like aihwkit's own parameters (torch's float64 CPU sampler is several times slower)
        xi = torch.randn((len(rows), *hidden.shape[1:]), generator=self.generator)
        state_dependent = self.law in (REFERENCE_ADD, EXP_COMPLEX)
        weights = tile.tile.get_weights() if state_dependent and not self.differential else None
        for k, r in enumerate(rows):
            w = hidden[r["hidden_weights"]] if self.differential and state_dependent else weights
            f_up, f_down = self._factors(xi[k], w, nominal, r)
            for key, f in (("dwmin_up", f_up), ("dwmin_down", f_down), ("slope_up", f_up), ("slope_down", f_down)):
                if key in r and (key.startswith("dwmin") or self.law == SCALE_SLOPE):
                    torch.mul(nominal[r[key]], f, out=hidden[r[key]])
        tile.tile.set_hidden_parameters(hidden)

    def _factors(self, xi: torch.Tensor, w: torch.Tensor, nominal: torch.Tensor, r: dict[str, int]):
        """(f_up, f_down) per device: the multiplicative factors of the module docstring's table."""
        std = self.std
        if self.law in (SCALE, SCALE_SLOPE):
            f = 1.0 + std * xi
            return f, f
        up, down = nominal[r["dwmin_up"]].abs(), nominal[r["dwmin_down"]].abs()
        hi, lo = nominal[r["max_bound"]], nominal[r["min_bound"]]
        if self.law == REFERENCE_ADD:  # step dw (1 - a), a = (w + ref) / bound (0 for a bound of the wrong sign)
            wr = w + nominal[r["reference"]]
            base_up = 1.0 - torch.where(hi > 0, wr / hi, 0.0)
            base_down = 1.0 - torch.where(lo < 0, wr / lo, 0.0)
            noise = std * xi
            return _ratio(noise, base_up), _ratio(noise, base_down)
        dev = self.device  # EXP_COMPLEX: s = y(z) dw, z = 2 w / (max - min) a + b
        z = 2.0 * w / (hi - lo).clamp_min(1e-30) * dev.a + dev.b
        s_up = (1.0 - dev.A_up * torch.exp(dev.gamma_up * z)).clamp_min(0.0) * up
        s_down = (1.0 - dev.A_down * torch.exp(-dev.gamma_down * z)).clamp_min(0.0) * down
        extra = dev.dw_min_std_add + dev.dw_min_std_slope * w.abs()
        noise = std * xi
        return _ratio(noise * (s_up + extra), s_up), _ratio(noise * (s_down + extra), s_down)

    # ---- write noise: the visible offset ---------------------------------------------------------
    def offset_after_round(self, offset: torch.Tensor | None, block: torch.Tensor) -> torch.Tensor | None:
        """The visible write-noise offset (out, in) after a round whose signs (in, out) are `block`."""
        if self.write_std <= 0:
            return offset
        fresh = torch.randn(block.shape[::-1], generator=self.generator) * self.write_std
        pulsed = block.t() != 0
        base = torch.zeros_like(fresh) if offset is None else offset
        return torch.where(pulsed, fresh, base)

    def offset_after_set(self, shape: tuple[int, int]) -> torch.Tensor | None:
        """The visible offset (out, in) after an ideal write of every device."""
        if self.write_std <= 0:
            return None
        if not self.write_on_set:
            return torch.zeros(shape)
        return torch.randn(shape, generator=self.generator) * self.write_std


def _ratio(numerator: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """1 + numerator / base, and exactly 1 where the noiseless step `base` is zero (no factor can
    realise a purely additive excursion there: see the module docstring)."""
    safe = base != 0
    return torch.where(safe, numerator / torch.where(safe, base, 1.0) + 1.0, 1.0)
