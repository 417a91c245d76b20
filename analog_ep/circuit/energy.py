"""Energy and latency of a training step, from circuit and device parameters.

Model (per step; every term is reported separately):

* read energy of a settle: every crossbar conducts while the nodes settle,
      E_read = V_read^2 * sum_ij G_ij * t_settle,   G_ij = |w_ij| / w_max * G_max,
  an upper bound (all rows driven at full scale) summed over the chip's arrays;
* sampling: E_adc per conversion x (nodes sampled x lock-in samples), per phase;
* writing: E_pulse per pulse x pulses sent; latency pulse rounds x t_pulse;
* latency: settle times + one ADC conversion time per sample + write rounds.

The defaults are order-of-magnitude values for a ReRAM crossbar with 8-bit SAR ADCs; a chip
file overrides them with its own.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from analog_ep.schema.circuit import EnergyConfig  # noqa: F401  (re-exported)


@dataclass
class StepCost:
    """Energy (J) and latency (s) of one training step, by origin."""

    read_j: float = 0.0
    adc_j: float = 0.0
    write_j: float = 0.0
    settle_s: float = 0.0
    adc_s: float = 0.0
    write_s: float = 0.0

    @property
    def energy_j(self) -> float:
        return self.read_j + self.adc_j + self.write_j

    @property
    def latency_s(self) -> float:
        return self.settle_s + self.adc_s + self.write_s

    def as_dict(self) -> dict:
        return {**asdict(self), "energy_j": self.energy_j, "latency_s": self.latency_s}


def settle_cost(cost: StepCost, config: EnergyConfig, conductance: float, settle_time: float, copies: int,
                samples: int) -> None:
    """Add one phase: `copies` circuits settling side by side (nudge points), `samples` ADC readings."""
    cost.read_j += config.v_read ** 2 * conductance * settle_time * copies
    cost.settle_s += settle_time
    cost.adc_j += config.e_adc * samples
    cost.adc_s += config.t_adc * (1 if samples else 0)


def write_cost(cost: StepCost, config: EnergyConfig, pulses: int, rounds: int) -> None:
    cost.write_j += config.e_pulse * pulses
    cost.write_s += config.t_pulse * rounds
