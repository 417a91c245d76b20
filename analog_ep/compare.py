"""`analog-ep compare`: learning curves of many runs overlaid, and a summary table.

Runs are labelled by what differs between their resolved configs (keys that only restate
another, such as `schedule.total_steps` following `train.steps`, are folded into it; a run
whose config matches another's is labelled by its directory). A sweep directory stands for all
its points.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from analog_ep.atomic import atomic_write
from analog_ep.errors import ConfigError
from analog_ep.results import RunSummary, summarize_run
from analog_ep.sweep.grid import short_keys

LINESTYLES = {"analog": "-", "digital": "--", "bptt": ":"}


def collect_runs(paths) -> list[RunSummary]:
    """Every run directory named, and every point of every sweep directory named."""
    runs = []
    for given in paths:
        path = Path(given)
        if (path / "run.h5").is_file():
            runs.append(summarize_run(path))
        elif (path / "sweep.h5").is_file() or (path / "points").is_dir():
            points = _sweep_points(path)
            if not points:
                raise ConfigError("compare", str(given), "sweep directory without any finished checkpoint yet",
                                  "wait for its first points, or name run directories")
            runs += [summarize_run(d) for d in points]
        elif not path.exists():
            raise ConfigError("compare", str(given), "no such directory", "name run or sweep directories")
        else:
            raise ConfigError("compare", str(given), "neither a run directory (run.h5) nor a sweep directory "
                              "(sweep.h5)", "name directories written by analog-ep run or analog-ep sweep")
    return runs


def _sweep_points(path: Path) -> list[Path]:
    """A sweep's point directories that hold a run.h5, in the order of its table (grid order)."""
    found = {d.name: d for d in (path / "points").iterdir() if (d / "run.h5").is_file()} if (
        path / "points").is_dir() else {}
    order = []
    try:
        from analog_ep.sweep.table import read_sweep_h5

        order = [row["point"] for row in read_sweep_h5(path / "sweep.h5")[1]]
    except (OSError, KeyError):  # no table (yet): directory order
        pass
    return [found[n] for n in order if n in found] + [found[n] for n in sorted(found) if n not in order]


def _flatten(data, prefix: str = "") -> dict[str, str]:
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): json.dumps(data)}


def differing_keys(runs: list[RunSummary]) -> list[str]:
    """Config keys whose values differ between runs, one per group of keys that restate each other
    (same value in every run), seeds last."""
    flats = [_flatten(r.config) for r in runs]
    order = list(dict.fromkeys(k for f in flats for k in f))
    keys, seen = [], {}
    for key in order:
        column = tuple(f.get(key, "null") for f in flats)
        if len(set(column)) > 1 and column not in seen:
            seen[column] = key
            keys.append(key)
    return sorted(keys, key=lambda k: k.split(".")[-1].endswith("seed"))


def labels(runs: list[RunSummary]) -> tuple[list[str], list[str]]:
    """(a label per run, the differing keys)."""
    keys = differing_keys(runs)
    short = short_keys(keys)
    out = []
    for run in runs:
        flat = _flatten(run.config)
        out.append(", ".join(f"{short[k]}={json.loads(flat.get(k, 'null'))}" for k in keys) or run.path.name)
    if len(set(out)) < len(out):  # identical configs: the directories tell them apart
        out = [f"{label} ({run.path.name})" if keys else str(run.path) for label, run in zip(out, runs)]
    return out, keys


def _twins(runs: list[RunSummary]) -> list[str]:
    names = list(dict.fromkeys(t for r in runs for t in r.twins))
    return sorted(names, key=lambda t: list(LINESTYLES).index(t) if t in LINESTYLES else len(LINESTYLES))


def _num(value: float, fmt: str) -> str:
    return format(value, fmt) if math.isfinite(value) else "-"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes}m{s:02d}s" if minutes else f"{seconds:.1f}s"


def table_lines(runs: list[RunSummary], names: list[str]) -> list[str]:
    """Final and best validation loss per twin, gap, pulses, energy per step, wall time, status."""
    twins = _twins(runs)
    header = ["run", "status"] + [f"{t} {w}" for t in twins for w in ("final", "best")] + [
        "gap", "pulses", "energy/step", "wall"]
    body = []
    for run, name in zip(runs, names):
        row = [name, run.status]
        for t in twins:
            twin = run.twins.get(t)
            row += [_num(twin.final("loss"), ".4f"), _num(twin.best("loss"), ".4f")] if twin else ["-", "-"]
        analog = run.twins.get("analog")
        row += [_num(run.gap(), "+.4f"), f"{analog.pulses:,}" if analog else "-",
                _num(analog.energy_per_step, ".3g") + " J" if analog and math.isfinite(analog.energy_per_step)
                else "-", _duration(run.wall_s)]
        body.append(row)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    lines = [fmt(header)] + [fmt(r) for r in body]
    for run, name in zip(runs, names):
        if run.reason and run.status != "completed":
            lines.append(f"{name}: {run.status}: {run.reason}")
    return lines


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def as_json(runs: list[RunSummary], names: list[str], keys: list[str], figure: str | None) -> dict:
    out = {"differs": keys, "figure": figure, "runs": []}
    for run, name in zip(runs, names):
        analog = run.twins.get("analog")
        out["runs"].append({
            "label": name, "path": str(run.path), "status": run.status, "reason": run.reason,
            "steps_done": run.steps_done, "wall_s": _clean(run.wall_s), "gap": _clean(run.gap()),
            "pulses": analog.pulses if analog else None,
            "energy_per_step_j": _clean(analog.energy_per_step) if analog else None,
            "latency_per_step_s": _clean(analog.latency_per_step) if analog else None,
            "twins": {t: {**{f"final_val_{m}": _clean(tw.final(m)) for m in tw.val},
                          **{f"best_val_{m}": _clean(tw.best(m)) for m in tw.val}}
                      for t, tw in run.twins.items()},
        })
    return out


def plot_compare(path: Path, runs: list[RunSummary], names: list[str], keys: list[str]) -> None:
    """Validation (left) and smoothed training (right) loss of every twin of every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from analog_ep.run.plot import smooth

    cmap = plt.get_cmap("tab10" if len(runs) <= 10 else "viridis")
    colors = [cmap(i if len(runs) <= 10 else i / max(1, len(runs) - 1)) for i in range(len(runs))]
    fig, (val_ax, train_ax) = plt.subplots(1, 2, figsize=(13, 5))
    for run, color in zip(runs, colors):
        for twin_name, twin in run.twins.items():
            style = LINESTYLES.get(twin_name, "-.")
            if len(twin.val_step):
                val_ax.plot(twin.val_step, twin.val["loss"], ls=style, color=color, marker="o", ms=3, lw=1.6)
            if len(twin.train_step):
                train_ax.plot(twin.train_step, smooth(twin.train_loss), ls=style, color=color, lw=1.0)
    entropies = sorted({round(r.unigram_entropy, 9) for r in runs if math.isfinite(r.unigram_entropy)})
    entropy = entropies[0] if len(entropies) == 1 else None
    if entropy is not None:
        for ax in (val_ax, train_ax):
            ax.axhline(entropy, color="gray", ls=":", lw=1)
    val_ax.set_title("validation loss")
    train_ax.set_title("training loss (smoothed)")
    for ax in (val_ax, train_ax):
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats)")
        ax.grid(alpha=0.3)
    run_handles = [Line2D([], [], color=c, lw=2) for c in colors]
    twin_names = _twins(runs) + (["unigram entropy"] if entropy is not None else [])
    twin_handles = [Line2D([], [], color="black", ls=LINESTYLES.get(t, "-."), lw=1.5) for t in _twins(runs)]
    twin_handles += [Line2D([], [], color="gray", ls=":", lw=1)] if entropy is not None else []
    val_ax.legend(twin_handles, twin_names, fontsize=8, loc="upper right")
    fig.legend(run_handles, names, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5),
               title="runs differ in: " + (", ".join(keys) or "nothing (same config)"), title_fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight"))
    plt.close(fig)


def compare(paths, out: str | None = None) -> dict:
    """Collect, label, tabulate and plot; returns the JSON summary (with the printed lines)."""
    runs = collect_runs(paths)
    names, keys = labels(runs)
    figure = None
    if out is not None:
        figure_path = Path(out)
        if figure_path.suffix.lower() != ".png":
            raise ConfigError("--out", out, "must be a .png file", "e.g. --out compare.png")
        if figure_path.is_dir():
            raise ConfigError("--out", out, "is a directory", "give a file name, e.g. compare.png")
        plot_compare(figure_path, runs, names, keys)
        figure = str(figure_path)
    summary = as_json(runs, names, keys, figure)
    summary["table"] = table_lines(runs, names)
    return summary
