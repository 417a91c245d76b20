"""analog-ep: Equilibrium Propagation on simulated analog hardware, beside an exact digital twin.

Pipeline (one sub-package per stage):
    model -> relax -> estimator -> (hardware) -> train -> cli
"""
from analog_ep.errors import AnalogEPError, ConfigError, ConvergenceError

__version__ = "0.1.0"
__all__ = ["AnalogEPError", "ConfigError", "ConvergenceError", "__version__"]
