"""Schema of the data a run trains on: one config per data kind, selected by `data.kind`.

* `TextDataConfig` (kind 'text', the default): a character-level corpus (`analog_ep.data.text`).
* `DigitsDataConfig` (kind 'digits'): scikit-learn's 8x8 handwritten digits with a stratified
  held-out split (`analog_ep.data.digits`).
"""
from __future__ import annotations

from dataclasses import dataclass

from analog_ep.errors import check

@dataclass
class TextDataConfig:
    """Where the text comes from and how it is cut into training windows."""

    kind: str = "text"
    """Which data: 'text' (this config) or 'digits' (`DigitsDataConfig`); it selects the config class."""
    path: str | None = None
    """UTF-8 text file to model; None = CPython's documentation text (`pydoc_data.topics`)."""

    val_fraction: float = 0.1
    """Fraction of the text (its tail, in characters) held out for validation; in (0, 1)."""

    context: int = 32
    """Window length T in characters: the model sees x[0:T] and predicts x[1:T+1]."""

    seed: int = 0
    """Seed for the default data-order generator (see `CharCorpus.generator`)."""

    def __post_init__(self):
        check(self.kind == "text", "kind", self.kind, "is not a text kind", "set data.kind: text")
        check(0.0 < self.val_fraction < 1.0, "val_fraction", self.val_fraction,
              "must lie strictly between 0 and 1", "use e.g. 0.1")
        check(isinstance(self.context, int) and self.context >= 1, "context", self.context,
              "must be a positive integer", "use e.g. 32")
        check(isinstance(self.seed, int), "seed", self.seed, "must be an integer", "use e.g. 0")


@dataclass
class DigitsDataConfig:
    """How scikit-learn's digits (1797 8x8 images, 10 classes) are split and scaled."""

    kind: str = "digits"
    """Which data: 'digits' (this config) or 'text' (`TextDataConfig`)."""
    test_fraction: float = 0.2
    """Fraction of the samples held out for validation (stratified); in (0, 1). 0.2 holds out 360."""
    seed: int = 0
    """Seed of the stratified split (the same seed always gives the same split)."""
    scale: bool = True
    """Divide pixels by 16 so they lie in [0, 1]; False keeps the raw integer levels 0..16."""
    center: bool = False
    """Map the scaled pixels to [-1, 1] (x -> 2x - 1): zero-mean inputs, as bipolar row drivers apply
    them. Plain SGD (what a rank-1 analog update realises) trains markedly faster on centred inputs
    (README, "The equilibrium MLP on chip"); needs `scale: true`."""

    def __post_init__(self):
        check(self.kind == "digits", "kind", self.kind, "is not a digits kind", "set data.kind: digits")
        check(0.0 < self.test_fraction < 1.0, "test_fraction", self.test_fraction,
              "must lie strictly between 0 and 1", "use e.g. 0.2")
        check(isinstance(self.seed, int), "seed", self.seed, "must be an integer", "use e.g. 0")
        check(self.scale or not self.center, "center", self.center, "centres the scaled [0, 1] pixels",
              "set data.scale: true, or data.center: false")


#: data.kind -> its config class.
DATA_KINDS = {"text": TextDataConfig, "digits": DigitsDataConfig}
#: model.kind -> the data kinds it can train on.
MODEL_DATA = {"transformer": ("text",), "mlp": ("digits",)}
