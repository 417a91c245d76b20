"""The relaxation as a physical circuit: node dynamics, settles, measured EP."""

from dataclasses import dataclass, field

from analog_ep.circuit.dynamics import CircuitConfig
from analog_ep.circuit.energy import EnergyConfig
from analog_ep.circuit.measure import SettleConfig


@dataclass
class CircuitFile:
    """What a `circuits/*.yaml` file holds: the node dynamics, the settle/sampling protocol, and
    the energy constants of the periphery."""

    circuit: CircuitConfig = field(default_factory=CircuitConfig)
    """Node dynamics (kind, tau, integrator, noise, amplifier pole, rails)."""
    settle: SettleConfig = field(default_factory=SettleConfig)
    """Settle criterion and node sampling (ADC, lock-in)."""
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    """Energy and latency constants."""


def load_circuit(path: str) -> CircuitFile:
    """Read and validate a circuit file (one-line ConfigError naming file and key on problems)."""
    from analog_ep.config import merge, read_yaml

    return merge(CircuitFile(), read_yaml(path, "circuit file"), str(path))
