"""scikit-learn's handwritten digits (8x8 images, 10 classes, 1797 samples), as torch tensors.

Small enough to train an equilibrium MLP in seconds on a CPU, and bundled with scikit-learn, so
nothing is downloaded. The train/test split is stratified (every class keeps its proportion) and
depends only on the config.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from analog_ep.errors import check

#: Raw pixel values of `load_digits` are integers in [0, 16].
PIXEL_MAX = 16.0


@dataclass
class DigitsDataConfig:
    """How the digits are split and scaled."""

    test_fraction: float = 0.2
    """Fraction of the samples held out for testing; in (0, 1)."""

    seed: int = 0
    """Seed of the stratified split (the same seed always gives the same split)."""

    scale: bool = True
    """Divide pixels by 16 so they lie in [0, 1]; False keeps the raw integer levels 0..16."""

    def __post_init__(self):
        check(0.0 < self.test_fraction < 1.0, "test_fraction", self.test_fraction,
              "must lie strictly between 0 and 1", "use e.g. 0.2")
        check(isinstance(self.seed, int), "seed", self.seed, "must be an integer", "use e.g. 0")


class DigitsData:
    """Train/test tensors: x (N, 64) float32, y (N,) int64 class labels 0..9 (on the CPU)."""

    n_features = 64
    n_classes = 10

    def __init__(self, x_train: torch.Tensor, y_train: torch.Tensor,
                 x_test: torch.Tensor, y_test: torch.Tensor, cfg: DigitsDataConfig):
        self.x_train, self.y_train, self.x_test, self.y_test, self.cfg = (
            x_train, y_train, x_test, y_test, cfg)

    @classmethod
    def from_config(cls, cfg: DigitsDataConfig) -> "DigitsData":
        """Load the digits and split them per `cfg` (deterministic, stratified)."""
        # Imported here so `import analog_ep.data` stays cheap for text-only runs.
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        x_tr, x_te, y_tr, y_te = train_test_split(
            x, y, test_size=cfg.test_fraction, random_state=cfg.seed, stratify=y)
        scale = PIXEL_MAX if cfg.scale else 1.0

        def as_x(a):
            return torch.as_tensor(a / scale, dtype=torch.float32)

        def as_y(a):
            return torch.as_tensor(a, dtype=torch.int64)

        return cls(as_x(x_tr), as_y(y_tr), as_x(x_te), as_y(y_te), cfg)

    def batches(self, batch_size: int, generator: torch.Generator, drop_last: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch over the training set in a fresh random order: yields (x, y) minibatches.

        Call again for the next epoch; the order comes from `generator`, so a seeded generator
        makes the whole run reproducible. `drop_last` skips a final partial batch.
        """
        check(isinstance(batch_size, int) and batch_size >= 1, "batch_size", batch_size,
              "must be a positive integer")
        n = len(self.y_train)
        order = torch.randperm(n, generator=generator)
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            idx = order[i:i + batch_size]
            yield self.x_train[idx], self.y_train[idx]

    def __repr__(self) -> str:
        return f"DigitsData(train={len(self.y_train)}, test={len(self.y_test)}, scale={self.cfg.scale})"


__all__ = ["DigitsDataConfig", "DigitsData", "PIXEL_MAX"]
