"""Train an equilibrium classifier by EP on an in-memory data set (the digits, for instance).

Each minibatch: `ep_gradient` (free phase, nudged phases, vector-field readout), the estimates are
written to `p.grad` by name, the global norm is clipped and the optimizer from `build_optimizer`
steps. Prediction is the argmax of the logits at the free fixed point, relaxed with the same
`RelaxConfig` as in training, so test accuracy measures exactly the network that was trained.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from analog_ep.errors import check
from analog_ep.estimator.ep import EPConfig, ep_gradient
from analog_ep.model.base import EquilibriumModel
from analog_ep.relax.solvers import RelaxConfig, relax
from analog_ep.train.optim import (OptimizerConfig, ScheduleConfig, build_optimizer, build_scheduler,
                                   clip_gradients)


def digits_recipe() -> dict:
    """The keyword arguments of `train_classifier` measured on the digits (README, bench/mlp_digits.py):
    centred EP at beta 0.5 with T2 = 20 steps of eps 0.5 after T1 = 40, AdamW, 15 epochs of 32."""
    return dict(relax_config=RelaxConfig(method="euler", eps=0.5, steps=40),
                ep_config=EPConfig(beta=0.5, centered=True, steps=20, eps=0.5, aep="none"),
                opt_config=OptimizerConfig(name="adamw", lr=1e-2, weight_decay=1e-4), epochs=15, batch_size=32, seed=0)


class ClassificationData(Protocol):
    """What the trainer needs from a data set (`DigitsData` satisfies it)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def batches(self, batch_size: int, generator: torch.Generator, drop_last: bool = False): ...


@dataclass
class EpochStats:
    """Numbers recorded at the end of one epoch."""

    epoch: int
    """1-based epoch index."""
    train_loss: float
    """Mean free-phase loss over the epoch's minibatches (weights change during the epoch)."""
    test_loss: float
    """Cross-entropy at the free fixed points of the test set."""
    test_accuracy: float
    """Fraction of test samples whose argmax logit is the label."""
    residual: float
    """Largest free-phase relative residual seen in the epoch (relaxation health)."""
    wall_s: float
    """Seconds since training started, evaluation included."""


@dataclass
class TrainHistory:
    """Per-epoch records of one run."""

    epochs: list[EpochStats] = field(default_factory=list)
    """One entry per (possibly partial, when the time budget ran out) epoch."""
    steps: int = 0
    """Optimizer steps taken."""
    stopped_early: bool = False
    """True when `time_budget_s` ended training before the last epoch."""

    @property
    def final(self) -> EpochStats:
        return self.epochs[-1]


def evaluate(model: EquilibriumModel, x: torch.Tensor, y: torch.Tensor, relax_config: RelaxConfig,
             batch_size: int = 1024) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) at the free fixed points of (x, y)."""
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            x_in = model.drive(xb)
            z = relax(lambda u: model.force(u, x_in), model.initial_state(x_in), relax_config).z
            loss_sum += float(model.loss(z, yb)) * len(yb)
            correct += int((model.logits(z).argmax(-1) == yb).sum())
    return loss_sum / len(y), correct / len(y)


def train_classifier(model: EquilibriumModel, data: ClassificationData, relax_config: RelaxConfig,
                     ep_config: EPConfig, opt_config: OptimizerConfig, epochs: int, batch_size: int,
                     seed: int = 0, time_budget_s: float | None = None, cosine: bool = True,
                     num_threads: int | None = 1, log=None) -> TrainHistory:
    """Train `model` by EP for `epochs` epochs and evaluate on the test set after each.

    `cosine` decays the lr to 5% of its peak over the run (annealing is what turns a noisy EP
    gradient into the last points of accuracy). `time_budget_s` stops after the first minibatch
    that ends past the budget (so at least one step is taken); that epoch is still evaluated.
    `num_threads` sets torch's intra-op threads for the run (restored afterwards; None leaves them
    alone). One is fastest for small classifiers: their matrices are too small to split, and extra
    threads only add synchronisation, which on a busy machine costs ~10x.
    `log`, if given, is called with each `EpochStats`.
    """
    check(isinstance(epochs, int) and epochs >= 1, "epochs", epochs, "must be a positive integer")
    check(isinstance(batch_size, int) and batch_size >= 1, "batch_size", batch_size,
          "must be a positive integer")
    check(time_budget_s is None or time_budget_s > 0, "time_budget_s", time_budget_s,
          "must be > 0", "use None for no budget")
    check(num_threads is None or num_threads >= 1, "num_threads", num_threads, "must be >= 1",
          "use None to keep torch's setting")
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _train(model, data, relax_config, ep_config, opt_config, epochs, batch_size, seed,
                      time_budget_s, cosine, log)
    finally:
        torch.set_num_threads(previous)


def _train(model, data, relax_config, ep_config, opt_config, epochs, batch_size, seed, time_budget_s,
           cosine, log) -> TrainHistory:
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    named = dict(model.named_parameters())
    optimizer = build_optimizer(list(named.values()), opt_config)
    per_epoch = math.ceil(len(data.y_train) / batch_size)
    scheduler = build_scheduler(optimizer, ScheduleConfig(
        name="cosine" if cosine else "constant", warmup=0, total_steps=epochs * per_epoch))
    history = TrainHistory()
    for epoch in range(1, epochs + 1):
        losses, worst = [], 0.0
        for x, y in data.batches(batch_size, gen):
            result = ep_gradient(model, x, y, relax_config, ep_config)
            for name, g in result.grads.items():
                named[name].grad = g.to(named[name].dtype)
            clip_gradients(named.values(), opt_config.grad_clip)
            optimizer.step()
            scheduler.step()
            history.steps += 1
            losses.append(result.loss)
            worst = max(worst, result.free.residual)
            if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
                history.stopped_early = epoch < epochs or len(losses) < per_epoch
                break
        test_loss, acc = evaluate(model, data.x_test, data.y_test, relax_config)
        stats = EpochStats(epoch, sum(losses) / len(losses), test_loss, acc, worst,
                           time.perf_counter() - start)
        history.epochs.append(stats)
        if log is not None:
            log(stats)
        if history.stopped_early:
            break
    return history


__all__ = ["EpochStats", "TrainHistory", "evaluate", "train_classifier"]
