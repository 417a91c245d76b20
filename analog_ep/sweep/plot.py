"""The tolerance map: how much of the analog-digital gap each swept setting costs.

Two swept keys: a heatmap of the gap (final analog minus final digital validation loss), each
cell the mean over seeds with the seed spread written in it; one key: the gap against the value
with error bars (and the analog and digital losses themselves beside it). More keys: one panel
per combination of the keys after the second. Cells whose mean analog loss is at or above the
unigram entropy (a classifier: whose mean analog accuracy is at chance, `results.learns_nothing`)
are hatched "learns nothing"; cells without a finished point are grey and say why.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

import numpy as np

from analog_ep.atomic import atomic_write
from analog_ep.results import learns_nothing
from analog_ep.sweep.grid import SweepDefinition, value_text

FINISHED = ("completed", "diverged")
MAX_PANELS = 12


def cells(sweep: SweepDefinition, rows: list[dict]) -> dict[tuple, dict]:
    """Grid combination (tuple of value indices, in key order) -> aggregate over its seeds: n
    finished, gap mean and std, mean analog and digital loss, learns_nothing, statuses."""
    keys = list(sweep.grid)
    groups: dict[tuple, list] = {}
    for point, row in zip(sweep.points, rows):
        combo = tuple(sweep.grid[k].index(v) for k, v in point.values)
        groups.setdefault(combo, []).append(row)
    out = {}
    for combo in itertools.product(*(range(len(sweep.grid[k])) for k in keys)):
        mine = groups.get(combo, [])
        done = [r for r in mine if r["status"] in FINISHED and math.isfinite(r.get("gap", math.nan))]
        gaps = np.array([r["gap"] for r in done], dtype=float)
        analog = np.array([r.get("final_val_loss_analog", math.nan) for r in done], dtype=float)
        digital = np.array([r.get("final_val_loss_digital", math.nan) for r in done], dtype=float)
        entropy = np.array([r.get("unigram_entropy", math.nan) for r in done], dtype=float)
        accuracy = np.array([r.get("final_val_accuracy_analog", math.nan) for r in done], dtype=float)
        out[combo] = {
            "n": len(done), "seeds": len(mine),
            "gap": float(gaps.mean()) if len(done) else math.nan,
            "spread": float(gaps.std(ddof=1)) if len(done) > 1 else math.nan,
            "analog": float(analog.mean()) if len(done) else math.nan,
            "digital": float(digital.mean()) if len(done) else math.nan,
            "learns_nothing": bool(len(done) and learns_nothing(float(analog.mean()), float(accuracy.mean()),
                                                                float(np.nanmean(entropy)))),
            "statuses": Counter(r["status"] for r in mine),
        }
    return out


def _classifies(rows: list[dict]) -> bool:
    return any(math.isfinite(r.get("final_val_accuracy_analog", math.nan)) for r in rows)


def _status_text(statuses: Counter) -> str:
    return "\n".join(f"{n} {s}" for s, n in statuses.most_common() if s not in FINISHED) or "no result"


def plot_tolerance(path: Path, sweep: SweepDefinition, rows: list[dict], title: str) -> None:
    """Write the tolerance map (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = cells(sweep, rows)
    keys = list(sweep.grid)
    note = (f"mean over {sweep.seeds} seed{'s' if sweep.seeds > 1 else ''}"
            + (" ± std over seeds" if sweep.seeds > 1 else "")
            + ("; hatched: analog accuracy ≤ chance (learns nothing)" if _classifies(rows)
               else "; hatched: analog loss ≥ unigram entropy (learns nothing)"))
    if len(keys) == 1:
        fig = _line(plt, [agg[(i,)] for i in range(len(sweep.grid[keys[0]]))], keys[0], sweep.grid[keys[0]])
    else:
        fig = _heatmaps(plt, agg, sweep)
    fig.suptitle(f"{title}\n{note}", fontsize=10)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight"))
    plt.close(fig)


def _heatmaps(plt, agg: dict, sweep: SweepDefinition):
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    keys = list(sweep.grid)
    ykey, xkey, rest = keys[0], keys[1], keys[2:]
    yvals, xvals = sweep.grid[ykey], sweep.grid[xkey]
    panels = list(itertools.product(*(range(len(sweep.grid[k])) for k in rest)))[:MAX_PANELS]
    finite = [c["gap"] for c in agg.values() if math.isfinite(c["gap"])]
    bound = max([abs(g) for g in finite] + [1e-3])
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    width = max(4.0, 1.15 * len(xvals) + 2.0)
    height = max(3.0, 0.8 * len(yvals) + 1.6)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols + 1.2, height * nrows + 0.6), squeeze=False,
                             layout="constrained")
    image = None
    for ax, extra in zip(axes.flat, panels):
        grid = np.full((len(yvals), len(xvals)), np.nan)
        for i in range(len(yvals)):
            for j in range(len(xvals)):
                grid[i, j] = agg[(i, j, *extra)]["gap"]
        ax.set_facecolor("0.85")
        image = ax.imshow(grid, cmap="RdBu_r", norm=norm, aspect="auto", origin="lower")
        for i in range(len(yvals)):
            for j in range(len(xvals)):
                c = agg[(i, j, *extra)]
                if c["n"] == 0:
                    text = _status_text(c["statuses"])
                else:
                    text = f"{c['gap']:+.3f}"
                    if math.isfinite(c["spread"]):
                        text += f"\n±{c['spread']:.3f}"
                    text += f"\nanalog {c['analog']:.2f}"
                    if c["n"] < c["seeds"]:
                        text += f"\n{c['n']}/{c['seeds']} seeds"
                if c["learns_nothing"]:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.25",
                                           linewidth=0))
                    text += "\nlearns nothing"
                dark = c["n"] and abs(c["gap"]) > 0.6 * bound and not c["learns_nothing"]
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black",
                        bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.8)
                        if c["learns_nothing"] else None)
        ax.set_xticks(range(len(xvals)), [value_text(v) for v in xvals])
        ax.set_yticks(range(len(yvals)), [value_text(v) for v in yvals])
        ax.set_xlabel(xkey)
        ax.set_ylabel(ykey)
        if rest:
            ax.set_title(", ".join(f"{k}={value_text(sweep.grid[k][e])}" for k, e in zip(rest, extra)), fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    bar = fig.colorbar(image, ax=axes, shrink=0.9)
    bar.set_label("analog − digital validation loss (nats)")
    return fig


def _line(plt, cs: list[dict], key: str, values: list):
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    x = np.array(values, dtype=float) if numeric else np.arange(len(values), dtype=float)
    log = numeric and (x > 0).all() and x.max() / x.min() >= 100
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    gap = np.array([c["gap"] for c in cs])
    spread = np.nan_to_num(np.array([c["spread"] for c in cs]))
    left.errorbar(x, gap, yerr=spread, marker="o", capsize=4, color="tab:red", label="analog − digital")
    left.axhline(0, color="0.5", lw=0.8)
    left.set_ylabel("gap: analog − digital validation loss (nats)")
    right.plot(x, [c["analog"] for c in cs], marker="o", color="tab:red", label="analog twin")
    right.plot(x, [c["digital"] for c in cs], marker="s", color="tab:blue", label="digital twin")
    right.set_ylabel("final validation loss (nats), mean over seeds")
    for ax in (left, right):
        span = (np.diff(x).min() if len(x) > 1 else 1.0) * 0.4
        for xi, c in zip(x, cs):
            if c["learns_nothing"]:
                lo, hi = (xi / 1.3, xi * 1.3) if log else (xi - span, xi + span)
                ax.axvspan(lo, hi, facecolor="none", hatch="///", edgecolor="0.4", lw=0)
            if c["n"] == 0:
                ax.annotate(_status_text(c["statuses"]), (xi, 0.02), xycoords=("data", "axes fraction"),
                            ha="center", fontsize=8, color="0.3")
        if log:
            ax.set_xscale("log")
        ax.set_xticks(x, [value_text(v) for v in values])
        ax.minorticks_off()
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    if any(c["learns_nothing"] for c in cs):
        from matplotlib.patches import Patch

        handles, labels = right.get_legend_handles_labels()
        handles.append(Patch(facecolor="none", hatch="///", edgecolor="0.4"))
        right.legend(handles, labels + ["learns nothing"], fontsize=8)
    else:
        right.legend(fontsize=8)
    return fig
