"""sweep.h5: one row per point, the sweep's definition and where it ran.

Layout (format version 1):

    /           attrs: format ('analog-ep sweep'), version, definition (the resolved sweep as YAML:
                chip, overrides, seed_keys, base = the resolved config without swept values, grid,
                seeds), keys (JSON list of the swept keys), command (the command line), backend,
                and the provenance of `analog_ep.run.provenance` (package versions, git commit, threads)
    /points     a table (HDF5 compound dataset), one row per point in grid order, seeds innermost:
        point                     the run directory under points/
        <swept key>               one column per swept key (its full dotted name), the point's value
        seed                      seed offset s (every seed of the run is offset by s)
        status                    completed, diverged, interrupted, failed, killed, missing, running
                                  or pending (not started yet)
        reason                    one line for anything but completed
        attempts                  times the sweep started the point
        steps_done                training steps the run finished
        final_val_<m>_<twin>      validation metric m (loss; accuracy for classification runs) at
        best_val_<m>_<twin>       the last evaluation, and its best value (min loss, max accuracy)
        gap                       final analog minus final digital validation loss (nats)
        gap_<m>                   the same for another metric m
        unigram_entropy           the validation text's unigram cross-entropy: a model at or above
                                  it has learned nothing from context
        learns_nothing            final analog validation loss >= unigram_entropy (classifiers:
                                  accuracy <= chance, exp(-entropy of the class prior))
        pulses                    device pulses written by the analog twin over the run
        energy_per_step_j         mean estimated energy of a step (J)
        latency_per_step_s        mean estimated latency of a step (s)
        wall_s                    the run's training wall time (s, over all attempts)
        process_s                 wall time the sweep spent on the point's processes (s, with
                                  start-up and failed attempts)
    Strings are UTF-8 (h5py returns them as bytes: `.decode()`); a missing number is NaN.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np

from analog_ep.atomic import atomic_write
from analog_ep.sweep.grid import SweepDefinition, value_text

FORMAT = "analog-ep sweep"
FORMAT_VERSION = 1
STR = h5py.string_dtype("utf-8")


def point_rows(sweep: SweepDefinition, states: dict) -> list[dict]:
    """One dict per point (grid order): the columns of /points, from each point's state and run
    summary (`runner.PointState`)."""
    rows = []
    for point in sweep.points:
        state = states[point.name]
        row = {"point": point.name, **dict(point.values), "seed": point.seed, "status": state.status,
               "reason": state.reason, "attempts": state.attempts}
        s = state.summary
        row["steps_done"] = s.steps_done if s is not None else 0
        twins = list(s.twins) if s is not None else list(sweep.base.train.twins)
        metrics = s.metrics if s is not None else ["loss"]
        for metric in metrics or ["loss"]:
            for twin in twins:
                t = s.twins.get(twin) if s is not None else None
                row[f"final_val_{metric}_{twin}"] = t.final(metric) if t is not None else math.nan
                row[f"best_val_{metric}_{twin}"] = t.best(metric) if t is not None else math.nan
            gap = s.gap(metric) if s is not None else math.nan
            row["gap" if metric == "loss" else f"gap_{metric}"] = gap
        analog = s.twins.get("analog") if s is not None else None
        row["unigram_entropy"] = s.unigram_entropy if s is not None else math.nan
        row["learns_nothing"] = bool(s is not None and s.learns_nothing())
        row["pulses"] = analog.pulses if analog is not None else 0
        row["energy_per_step_j"] = analog.energy_per_step if analog is not None else math.nan
        row["latency_per_step_s"] = analog.latency_per_step if analog is not None else math.nan
        row["wall_s"] = s.wall_s if s is not None else math.nan
        row["process_s"] = state.process_s
        rows.append(row)
    return rows


def _column_dtype(values) -> np.dtype:
    values = [v for v in values if v is not None]
    if values and all(isinstance(v, bool) for v in values):
        return np.dtype(bool)
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return np.dtype(np.int64)
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return np.dtype(np.float64)
    return STR


def table(sweep: SweepDefinition, rows: list[dict]) -> np.ndarray:
    """The rows as a structured array (columns in first-seen order; a row without a column gets NaN)."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    dtypes = {c: (_column_dtype(sweep.grid[c]) if c in sweep.grid else _column_dtype([r.get(c) for r in rows]))
              for c in columns}
    out = np.zeros(len(rows), dtype=[(c, dtypes[c]) for c in columns])
    for i, row in enumerate(rows):
        for c in columns:
            v = row.get(c)
            if dtypes[c] == STR:
                out[i][c] = v if isinstance(v, str) else ("" if v is None else value_text(v))
            elif dtypes[c] == np.float64:
                out[i][c] = math.nan if v is None else v
            elif v is not None:
                out[i][c] = v
    return out


def write_sweep_h5(path: Path, sweep: SweepDefinition, rows: list[dict], attrs: dict) -> None:
    data = table(sweep, rows)

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            f.attrs.update({"format": FORMAT, "version": FORMAT_VERSION, "definition": sweep.to_yaml(),
                            "keys": json.dumps(list(sweep.grid)), **attrs})
            f.create_dataset("points", data=data)

    atomic_write(path, write)


def read_sweep_h5(path: Path) -> tuple[dict, list[dict]]:
    """(root attributes, rows as dicts with str values decoded)."""
    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        data = f["points"][()] if "points" in f else np.zeros(0)
    rows = []
    for record in data:
        rows.append({name: (record[name].decode() if isinstance(record[name], bytes) else record[name].item())
                     for name in data.dtype.names})
    return attrs, rows
