"""The configuration schema: every section of a run as a dataclass, importable without torch or aihwkit.

One module per pipeline stage; the modules that run a stage import their config from here (and
re-export it, so `from analog_ep.hardware.chip import ChipConfig` keeps working). `analog_ep.config`
joins the sections into `RunConfig` and reads YAML onto them. Every default lives in these
dataclasses and nowhere else.
"""
from analog_ep.schema.circuit import CircuitConfig, CircuitFile, EnergyConfig, MonitorConfig, SettleConfig
from analog_ep.schema.data import DATA_KINDS, MODEL_DATA, DigitsDataConfig, TextDataConfig
from analog_ep.schema.estimator import EPConfig
from analog_ep.schema.hardware import ChipConfig, DeviceConfig, PeripheryConfig
from analog_ep.schema.model import MODEL_KINDS, MLPConfig, TransformerConfig
from analog_ep.schema.relax import RelaxConfig
from analog_ep.schema.train import OptimizerConfig, ScheduleConfig, StabilizerConfig, TrainConfig

__all__ = ["DATA_KINDS", "MODEL_DATA", "MODEL_KINDS", "DigitsDataConfig", "MLPConfig", "ChipConfig", "CircuitConfig", "CircuitFile", "DeviceConfig", "EPConfig", "EnergyConfig", "MonitorConfig",
           "OptimizerConfig", "PeripheryConfig", "RelaxConfig", "ScheduleConfig", "SettleConfig", "StabilizerConfig",
           "TextDataConfig", "TrainConfig", "TransformerConfig"]
