"""Energy and latency of a training step, from circuit and device parameters.

Model (per step; every term is reported separately in `StepCost`). A phase is one settle of
`copies` circuits side by side (1 for the free phase, the nudge points for a nudged one), lasting
its settle time t_settle plus its lock-in window t_window = (lockin - 1) x lockin_interval:

* crossbar reads: every array conducts while the nodes run,
      E_read = V_read^2 x G_total x (t_settle + t_window) x copies,
  G_total the sum over every device of its conductance, G = g / g_top x g_max (g in tile units,
  g_top the device's top conductance): |w| for a single device, G+ + G- for a differential pair
  (both devices conduct): an upper bound, as if every row were driven at full scale;
* optical banks (loop circuits): the lasers feeding every input waveguide (p_laser each, on for
  t_settle + t_window), one modulation per input value and one detection per output value of
  every pass of the loop ((t_settle + t_window) / pass_time passes, each through every held
  matrix, for every token vector), per copy;
* sampling: e_adc per conversion (nodes x lockin per copy); the conversions of one column run one
  after another, overlapping the lock-in window: (lockin - 1) x max(lockin_interval, t_adc) + t_adc;
* writing: e_pulse per pulse sent; t_pulse per pulse round (arrays are written in parallel).

Latency = settle times + sampling times + write rounds (phases run one after another).

The defaults are order-of-magnitude values for a ReRAM crossbar with SAR ADCs; a circuit file
overrides them with its own (with sources in its comments).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from analog_ep.schema.circuit import EnergyConfig  # noqa: F401  (re-exported)


@dataclass
class StepCost:
    """Energy (J) and latency (s) of one training step, by origin."""

    read_j: float = 0.0
    laser_j: float = 0.0
    modulator_j: float = 0.0
    detector_j: float = 0.0
    adc_j: float = 0.0
    write_j: float = 0.0
    settle_s: float = 0.0
    adc_s: float = 0.0
    write_s: float = 0.0

    @property
    def energy_j(self) -> float:
        return self.read_j + self.laser_j + self.modulator_j + self.detector_j + self.adc_j + self.write_j

    @property
    def latency_s(self) -> float:
        return self.settle_s + self.adc_s + self.write_s

    def as_dict(self) -> dict:
        return {**asdict(self), "energy_j": self.energy_j, "latency_s": self.latency_s}


@dataclass(frozen=True)
class ChipLoad:
    """What the held arrays present to a phase."""

    conductance: float = 0.0
    """G_total (S): every device's conductance summed (pairs: both devices)."""
    rows: int = 0
    """Input lines (rows, waveguides) of every held array, summed."""
    cols: int = 0
    """Output lines (columns, detectors) of every held array, summed."""


def phase_cost(cost: StepCost, config: EnergyConfig, load: ChipLoad, *, settle_time: float, window: float,
               copies: int, nodes: int, lockin: int, lockin_interval: float, passes: float = 0.0,
               vectors: int = 0) -> None:
    """Add one phase: `copies` circuits of `nodes` sampled nodes settling side by side for
    `settle_time` + `window` seconds; `passes` of an optical loop over the banks, for `vectors`
    token vectors per copy (optical terms)."""
    active = settle_time + window
    cost.read_j += config.v_read ** 2 * load.conductance * active * copies
    cost.laser_j += config.p_laser * load.rows * active * copies
    cost.modulator_j += config.e_modulator * load.rows * vectors * passes * copies
    cost.detector_j += config.e_detector * load.cols * vectors * passes * copies
    cost.settle_s += settle_time
    cost.adc_j += config.e_adc * nodes * lockin * copies
    cost.adc_s += (lockin - 1) * max(lockin_interval, config.t_adc) + config.t_adc


def write_cost(cost: StepCost, config: EnergyConfig, pulses: int, rounds: int) -> None:
    cost.write_j += config.e_pulse * pulses
    cost.write_s += config.t_pulse * rounds
