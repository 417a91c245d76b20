"""Device models: aihwkit's pulsed-update physics, configured by name.

A device is an aihwkit preset (measured devices: ReRAM, PCM, ECRAM, capacitor...) or one of its
base classes with parameter overrides (`DeviceConfig`, in `analog_ep.schema.hardware`, names
them all without importing aihwkit). Each crossbar tile is built with its own construction
seed derived from the chip seed, so device-to-device variation is drawn once per chip and is
identical every time the same chip is built.

Updates are configured so that `tile.update(eye(rows), -S)` sends exactly one pulse to every
device with S = +-1 (DETERMINISTIC_IMPLICIT pulses, bit length 1, no update or bit-line
management, learning rate = dw_min): the device decides the realised change (step size,
up/down asymmetry, bounds, cycle-to-cycle noise).
"""
from __future__ import annotations

import hashlib

from analog_ep.errors import ConfigError
from analog_ep.schema.hardware import (BASE_DEVICES as BASE_DEVICE_NAMES, PRESET_DEVICES,  # noqa: F401
                                       DeviceConfig, aihwkit_device_class)

#: aihwkit presets: device models fitted to published measurements (see each class's docstring).
PRESETS = {name: aihwkit_device_class(name) for name in PRESET_DEVICES}
#: aihwkit base device classes, to be configured by overrides.
BASE_DEVICES = {name: aihwkit_device_class(name) for name in BASE_DEVICE_NAMES}
DEVICES = {**PRESETS, **BASE_DEVICES}


def construction_seed(chip_seed: int, array: str, tile: tuple[int, int]) -> int:
    """A stable 31-bit seed per (chip, matrix, tile): same chip -> same device draw."""
    digest = hashlib.sha256(f"{chip_seed}/{array}/{tile[0]},{tile[1]}".encode()).digest()
    return (int.from_bytes(digest[:4], "little") & 0x7FFFFFFF) or 1  # aihwkit reads 0 as "seed from the clock"


def check_device_config(cfg: DeviceConfig) -> DeviceConfig:
    """Build one device to surface aihwkit's own validation as a ConfigError."""
    try:
        cfg.rpu_config(0)
    except (TypeError, ValueError) as err:
        raise ConfigError("overrides", cfg.overrides, f"aihwkit rejected the device: {err}") from None
    return cfg
