"""curves.png: the twins' learning curves side by side."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a training machine
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analog_ep.atomic import atomic_write  # noqa: E402
from analog_ep.run.store import History  # noqa: E402

COLORS = {"digital": "tab:blue", "analog": "tab:red", "bptt": "tab:green"}


def smooth(values, window: int = 20) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return v
    w = min(window, len(v))
    kernel = np.ones(w) / w
    head = np.array([v[: i + 1].mean() for i in range(w - 1)])  # no warm-up dip at the start
    return np.concatenate([head, np.convolve(v, kernel, mode="valid")])


def _twin_curves(ax, history, metric: str) -> None:
    """Every twin's training `metric` (thin, smoothed) and validation `metric` (thick, markers)."""
    for twin, series in history.series.items():
        color = COLORS.get(twin, None)
        if series.get(f"train.{metric}"):
            ax.plot(series["train.step"], smooth(series[f"train.{metric}"]), color=color, alpha=0.45, lw=1,
                    label=f"{twin} train (smoothed)")
        if series.get(f"val.{metric}"):
            ax.plot(series["val.step"], series[f"val.{metric}"], color=color, lw=2.2, marker="o", ms=4,
                    label=f"{twin} validation")


def plot_curves(path: Path, history: History, title: str, entropy: float | None = None,
                prior: str = "unigram") -> None:
    """Train (thin, smoothed) and validation (thick, markers) cross-entropy of every twin; with a
    classification run (val/accuracy recorded) a panel of accuracies beside it; with a circuit the
    operator's health. `prior` names the entropy line (unigram, or class-prior)."""
    analog = history.series.get("analog", {})
    has_hw = bool(analog.get("settle_time"))
    has_acc = any(series.get("val.accuracy") for series in history.series.values())
    panels = 1 + has_acc + has_hw
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels if panels > 1 else 7, 4.5), squeeze=False)
    ax = axes[0, 0]
    _twin_curves(ax, history, "loss")
    if entropy is not None:
        ax.axhline(entropy, color="gray", ls=":", lw=1, label=f"{prior} entropy {entropy:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if has_acc:
        axa = axes[0, 1]
        _twin_curves(axa, history, "accuracy")
        axa.set_xlabel("step")
        axa.set_ylabel("accuracy")
        axa.set_ylim(0, 1)
        axa.set_title("accuracy (argmax of the free state's logits)")
        axa.grid(alpha=0.3)
        axa.legend(fontsize=8, loc="lower right")
    if has_hw:
        ax2 = axes[0, -1]
        steps = analog["train.step"]
        ax2.plot(steps, smooth(analog["residual"]), color="tab:red", lw=1, label="analog free residual")
        if "residual" in history.series.get("digital", {}):
            ax2.plot(history.series["digital"]["train.step"], smooth(history.series["digital"]["residual"]),
                     color="tab:blue", lw=1, label="digital free residual")
        ax2.set_yscale("log")
        ax2.set_xlabel("step")
        ax2.set_ylabel("residual")
        if analog.get("update_cos"):
            ax3 = ax2.twinx()
            ax3.plot(steps, smooth(analog["update_cos"]), color="black", lw=1, label="cos(analog update, EP grad)")
            ax3.set_ylabel("cosine")
            ax3.set_ylim(-1, 1)
            ax3.legend(fontsize=8, loc="lower right")
        ax2.set_title("operator health")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
