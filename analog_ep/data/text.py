"""Character-level language-modelling data from any text file.

The default corpus is CPython's own documentation text (`pydoc_data.topics`, shipped with the
standard library), so experiments run offline and nothing is downloaded. Any UTF-8 text file works
instead (e.g. tiny Shakespeare).

The vocabulary is the sorted set of characters of the whole text, so validation text is always
encodable. The last `val_fraction` of the text is validation (a contiguous tail, not a random
sample, so train and validation windows never overlap).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from analog_ep.errors import ConfigError, check
from analog_ep.schema.data import TextDataConfig  # noqa: F401  (re-exported)

#: Name shown in messages when the built-in corpus is used.
DEFAULT_SOURCE = "pydoc_data.topics"

SPLITS = ("train", "val")


def default_text() -> str:
    """CPython's documentation topics joined in sorted-key order (~465k characters)."""
    from pydoc_data import topics

    return "".join(topics.topics[key] for key in sorted(topics.topics))


def _read_text(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("data.path", path, "file not found",
                          "give an existing text file, or null for the built-in corpus") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("data.path", path, f"cannot be read as UTF-8 text ({err.__class__.__name__})",
                          "give a readable UTF-8 text file, or null for the built-in corpus") from None
    if not text:
        raise ConfigError("data.path", path, "file is empty",
                          "give a non-empty text file, or null for the built-in corpus")
    return text


class CharCorpus:
    """A character vocabulary plus the train/validation text as int64 id tensors (on the CPU)."""

    def __init__(self, text: str, cfg: TextDataConfig, source: str = DEFAULT_SOURCE):
        """Split `text` per `cfg`; `source` names the text in error messages."""
        self.cfg, self.source, self.context = cfg, source, cfg.context
        self.chars: list[str] = sorted(set(text))
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        n_val = int(len(text) * cfg.val_fraction)
        n_train = len(text) - n_val
        # A window needs T+1 characters; one more leaves at least two distinct start positions.
        need = cfg.context + 2
        for name, n in (("train", n_train), ("val", n_val)):
            if n < need:
                raise ConfigError(
                    "data.path", source,
                    f"{name} split has {n} characters, fewer than context+2={need}",
                    "use a longer text, a smaller data.context or adjust data.val_fraction")
        self.train = self.encode(text[:n_train])
        self.val = self.encode(text[n_train:])

    @classmethod
    def from_config(cls, cfg: TextDataConfig) -> "CharCorpus":
        """Load the text named by `cfg.path` (or the built-in corpus) and split it."""
        if cfg.path is None:
            return cls(default_text(), cfg, DEFAULT_SOURCE)
        return cls(_read_text(str(cfg.path)), cfg, str(cfg.path))

    # ---- vocabulary ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.chars)

    def encode(self, s: str) -> torch.Tensor:
        """Characters -> int64 ids (1-D). Raises KeyError for a character outside the vocabulary."""
        # Vectorised: sorted chars are sorted code points, so ids are searchsorted positions.
        codes = np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codes, codes)
        bad = (ids >= len(self._codes)) | (self._codes[np.minimum(ids, len(self._codes) - 1)] != codes)
        if bad.any():
            char = chr(int(codes[bad.argmax()]))
            raise KeyError(f"character {char!r} is not in the vocabulary of {self.source}")
        return torch.from_numpy(ids.astype(np.int64))

    def decode(self, ids: torch.Tensor) -> str:
        """Ids (any shape, flattened) -> string."""
        return "".join(self.chars[i] for i in ids.reshape(-1).tolist())

    # ---- batches ------------------------------------------------------------------------------
    def split(self, split: str) -> torch.Tensor:
        """The id tensor of `split` ('train' or 'val')."""
        check(split in SPLITS, "split", split, "unknown split", "use 'train' or 'val'")
        return self.train if split == "train" else self.val

    def generator(self) -> torch.Generator:
        """A CPU generator seeded with `cfg.seed` (the default data order of a run)."""
        return torch.Generator().manual_seed(self.cfg.seed)

    def batch(self, split: str, batch_size: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows: x (B, T) int64 and the next-character targets y = x shifted by one."""
        data = self.split(split)
        check(batch_size >= 1, "batch_size", batch_size, "must be positive")
        T = self.context
        starts = torch.randint(0, len(data) - T, (batch_size,), generator=generator)
        idx = starts[:, None] + torch.arange(T + 1)
        window = data[idx]
        return window[:, :-1], window[:, 1:]

    def fixed_batches(self, split: str, batch_size: int, n: int, seed: int = 0
                      ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`n` batches that depend only on the arguments: evaluate every model on the same text."""
        gen = torch.Generator().manual_seed(seed)
        return [self.batch(split, batch_size, gen) for _ in range(n)]

    def unigram_entropy(self, split: str = "train") -> float:
        """Entropy of the character frequencies of `split` in nats (the loss of the best context-free predictor)."""
        counts = torch.bincount(self.split(split), minlength=self.vocab_size).double()
        p = counts[counts > 0] / counts.sum()
        return float(-(p * p.log()).sum())

    def __repr__(self) -> str:
        return (f"CharCorpus(source={self.source!r}, vocab_size={self.vocab_size}, "
                f"train={len(self.train)}, val={len(self.val)}, context={self.context})")


__all__ = ["TextDataConfig", "CharCorpus", "default_text", "DEFAULT_SOURCE"]
