"""The relaxation as a physical circuit: node dynamics, settles, measured EP.

A circuit file (`circuits/*.yaml`, `load_circuit`) holds a `CircuitFile`: the node `dynamics`,
the `settle` protocol and the `energy` constants (schema in `analog_ep.schema.circuit`).
"""
from analog_ep.config import load_circuit
from analog_ep.schema.circuit import CircuitConfig, CircuitFile, EnergyConfig, SettleConfig

__all__ = ["CircuitConfig", "CircuitFile", "EnergyConfig", "SettleConfig", "load_circuit"]
