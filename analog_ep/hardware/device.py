"""Device models: aihwkit's pulsed-update physics, configured by name.

A device is an aihwkit preset (measured devices: ReRAM, PCM, ECRAM, capacitor...) or one of its
base classes with parameter overrides. Each crossbar tile is built with its own construction
seed derived from the chip seed, so device-to-device variation is drawn once per chip and is
identical every time the same chip is built.

Updates are configured so that `tile.update(eye(rows), -S)` sends exactly one pulse to every
device with S = +-1 (DETERMINISTIC_IMPLICIT pulses, bit length 1, no update or bit-line
management, learning rate = dw_min): the device decides the realised change (step size,
up/down asymmetry, bounds, cycle-to-cycle noise).
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
from dataclasses import dataclass, field

from aihwkit.simulator.configs import (ConstantStepDevice, ExpStepDevice, LinearStepDevice, OneSidedUnitCell,
                                       PiecewiseStepDevice, PowStepDevice, SingleRPUConfig, SoftBoundsDevice,
                                       UnitCellRPUConfig)
from aihwkit.simulator.parameters.enums import PulseType
from aihwkit.simulator.presets import devices as presets

from analog_ep.errors import ConfigError, check

#: aihwkit presets: device models fitted to published measurements (see each class's docstring).
PRESETS = {
    "ReRamES": presets.ReRamESPresetDevice,
    "ReRamSB": presets.ReRamSBPresetDevice,
    "PCM": presets.PCMPresetDevice,
    "EcRam": presets.EcRamPresetDevice,
    "EcRamMO": presets.EcRamMOPresetDevice,
    "Capacitor": presets.CapacitorPresetDevice,
    "Idealized": presets.IdealizedPresetDevice,
    "GokmenVlasov": presets.GokmenVlasovPresetDevice,
    "ReRamArrayOM": presets.ReRamArrayOMPresetDevice,
    "ReRamArrayHfO2": presets.ReRamArrayHfO2PresetDevice,
}
#: aihwkit base device classes, to be configured by overrides.
BASE_DEVICES = {
    "ConstantStep": ConstantStepDevice,
    "LinearStep": LinearStepDevice,
    "SoftBounds": SoftBoundsDevice,
    "ExpStep": ExpStepDevice,
    "PowStep": PowStepDevice,
    "PiecewiseStep": PiecewiseStepDevice,
}
DEVICES = {**PRESETS, **BASE_DEVICES}


@dataclass
class DeviceConfig:
    """Which device every crossbar cell is, and how it varies."""

    model: str = "ConstantStep"
    """An aihwkit preset (ReRamES, ReRamSB, PCM, EcRam, EcRamMO, Capacitor, Idealized, GokmenVlasov,
    ReRamArrayOM, ReRamArrayHfO2) or base class (ConstantStep, LinearStep, SoftBounds, ExpStep,
    PowStep, PiecewiseStep)."""
    overrides: dict = field(default_factory=dict)
    """aihwkit device parameters to change, e.g. {dw_min: 0.002, dw_min_dtod: 0.1, dw_min_std: 0.3,
    up_down: 0.05, w_max: 1.0, w_min: -1.0}. dw_min: mean step per pulse (tile weight units);
    *_dtod: device-to-device spread (relative); dw_min_std: cycle-to-cycle spread (relative)."""
    differential: bool = False
    """Store each weight on a pair of one-sided devices (aihwkit OneSidedUnitCell): G+ - G-,
    needed for devices that only move one way (e.g. PCM SET pulses)."""

    def __post_init__(self):
        check(self.model in DEVICES, "model", self.model, "unknown device", _did_you_mean(self.model, DEVICES))
        check(isinstance(self.overrides, dict), "overrides", self.overrides, "must be a mapping of parameters")
        known = {f.name for f in dataclasses.fields(DEVICES[self.model])}
        defaults = DEVICES[self.model]()
        for key, value in list(self.overrides.items()):
            check(key in known, f"overrides.{key}", value, f"not a parameter of {self.model}",
                  _did_you_mean(key, sorted(known)))
            self.overrides[key] = _typed(key, value, getattr(defaults, key))

    def device(self, construction_seed: int):
        """The aihwkit device with overrides and a construction seed (device-to-device draw)."""
        dev = DEVICES[self.model]()
        for key, value in self.overrides.items():
            setattr(dev, key, value)
        dev.construction_seed = construction_seed
        return dev

    @property
    def dw_min(self) -> float:
        """Nominal step of one pulse, in tile weight units."""
        return float(self.device(0).dw_min)

    @property
    def bounds(self) -> tuple[float, float]:
        """Nominal (w_min, w_max) of a device, in tile weight units."""
        dev = self.device(0)
        return float(dev.w_min), float(dev.w_max)

    def rpu_config(self, construction_seed: int):
        """aihwkit config for one tile: one pulse per device per update round."""
        dev = self.device(construction_seed)
        if self.differential:
            # The unit cell draws its pair from its own construction seed (0 = a fresh random draw).
            cfg = UnitCellRPUConfig(device=OneSidedUnitCell(unit_cell_devices=[dev], construction_seed=construction_seed))
        else:
            cfg = SingleRPUConfig(device=dev)
        cfg.update.pulse_type = PulseType.DETERMINISTIC_IMPLICIT
        cfg.update.desired_bl = 1
        cfg.update.update_bl_management = False
        cfg.update.update_management = False
        cfg.forward.is_perfect = True  # reads go through our periphery model, not aihwkit's forward
        return cfg


def _typed(key: str, value, default):
    """An override value checked against the type of aihwkit's default for that parameter."""
    if isinstance(default, bool):
        check(isinstance(value, bool), f"overrides.{key}", value, "expected true or false")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1.0e6 without an exponent sign as text
            try:
                value = float(value)
            except ValueError:
                pass
        check(isinstance(value, (int, float)) and not isinstance(value, bool), f"overrides.{key}", value,
              "expected a number")
        return type(default)(value) if isinstance(default, float) or float(value).is_integer() else value
    return value


def construction_seed(chip_seed: int, array: str, tile: tuple[int, int]) -> int:
    """A stable 31-bit seed per (chip, matrix, tile): same chip -> same device draw."""
    digest = hashlib.sha256(f"{chip_seed}/{array}/{tile[0]},{tile[1]}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _did_you_mean(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f"did you mean '{close[0]}'?" if close else f"one of: {', '.join(options)}"


def check_device_config(cfg: DeviceConfig) -> DeviceConfig:
    """Build one device to surface aihwkit's own validation as a ConfigError."""
    try:
        cfg.rpu_config(0)
    except (TypeError, ValueError) as err:
        raise ConfigError("overrides", cfg.overrides, f"aihwkit rejected the device: {err}") from None
    return cfg
