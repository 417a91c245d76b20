"""scikit-learn's handwritten digits (8x8 images, 10 classes, 1797 samples), as torch tensors.

Small enough to train an equilibrium MLP in seconds on a CPU, and bundled with scikit-learn, so
nothing is downloaded. The train/test split is stratified (every class keeps its proportion) and
depends only on the config.
"""
from __future__ import annotations

from typing import Iterator

import torch

from analog_ep.errors import check
from analog_ep.schema.data import DigitsDataConfig  # noqa: F401  (re-exported)

#: Raw pixel values of `load_digits` are integers in [0, 16].
PIXEL_MAX = 16.0


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
            x = a / scale
            return torch.as_tensor(2.0 * x - 1.0 if cfg.center else x, dtype=torch.float32)

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

    # ---- the run loop's data interface (shared with `CharCorpus`) -------------------------------
    #: Runs on this data record accuracy (`analog_ep.run.loop`).
    classification = True

    def _split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        check(split in ("train", "val"), "split", split, "unknown split", "use train or val")
        return (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch_size` distinct samples of `split` drawn at random: x (B, 64) float32, y (B,) int64.

        Each step draws afresh from `generator` (no epoch position to carry), so a resumed run
        continues the same sequence from the generator's state alone."""
        x, y = self._split(split)
        check(isinstance(batch_size, int) and 1 <= batch_size <= len(y), "batch_size", batch_size,
              f"must be an integer in [1, {len(y)}]", "use e.g. 32")
        idx = torch.randperm(len(y), generator=generator)[:batch_size]
        return x[idx], y[idx]

    def fixed_batches(self, split: str, batch_size: int, n: int = 0, seed: int = 0
                      ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The whole of `split` in order, cut into batches of `batch_size` (validation accuracy is
        measured on every held-out sample; `n` and `seed` are ignored: nothing is drawn)."""
        x, y = self._split(split)
        return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]

    def unigram_entropy(self, split: str = "train") -> float:
        """Entropy of the class frequencies of `split` in nats: the loss of a predictor that knows
        only the class prior (ln 10 = 2.303 for balanced digits)."""
        counts = torch.bincount(self._split(split)[1], minlength=self.n_classes).double()
        p = counts[counts > 0] / counts.sum()
        return float(-(p * p.log()).sum())

    def __repr__(self) -> str:
        return f"DigitsData(train={len(self.y_train)}, test={len(self.y_test)}, scale={self.cfg.scale})"


__all__ = ["DigitsDataConfig", "DigitsData", "PIXEL_MAX"]
