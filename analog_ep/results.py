"""What a finished (or stopped) run directory says: one summary shared by `sweep` and `compare`.

`summarize_run(run_dir)` reads run.h5 (and nothing else): the resolved config, the run status,
per twin its validation curves (every metric the file holds under `/twins/<twin>/val/`: `loss`,
and `accuracy` for classification runs), its training curve, and for the analog twin pulses,
energy and latency per step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import yaml

from analog_ep.errors import AnalogEPError, ConfigError
from analog_ep.run.status import read_status


def best(metric: str, values: np.ndarray) -> float:
    """The best value of a validation metric: the maximum of an accuracy, the minimum otherwise."""
    if len(values) == 0:
        return math.nan
    return float(np.max(values) if "acc" in metric else np.min(values))


@dataclass
class TwinSummary:
    """One twin of one run."""

    val_step: np.ndarray
    """Steps at which the twin was evaluated."""
    val: dict[str, np.ndarray]
    """Validation metric name (loss, accuracy...) -> values at val_step."""
    train_step: np.ndarray
    """Every training step."""
    train_loss: np.ndarray
    """Training loss at every step."""
    pulses: int = 0
    """Device pulses written over the run (analog twin)."""
    energy_per_step: float = math.nan
    """Mean estimated energy of a training step (J; analog twin on a circuit)."""
    latency_per_step: float = math.nan
    """Mean estimated latency of a training step (s; analog twin on a circuit)."""

    def final(self, metric: str) -> float:
        values = self.val.get(metric, ())
        return float(values[-1]) if len(values) else math.nan

    def best(self, metric: str) -> float:
        return best(metric, self.val.get(metric, np.zeros(0)))


@dataclass
class RunSummary:
    """One run directory, as read from its run.h5."""

    path: Path
    config: dict
    """The resolved configuration (nested mapping, as in config.yaml)."""
    status: str
    reason: str
    steps_done: int
    wall_s: float
    """Training wall time (s) over all invocations; NaN for run.h5 files that predate it."""
    unigram_entropy: float
    """Cross-entropy of the best unigram model of the validation text (nats): a model at or above
    it has learned nothing from context. NaN when the run did not record it."""
    twins: dict[str, TwinSummary] = field(default_factory=dict)

    @property
    def metrics(self) -> list[str]:
        """Validation metrics recorded by any twin (loss first)."""
        names = {m for t in self.twins.values() for m in t.val}
        return sorted(names, key=lambda m: (m != "loss", m))

    def gap(self, metric: str = "loss") -> float:
        """Final analog minus final digital validation metric (NaN without both twins)."""
        if "analog" not in self.twins or "digital" not in self.twins:
            return math.nan
        return self.twins["analog"].final(metric) - self.twins["digital"].final(metric)

    def learns_nothing(self) -> bool:
        """The analog twin (else the first twin) ends at chance: see `learns_nothing`."""
        twin = self.twins.get("analog") or next(iter(self.twins.values()), None)
        return twin is not None and learns_nothing(twin.final("loss"), twin.final("accuracy"), self.unigram_entropy)


def learns_nothing(loss: float, accuracy: float, entropy: float) -> bool:
    """Whether a final validation result is at chance. A language model: its loss is at or above
    the unigram entropy H (nothing learned from context). A classifier (a finite `accuracy`): its
    accuracy is at or below exp(-H), H the entropy of the class prior - 1/K for K balanced classes
    (the digits' stratified split: 0.100), the accuracy of guessing."""
    if math.isfinite(accuracy):
        return accuracy <= math.exp(-entropy) + 1e-12
    return loss >= entropy


def _series(group: h5py.Group, key: str, dtype=np.float64) -> np.ndarray:
    return group[key][()].astype(dtype) if key in group else np.zeros(0, dtype)


def summarize_run(run_dir) -> RunSummary:
    """Read a run directory's run.h5; a one-line ConfigError if it is not a run directory."""
    run_dir = Path(run_dir)
    path = run_dir / "run.h5"
    if not path.is_file():
        raise ConfigError("run", str(run_dir), "no run.h5 here", "pass a run directory written by analog-ep run")
    status, reason = read_status(run_dir)
    try:
        with h5py.File(path, "r") as f:
            config = yaml.safe_load(str(f.attrs.get("config", ""))) or {}
            summary = RunSummary(run_dir, config, status, reason, int(f.attrs.get("steps_done", 0)),
                                 float(f.attrs.get("wall_s", math.nan)),
                                 float(f.attrs.get("unigram_entropy", math.nan)))
            for name, g in f.get("twins", {}).items():
                val = g.get("val", {})
                twin = TwinSummary(_series(g, "val/step", np.int64),
                                   {k: val[k][()].astype(np.float64) for k in val if k != "step"},
                                   _series(g, "train/step", np.int64), _series(g, "train/loss"))
                if "pulses" in g:
                    twin.pulses = int(g["pulses"][()].sum())
                for key, attr in (("energy", "energy_per_step"), ("latency_s", "latency_per_step")):
                    values = _series(g, key)
                    if len(values):
                        setattr(twin, attr, float(values.mean()))
                summary.twins[name] = twin
    except OSError as err:
        raise ConfigError("run", str(run_dir), f"run.h5 is not readable HDF5 ({err})",
                          "the run was cut off before its first checkpoint; run it again") from None
    if math.isnan(summary.unigram_entropy) and summary.twins:  # run.h5 from before the attribute
        summary.unigram_entropy = _unigram_entropy(config)
    return summary


def _unigram_entropy(config: dict) -> float:
    from analog_ep.config import RunConfig, merge
    from analog_ep.data.text import CharCorpus

    try:
        cfg = merge(RunConfig(), config, "run.h5")
        return CharCorpus.from_config(cfg.data).unigram_entropy("val")
    except (AnalogEPError, OSError):  # an old or foreign config, a corpus gone: the threshold is unknown
        return math.nan
