"""Schema of the character-level text data (`analog_ep.data.text` reads it)."""
from __future__ import annotations

from dataclasses import dataclass

from analog_ep.errors import check

@dataclass
class TextDataConfig:
    """Where the text comes from and how it is cut into training windows."""

    path: str | None = None
    """UTF-8 text file to model; None = CPython's documentation text (`pydoc_data.topics`)."""

    val_fraction: float = 0.1
    """Fraction of the text (its tail, in characters) held out for validation; in (0, 1)."""

    context: int = 32
    """Window length T in characters: the model sees x[0:T] and predicts x[1:T+1]."""

    seed: int = 0
    """Seed for the default data-order generator (see `CharCorpus.generator`)."""

    def __post_init__(self):
        check(0.0 < self.val_fraction < 1.0, "val_fraction", self.val_fraction,
              "must lie strictly between 0 and 1", "use e.g. 0.1")
        check(isinstance(self.context, int) and self.context >= 1, "context", self.context,
              "must be a positive integer", "use e.g. 32")
        check(isinstance(self.seed, int), "seed", self.seed, "must be an integer", "use e.g. 0")
