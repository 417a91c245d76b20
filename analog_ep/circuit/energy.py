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
* writing: e_pulse per pulse sent; t_pulse per pulse round (arrays are written in parallel);
* the update's reads, by who computes the update (`chip.learning`):
  - 'coprocessor' (`readout_cost`): the co-processor knows every conductance because the chip
    reads every device once per step - row by row, each row driven for one conversion while its
    columns convert in parallel, the arrays side by side:
        E_readout = e_adc x devices + V_read^2 x G_total x t_adc
                    (+ optical: e_detector x devices + e_modulator x rows),
        t_readout = t_adc x (rows of the tallest array);
  - 'local' (`update_read_cost`): no device is read alone, but the estimator's weight products
    are reads through the tiles: the vector-field gradient reads every array forward and
    transposed once, and each Jacobian product of the AEP correction reads every array once,
    forward (J v) or transposed (J^T u), for every token vector:
        conversions = vectors x (cols x (1 + jvp) + rows x (1 + vjp)), jvp = vjp = products / 2,
        E = e_adc x conversions (+ optical: e_detector x conversions + e_modulator per input),
        t = t_adc x (2 + products) (the token vectors' converters work in parallel, as when
            sampling the nodes; the products one after another).
  The stabilisers' products (the Jacobian penalty's) are not counted in either mode.
* the write controller's reads (`controller_read_cost`: write-verify, weight decay's reads), each
  a read of one array row by row, every device converted once:
        E = (e_adc + e_detector) x devices read,  t = t_adc x rows read (one array after another).

Latency = settle times + sampling times + update reads + write rounds (one after another).

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
    readout_j: float = 0.0
    """Reading every device once (chip.learning: coprocessor): the co-processor's knowledge."""
    update_read_j: float = 0.0
    """The estimator's reads through the tiles (chip.learning: local)."""
    controller_read_j: float = 0.0
    """The write controller's reads (write-verify, weight decay), `controller_read_cost`."""
    settle_s: float = 0.0
    adc_s: float = 0.0
    write_s: float = 0.0
    readout_s: float = 0.0
    update_read_s: float = 0.0
    controller_read_s: float = 0.0

    @property
    def energy_j(self) -> float:
        return (self.read_j + self.laser_j + self.modulator_j + self.detector_j + self.adc_j + self.write_j
                + self.readout_j + self.update_read_j + self.controller_read_j)

    @property
    def latency_s(self) -> float:
        return (self.settle_s + self.adc_s + self.write_s + self.readout_s + self.update_read_s
                + self.controller_read_s)

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
    devices: int = 0
    """Weights held (one per device, or per differential pair, each read by one conversion)."""
    tallest: int = 0
    """Rows of the tallest held array (a row-by-row readout of the arrays side by side)."""


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


def controller_read_cost(cost: StepCost, config: EnergyConfig, devices: int, rows: int) -> None:
    """Add the write controller's reads of this step: `devices` conversions over `rows` row reads
    (module docstring)."""
    cost.controller_read_j += (config.e_adc + config.e_detector) * devices
    cost.controller_read_s += config.t_adc * rows


def readout_cost(cost: StepCost, config: EnergyConfig, load: ChipLoad) -> None:
    """Add reading every device once, row by row (chip.learning: coprocessor; module docstring)."""
    cost.readout_j += ((config.e_adc + config.e_detector) * load.devices + config.e_modulator * load.rows
                       + config.v_read ** 2 * load.conductance * config.t_adc)
    cost.readout_s += config.t_adc * load.tallest


def update_read_cost(cost: StepCost, config: EnergyConfig, load: ChipLoad, vectors: int, products: int) -> None:
    """Add the estimator's reads through the tiles (chip.learning: local; module docstring):
    `vectors` token vectors, `products` Jacobian products of the AEP correction."""
    conversions = vectors * (load.cols + load.rows) * (1 + products / 2)
    inputs = vectors * (load.rows + load.cols) * (1 + products / 2)  # each read drives the other side's lines
    cost.update_read_j += (config.e_adc + config.e_detector) * conversions + config.e_modulator * inputs
    cost.update_read_s += config.t_adc * (2 + products)
