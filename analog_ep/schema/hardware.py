"""Schema of the chip: its devices, periphery, tiling and writes (`analog_ep.hardware` builds it).

The device table names every aihwkit model usable by name without importing aihwkit, so that
listing and loading configurations stays fast; `DeviceConfig` imports aihwkit only when it checks
parameter overrides or builds a device.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
from dataclasses import dataclass, field

from analog_ep.errors import check

WRITES = ("sign_pulse", "quantized", "mixed_precision", "transfer", "ideal", "outer_product")
#: Who computes the update (`ChipConfig.learning`).
LEARNING = ("coprocessor", "local")
LOCAL_UPDATES = ("rank2", "naive")
PROGRAMS = ("ideal", "verify")
CYCLE_NOISE = ("seeded", "aihwkit")
NOISE_MANAGEMENT = ("abs_max", "none")

#: aihwkit presets usable by name: device models fitted to published measurements.
#: name -> (class in `aihwkit.simulator.presets.devices`, what it models).
PRESET_DEVICES = {
    "ReRamES": ("ReRamESPresetDevice", "HfO2 ReRAM, exponential-step fit to Gong et al., Nat. Commun. 2018"),
    "ReRamSB": ("ReRamSBPresetDevice", "HfO2 ReRAM, soft-bounds fit to Gong et al., Nat. Commun. 2018"),
    "PCM": ("PCMPresetDevice", "Ge2Sb2Te5 phase-change memory, Nandakumar et al., Front. Neurosci. 2020 "
            "(one-sided: differential pairs)"),
    "EcRam": ("EcRamPresetDevice", "Li-ion ECRAM, linear-step fit to Tang et al., IEDM 2018"),
    "EcRamMO": ("EcRamMOPresetDevice", "metal-oxide ECRAM, linear-step fit to Kim et al., IEDM 2019"),
    "Capacitor": ("CapacitorPresetDevice", "capacitor cell with leakage, linear-step fit to Li et al., VLSI 2018"),
    "Idealized": ("IdealizedPresetDevice", "constant steps, ~10000 states, no asymmetry spread "
                  "(Gokmen & Vlasov 2016, Rasch et al. 2019)"),
    "GokmenVlasov": ("GokmenVlasovPresetDevice", "constant steps with the device specification of Gokmen & "
                     "Vlasov, Front. Neurosci. 2016"),
    "ReRamArrayOM": ("ReRamArrayOMPresetDevice", "ReRAM array, optimized material, soft bounds with a "
                     "reference device, Gong & Rasch et al., IEDM 2022"),
    "ReRamArrayHfO2": ("ReRamArrayHfO2PresetDevice", "ReRAM array, baseline HfO2, soft bounds with a "
                       "reference device, Gong & Rasch et al., IEDM 2022"),
}
#: aihwkit base device models, configured through `overrides`.
#: name -> (class in `aihwkit.simulator.configs`, its update rule).
BASE_DEVICES = {
    "ConstantStep": ("ConstantStepDevice", "the same step everywhere up to hard bounds"),
    "LinearStep": ("LinearStepDevice", "a step that changes linearly with the weight (gamma_up, gamma_down)"),
    "SoftBounds": ("SoftBoundsDevice", "a step that falls linearly to zero at the bounds"),
    "ExpStep": ("ExpStepDevice", "a step that is an exponential function of the weight"),
    "PowStep": ("PowStepDevice", "a step that is a power of the distance to the bound"),
    "PiecewiseStep": ("PiecewiseStepDevice", "a step interpolated on given nodes over the range"),
}
DEVICE_NAMES = (*PRESET_DEVICES, *BASE_DEVICES)


def aihwkit_device_class(name: str) -> type:
    """The aihwkit class behind a device name (imports aihwkit)."""
    if name in PRESET_DEVICES:
        return getattr(importlib.import_module("aihwkit.simulator.presets.devices"), PRESET_DEVICES[name][0])
    return getattr(importlib.import_module("aihwkit.simulator.configs"), BASE_DEVICES[name][0])


def did_you_mean(key: str, options) -> str:
    """A fix for a misspelt name: the closest option, or the list of them."""
    close = difflib.get_close_matches(key, list(options), n=1)
    return f"did you mean '{close[0]}'?" if close else f"one of: {', '.join(options)}"


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


@dataclass
class DeviceConfig:
    """Which device every crossbar cell is, and how it varies."""

    model: str = "ConstantStep"
    """An aihwkit preset (ReRamES, ReRamSB, PCM, EcRam, EcRamMO, Capacitor, Idealized, GokmenVlasov,
    ReRamArrayOM, ReRamArrayHfO2) or base class (ConstantStep, LinearStep, SoftBounds, ExpStep,
    PowStep, PiecewiseStep); `analog-ep list devices` lists them with the shipped device files."""
    overrides: dict = field(default_factory=dict)
    """aihwkit device parameters to change, e.g. {dw_min: 0.002, dw_min_dtod: 0.1, dw_min_std: 0.3,
    up_down: 0.05, w_max: 1.0, w_min: -1.0}. dw_min: mean step per pulse (tile weight units);
    *_dtod: device-to-device spread (relative); dw_min_std: cycle-to-cycle spread (relative)."""
    differential: bool = False
    """Store each weight on a pair of one-sided devices (aihwkit OneSidedUnitCell): G+ - G-,
    needed for devices that only move one way (e.g. PCM SET pulses)."""

    def __post_init__(self):
        check(self.model in DEVICE_NAMES, "model", self.model, "unknown device",
              did_you_mean(self.model, DEVICE_NAMES))
        check(isinstance(self.overrides, dict), "overrides", self.overrides, "must be a mapping of parameters")
        if not self.overrides:
            return
        cls = aihwkit_device_class(self.model)  # checking parameters needs aihwkit's own defaults
        known = {f.name for f in dataclasses.fields(cls)}
        defaults = cls()
        for key, value in list(self.overrides.items()):
            check(key in known, f"overrides.{key}", value, f"not a parameter of {self.model}",
                  did_you_mean(key, sorted(known)))
            self.overrides[key] = _typed(key, value, getattr(defaults, key))
            if key.endswith(("_std", "_dtod")):  # spreads: aihwkit would silently use |value|
                check(self.overrides[key] >= 0, f"overrides.{key}", value, "must be >= 0 (a standard deviation)",
                      "use 0 for no variation")

    def device(self, construction_seed: int):
        """The aihwkit device with overrides and a construction seed (device-to-device draw)."""
        dev = aihwkit_device_class(self.model)()
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

    def rpu_config(self, construction_seed: int, seeded_noise: bool = False):
        """aihwkit config for one tile: one pulse per device per update round (see
        `analog_ep.hardware.device`).

        `seeded_noise`: build the devices without cycle-to-cycle and write noise, which
        `analog_ep.hardware.cycle.CycleNoise` then realises from a seeded generator.
        """
        from aihwkit.simulator.configs import OneSidedUnitCell, SingleRPUConfig, UnitCellRPUConfig
        from aihwkit.simulator.parameters.enums import PulseType

        dev = self.device(construction_seed)
        if seeded_noise:
            dev.dw_min_std = 0.0
            if hasattr(dev, "write_noise_std"):
                dev.write_noise_std = 0.0
        if self.differential:
            # aihwkit seeds a tile's construction from the top-level device only: a pair needs
            # the seed on the unit cell, else its device-to-device draw changes with every build
            cfg = UnitCellRPUConfig(device=OneSidedUnitCell(unit_cell_devices=[dev],
                                                            construction_seed=construction_seed))
        else:
            cfg = SingleRPUConfig(device=dev)
        cfg.update.pulse_type = PulseType.DETERMINISTIC_IMPLICIT
        cfg.update.desired_bl = 1
        cfg.update.update_bl_management = False
        cfg.update.update_management = False
        cfg.forward.is_perfect = True  # reads go through our periphery model, not aihwkit's forward
        return cfg


@dataclass
class PeripheryConfig:
    """Converters, read noise and static fabrication effects of every crossbar tile."""

    dac_bits: int = 0
    """Input DAC resolution in bits (0: ideal input, neither quantised nor clipped; else >= 2).
    Step 2*dac_bound/(2**dac_bits - 2), aihwkit inp_res = 1/(2**dac_bits - 2)."""
    dac_bound: float = 1.0
    """DAC range: inputs are clipped to +-dac_bound after noise management (normalised units)."""
    adc_bits: int = 0
    """Output ADC resolution in bits (0: ideal output, neither quantised nor clipped; else >= 2).
    Step 2*adc_bound/(2**adc_bits - 2), aihwkit out_res = 1/(2**adc_bits - 2)."""
    adc_bound: float = 12.0
    """ADC range: tile outputs are clipped to +-adc_bound (normalised units: tile weight units times
    noise-managed inputs), aihwkit out_bound."""
    read_noise: float = 0.0
    """Std of additive Gaussian noise on each tile output, before the ADC (normalised units),
    fresh every read: aihwkit out_noise."""
    optical_noise: float = 0.0
    """Multiplicative output noise sigma: every MVM output y -> y * (1 + sigma * N(0, 1)), fresh
    every call, applied to the final model-unit output."""
    weight_bits: int = 0
    """Programmable conductance levels (0: analog continuum; else >= 2): the converters'
    convention, 2**weight_bits - 1 symmetric levels k x step including 0, |k| <= 2**(weight_bits-1) - 1,
    step = max(-w_min, w_max) / (2**(weight_bits-1) - 1), so +-the larger bound is a level; a
    level beyond a device's own bound reads as that bound."""
    mismatch: float = 0.0
    """Static fabrication mismatch sigma: each device reads with gain 1 + sigma * N(0, 1), drawn
    once per chip (dimensionless)."""
    mismatch_clamp: tuple[float, float] = (0.2, 5.0)
    """(low, high) bounds of a mismatch gain; keeps gains positive (a device cannot flip sign)."""
    noise_management: str = "abs_max"
    """'abs_max': each input vector is divided by its max |x| over the tile's rows before the DAC
    and the output multiplied back (aihwkit NoiseManagementType.ABS_MAX); 'none': no scaling."""
    noise_bank: int = 1 << 22
    """Samples in the pre-drawn Gaussian bank that read and optical noise are taken from (a window
    at a random offset per read; 16 MiB at the default). 0: fresh draws on every read, exact but
    about 2x slower for a noisy relaxation. Reads larger than half the bank always draw fresh."""

    def __post_init__(self):
        check(_is_int(self.noise_bank) and self.noise_bank >= 0, "noise_bank", self.noise_bank,
              "must be an integer >= 0", "0 draws fresh noise on every read")
        for key in ("dac_bits", "adc_bits"):
            bits = getattr(self, key)
            check(_is_int(bits) and (bits == 0 or 2 <= bits <= 32), key, bits,
                  "must be 0 (ideal) or an integer in [2, 32]",
                  "use 0 for an ideal converter, or 2 to 32 bits; 1 bit has no step: 2*bound/(2**1-2)")
        check(_is_int(self.weight_bits) and (self.weight_bits == 0 or 2 <= self.weight_bits <= 32), "weight_bits",
              self.weight_bits, "must be 0 (analog) or an integer in [2, 32]",
              "use 0 for a continuum of levels, or 2 to 32 bits; 1 bit gives a single level, 0, in the symmetric convention")
        for key in ("dac_bound", "adc_bound"):
            bound = getattr(self, key)
            check(bound > 0 and bound != float("inf"), key, bound, "must be finite and > 0",
                  "set the bits to 0 for an ideal, unclipped converter")
        for key in ("read_noise", "optical_noise", "mismatch"):
            check(getattr(self, key) >= 0, key, getattr(self, key), "must be >= 0 (a standard deviation)")
        lo_hi = tuple(self.mismatch_clamp)
        check(len(lo_hi) == 2 and 0 <= lo_hi[0] <= 1 <= lo_hi[1] and lo_hi[0] < lo_hi[1], "mismatch_clamp",
              self.mismatch_clamp, "must be (low, high) with 0 <= low <= 1 <= high, low < high")
        self.mismatch_clamp = (float(lo_hi[0]), float(lo_hi[1]))
        check(self.noise_management in NOISE_MANAGEMENT, "noise_management", self.noise_management,
              "unknown noise management", f"use one of {', '.join(NOISE_MANAGEMENT)}")


#: The converter settings a transposed read has of its own (`BackwardPeripheryConfig`); the static
#: fabrication effects (weight levels, mismatch) belong to the devices and are shared.
BACKWARD_FIELDS = ("dac_bits", "dac_bound", "adc_bits", "adc_bound", "read_noise", "optical_noise",
                   "noise_management")


@dataclass
class BackwardPeripheryConfig:
    """Converters and noise of a *transposed* read (through the columns: x @ W^T), as aihwkit
    separates a tile's backward IOParameters from its forward ones.

    Every field left unset (null) is the forward read's (`ChipConfig.periphery`): the default is a
    periphery whose transposed reads use the same converters as its forward reads.
    `resolve(forward)` gives the complete `PeripheryConfig` of transposed reads; the devices'
    static effects (weight_bits, mismatch and its clamp) and the noise bank are always the
    forward section's (the same devices are read either way)."""

    dac_bits: int | None = None
    """Drivers of the column lines in a transposed read (bits; 0 ideal; null: periphery.dac_bits)."""
    dac_bound: float | None = None
    """Their input range after noise management (null: periphery.dac_bound)."""
    adc_bits: int | None = None
    """Converters of the row lines in a transposed read (bits; 0 ideal; null: periphery.adc_bits)."""
    adc_bound: float | None = None
    """Their range (normalised units, null: periphery.adc_bound), aihwkit backward out_bound."""
    read_noise: float | None = None
    """Additive read noise std of a transposed read (null: periphery.read_noise), aihwkit backward
    out_noise."""
    optical_noise: float | None = None
    """Multiplicative noise of a transposed read (null: periphery.optical_noise)."""
    noise_management: str | None = None
    """'abs_max' or 'none' for transposed reads (null: periphery.noise_management)."""

    def __post_init__(self):
        PeripheryConfig(**self.overrides())  # the set fields obey the forward section's rules

    def overrides(self) -> dict:
        """The fields set here (the rest follow the forward read)."""
        return {k: getattr(self, k) for k in BACKWARD_FIELDS if getattr(self, k) is not None}

    def resolve(self, forward: PeripheryConfig) -> PeripheryConfig:
        """The whole periphery of a transposed read: `forward` with the fields set here."""
        return dataclasses.replace(forward, **self.overrides())


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class VerifyConfig:
    """Write-verify: after each training write, read the written devices back through the
    periphery and re-pulse those that missed, as chips do against write noise.

    The controller keeps the nominal value of every held weight (one digital word per weight:
    its programmed target plus every pulse it sent, times the nominal pulse step). After a write
    it reads each array it pulsed (`AnalogChip.read_matrix`: one read per input row, with the
    converters and read noise), and every device pulsed in this write whose read is further than
    `tolerance` nominal pulse steps from its nominal value gets one pulse toward it; read and
    repeat, at most `rounds` times. A device that read within the tolerance once is done: a
    later noisy read does not pulse it again (which would redraw its write noise). Verify pulses
    are pulses (ledger, energy, schedule); its reads are counted with the controller's other
    reads."""

    rounds: int = 0
    """Re-pulse rounds after each write (0: no verification)."""
    tolerance: float = 8.0
    """A written device passes once its read is within this many nominal pulse steps of its
    nominal value. Below half the read's resolution (an ADC step in tile units over dw_min) it
    can only pass by chance."""

    def __post_init__(self):
        check(_is_int(self.rounds) and self.rounds >= 0, "verify.rounds", self.rounds, "must be an integer >= 0",
              "0 turns write-verify off")
        check(self.tolerance > 0, "verify.tolerance", self.tolerance, "must be > 0 (nominal pulse steps)")


@dataclass
class TransferConfig:
    """`write: transfer`, the Tiki-Taka family (Gokmen & Haensch, Front. Neurosci. 2020; TTv2:
    Gokmen, Front. Artif. Intell. 2021; chopped TTv2: Rasch et al., Nat. Commun. 2024).

    Every held matrix W (the slow array, the one the relaxation reads) gets a fast array A of the
    same device, shape and scale, programmed to 0 and never read by the relaxation. Each step the
    optimizer's update of W is written onto A instead, in whole pulses rounded stochastically (A
    filters the devices' cycle noise: its pulses average, and a soft-bounds device's symmetry
    point pulls A back to 0). Every `period` steps the controller reads `rows` rows of A through
    the periphery (one read each, cycling through the rows), times each column's chopper sign,
    adds `lr` times the read to a digital buffer H per weight (TTv2's hidden matrix: one word per
    weight), and pulses W where H holds whole nominal steps (at most `max_pulses`), taking them out
    of H. With `chopper` > 0 each column's sign flips with that probability after its rows have
    all been transferred once, and the update is written onto A times the signs: a bias of A
    (its asymmetry, its symmetry point off 0) then averages out of H."""

    period: int = 1
    """Steps between transfers (1: every step)."""
    rows: int = 1
    """Rows of A read (and transferred) per transfer."""
    lr: float = 1.0
    """Transfer learning rate: the fraction of a read of A added to H."""
    chopper: float = 0.0
    """Probability that a column's chopper sign flips at the end of each pass over the rows
    (0: no chopper, the sign stays +1)."""

    def __post_init__(self):
        for key in ("period", "rows"):
            check(_is_int(getattr(self, key)) and getattr(self, key) >= 1, f"transfer.{key}", getattr(self, key),
                  "must be an integer >= 1")
        check(self.lr > 0, "transfer.lr", self.lr, "must be > 0")
        check(0.0 <= self.chopper <= 1.0, "transfer.chopper", self.chopper, "must lie in [0, 1] (a probability)")


@dataclass
class ChipConfig:
    """Devices, periphery, tiling and write scheme of one chip."""

    device: DeviceConfig = field(default_factory=DeviceConfig)
    """The crossbar cell (aihwkit device model and its variation)."""
    periphery: PeripheryConfig = field(default_factory=PeripheryConfig)
    """Converters, noise, quantisation and mismatch of every read."""
    periphery_backward: BackwardPeripheryConfig = field(default_factory=BackwardPeripheryConfig)
    """Converters and noise of transposed reads (x @ W^T, through the columns: local learning's
    error reads, and the relaxation's own transposed reads in modes that have them); each field
    left null is the forward `periphery`'s."""
    learning: str = "coprocessor"
    """Who computes the update from the measured free and nudged states.
    'coprocessor': a digital co-processor that knows every conductance - once per step it reads
    every device (`AnalogChip.refresh`; its energy and time are counted, `StepCost.readout_j`)
    and computes the vector-field gradient, the AEP correction and the stabilisers' products
    with those effective conductances, exactly. 'local': nothing in the update path reads a
    conductance - every weight-dependent product of the estimator is a read through the tiles
    and their periphery (forward reads, transposed reads with `periphery_backward`), the digital
    side sees only sampled vectors and elementwise slopes, and each matrix's update is the outer
    product of its measured input and the error read back to its output (`analog_ep.linear`,
    reads='tiles'). Weight decay is written by the chip's controller (owed fraction, pulses
    toward zero), and Lion's trust ratio (which needs ||W||) is refused."""
    tile_rows: int = 512
    """Crossbar rows (inputs) per tile."""
    tile_cols: int = 512
    """Crossbar columns (outputs) per tile."""
    range_factor: float = 2.0
    """The devices' symmetric conductance range covers +-range_factor x max|W0| of each matrix:
    headroom for learning, traded against resolution (one pulse = dw_min x that scale)."""
    readout_on_tiles: bool = False
    """Also put the readout W_head on a crossbar."""
    embeddings_on_tiles: bool = False
    """Also put the token and position embeddings on crossbars (read as one-hot rows)."""
    program: str = "ideal"
    """Initial programming: 'ideal' (set exactly) or 'verify' (pulse, then read through the
    periphery, until every device reads within tolerance)."""
    program_tolerance: float = 0.5
    """Program-and-verify stops pulsing a device once its read is within this many nominal pulse
    steps of its target."""
    program_rounds: int = 200
    """Program-and-verify round cap."""
    write: str = "sign_pulse"
    """'sign_pulse' (one pulse per device per round, Lion: a hybrid, Lion's momentum is one digital
    word per weight held beside the array), 'quantized' (the optimizer's update in whole pulses,
    stochastically rounded with the chip's own seeded generator), 'ideal' (weights set exactly: the
    comparison baseline) or 'outer_product' (the in-memory rank-1 update of analog SGD with
    `learning: local`: stochastic pulse trains on rows and columns, each device pulsed by their
    coincidences, no per-weight digital work; see `analog_ep.hardware.outer`). Weight decay is
    written as pulses in every mode."""
    local_update: str = "rank2"
    """How `learning: local` writes an MLP crossbar's change (r+ r+'^T - r- r-'^T) / (2 beta) as rank-1
    updates: 'rank2' = [(r+ - r-)(r+' + r-')^T + (r+ + r-)(r+' - r-')^T] / (4 beta), two updates per
    sample each with one small (difference) factor; 'naive' = the two large outer products with
    opposite signs. Equal in expectation; with stochastic pulse trains the spread of each is
    proportional to |x| |d| of its factors, so 'rank2' is far less noisy (README: measured)."""
    pulse_bits: int = 31
    """outer_product: the most slots BL of one sample's stochastic pulse trains (aihwkit
    desired_bl); with `bl_management` fewer are used when the update needs fewer."""
    bl_management: bool = True
    """outer_product: per sample, BL = min(pulse_bits, ceil(lr max|x| max|d| / dw)) (aihwkit
    update_bl_management): short trains for small updates."""
    update_management: bool = True
    """outer_product: balance row and column probabilities per sample, p_i = |x_i| sqrt(k max|d| /
    max|x|), q_j = |d_j| sqrt(k max|x| / max|d|), k = lr / (dw BL) (aihwkit update_management);
    off: p_i = |x_i| sqrt(k), q_j = |d_j| sqrt(k). Probabilities are clipped at 1."""
    max_pulses: int = 8
    """Cap on pulses per device per step for 'quantized' and 'mixed_precision' writes and
    trust-ratio gains."""
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    """Write-verify after each pulsed training write (`VerifyConfig`; off by default)."""
    transfer: TransferConfig = field(default_factory=TransferConfig)
    """The fast array and its transfers, for `write: transfer` (`TransferConfig`)."""
    seed: int = 0
    """Chip seed: device-to-device variation and mismatch are drawn once from it."""
    cycle_noise: str = "seeded"
    """Where the devices' cycle-to-cycle noise (dw_min_std) and write noise (write_noise_std) are
    drawn: 'seeded' (from a generator seeded by `seed`, with aihwkit's statistics: a run re-runs
    and resumes bit for bit; see analog_ep.hardware.cycle) or 'aihwkit' (aihwkit's own C++
    generator, seeded from the clock: every run differs)."""

    def __post_init__(self):
        if isinstance(self.device, dict):
            self.device = DeviceConfig(**self.device)
        if isinstance(self.periphery, dict):
            self.periphery = PeripheryConfig(**self.periphery)
        if isinstance(self.periphery_backward, dict):
            self.periphery_backward = BackwardPeripheryConfig(**self.periphery_backward)
        if isinstance(self.verify, dict):
            self.verify = VerifyConfig(**self.verify)
        if isinstance(self.transfer, dict):
            self.transfer = TransferConfig(**self.transfer)
        check(self.learning in LEARNING, "learning", self.learning, "unknown learning mode",
              f"use one of {', '.join(LEARNING)}")
        check(self.write in WRITES, "write", self.write, "unknown write scheme", f"use one of {', '.join(WRITES)}")
        check(self.local_update in LOCAL_UPDATES, "local_update", self.local_update, "unknown local update form",
              f"use one of {', '.join(LOCAL_UPDATES)}")
        check(self.write != "outer_product" or self.learning == "local", "write", self.write,
              "outer-product writes need the measured rates of local learning", "set chip.learning: local")
        check(_is_int(self.pulse_bits) and self.pulse_bits >= 1, "pulse_bits", self.pulse_bits,
              "must be an integer >= 1", "aihwkit's default is 31")
        check(self.program in PROGRAMS, "program", self.program, "unknown programming",
              f"use one of {', '.join(PROGRAMS)}")
        for key in ("tile_rows", "tile_cols"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1", "e.g. 512 (a 512x512 array)")
        check(self.range_factor > 0, "range_factor", self.range_factor, "must be > 0")
        check(self.max_pulses >= 1, "max_pulses", self.max_pulses, "must be >= 1")
        check(self.verify.rounds == 0 or self.write not in ("ideal", "outer_product"), "verify.rounds",
              self.verify.rounds, f"write-verify checks pulsed writes, not '{self.write}' ones",
              "use write: sign_pulse, quantized or mixed_precision, or verify.rounds: 0")
        check(self.cycle_noise in CYCLE_NOISE, "cycle_noise", self.cycle_noise, "unknown noise source",
              f"use one of {', '.join(CYCLE_NOISE)}")
