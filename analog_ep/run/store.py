"""The run directory: config.yaml, run.h5, curves.png, the resumable state and the best states.

run.h5 (format version 3; version 2 had no accuracy series and its config no model/data kind,
version 1 no status, provenance or step-0 evaluation; every version-2 dataset is read the same
way in version 3):

    /                  attrs: config (the resolved YAML text), version, steps_done,
                       status (running | completed | diverged | interrupted | failed),
                       status_reason (one line, may be empty),
                       provenance: analog_ep_version, torch_version, aihwkit_version,
                       numpy_version, h5py_version, python_version, platform, git_commit,
                       git_dirty, threads,
                       wall_s (training wall time over all invocations, s),
                       unigram_entropy (of the validation text, nats; on classification data
                       the entropy of the held-out class frequencies)
    /twins/<name>/     one group per twin: analog, digital, bptt
        attrs          status (running | completed | diverged), status_reason,
                       diagnosis (one line, when it diverged), best_step, best_val_loss (the state
                       kept in best.pt; -1 and nan before any)
        train/step, train/loss      every step
        val/step, val/loss          step 0, every train.eval_every steps and the last step (same
                                    validation batches for every twin and every evaluation)
        train/accuracy              classification data (digits): fraction of the training batch
                                    predicted right at its free state, every step
        val/accuracy                classification data: fraction of the whole held-out split
                                    predicted right, at every evaluation
        residual                    free-phase residual, every step
        settle_time, energy         analog twin: physical settle time (s) and energy (J) per step
        latency_s                   analog twin: estimated latency per step (s): settles, sampling, writes
        update_cos                  analog twin, when enabled: cos(analog update, digital EP gradient
                                    at the analog weights) per step
        pulses                      analog twin: pulses written per step
    /pulses            the analog twin's pulse ledger (see analog_ep.hardware.ledger)

The other files: `state.pt` (everything a resume needs, `STATE_VERSION`), `best.pt` (per twin,
its state at its lowest validation loss: {twin: {step, val_loss, state}}), `curves.png`,
`config.yaml`, and for a diverged twin `diagnosis_<twin>.json`. Every file is written to a
temporary name and moved into place (`analog_ep.atomic`), so a crash or a kill never leaves a
half-written file behind, and earlier results are kept.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from analog_ep.atomic import atomic_write
from analog_ep.hardware.ledger import PulseLedger
from analog_ep.run.provenance import stamp

FORMAT_VERSION = 3
STATE_VERSION = 2


class History:
    """Per-twin series of a run, kept in memory and written whole to run.h5."""

    def __init__(self, twins):
        self.series: dict[str, dict[str, list]] = {name: {} for name in twins}

    def add(self, twin: str, key: str, value) -> None:
        self.series[twin].setdefault(key, []).append(value)

    def last(self, twin: str, key: str, default=None):
        values = self.series[twin].get(key)
        return values[-1] if values else default

    def state_dict(self) -> dict:
        return self.series

    def load_state_dict(self, state: dict) -> None:
        self.series = state


def write_h5(path: Path, config_text: str, history: History, ledger: PulseLedger | None, steps_done: int,
             status: str = "running", reason: str = "", twin_attrs: dict[str, dict] | None = None,
             attrs: dict | None = None) -> None:
    """Write run.h5 whole (atomically). `twin_attrs`: per twin, the attributes of `/twins/<twin>`;
    `attrs`: further root attributes (wall_s, unigram_entropy)."""
    def write(tmp):
        with h5py.File(tmp, "w") as f:
            f.attrs["config"] = config_text
            f.attrs["version"] = FORMAT_VERSION
            f.attrs["steps_done"] = steps_done
            f.attrs["status"] = status
            f.attrs["status_reason"] = reason
            stamp(f.attrs)
            f.attrs.update(attrs or {})
            for twin, series in history.series.items():
                group = f.create_group(f"twins/{twin}")
                group.attrs.update((twin_attrs or {}).get(twin, {}))
                for key, values in series.items():
                    dtype = np.int64 if key.endswith("step") or key == "pulses" else np.float64
                    group.create_dataset(key.replace(".", "/"), data=np.asarray(values, dtype=dtype))
            if ledger is not None:
                ledger.to_hdf5(f.create_group("pulses"))

    atomic_write(path, write)


def save_state(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))
