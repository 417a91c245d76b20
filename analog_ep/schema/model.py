"""Schema of the models a run trains: one config per model kind, selected by `model.kind`.

* `TransformerConfig` (kind 'transformer', the default): the equilibrium transformer block
  (`analog_ep.model.transformer`). Its defaults are the small block that learns in minutes on a
  CPU (C=64, T=32, 4 heads, embeddings at unit scale); the research configuration (C=128, T=64,
  embeddings at 0.02) is pinned by `bench/ep_step.py`.
* `MLPConfig` (kind 'mlp'): the layered Hopfield network for classification
  (`analog_ep.model.mlp`).

`MODEL_KINDS` maps `kind` to its config; a chip file's `model: {kind: mlp, ...}` selects the class
its other keys are read onto (`analog_ep.config.merge`).
"""
from __future__ import annotations

from dataclasses import dataclass

from analog_ep.errors import check

MODES = ("thick", "real", "energy", "mono")
ACTIVATIONS = ("tanh", "sigmoid")
DTYPES = ("float32", "float64")


@dataclass
class TransformerConfig:
    """Shape, force mode and initialisation of the equilibrium transformer block."""

    kind: str = "transformer"
    """Which model: 'transformer' (this config) or 'mlp' (`MLPConfig`); it selects the config class."""
    vocab_size: int = 103
    """Number of input/output symbols (the default corpus has 103)."""
    context: int = 32
    """Sequence length T: the state is (B, T, C) and attention is causal over T (a run ties it to
    `data.context`)."""
    width: int = 64
    """Channel width C."""
    heads: int = 4
    """Attention heads H; C must be divisible by H (head width C/H)."""
    mode: str = "thick"
    """Force mode: 'thick', 'real', 'energy' or 'mono' (see `analog_ep.model.transformer`)."""
    damping: float = 1.0
    """Leak c in -c z: adds contraction so a fixed point exists at any attention gain."""
    attn_gain: float = 1.0
    """Gain s on the attention force (modes real and mono)."""
    lse_gamma: float = 0.25
    """Inverse temperature gamma of the log-sum-exp attention energy (mode energy)."""
    memory: int = 256
    """Hopfield memory units Mm (modes real, energy, mono)."""
    mono_margin: float = 1.0
    """Strong-monotonicity margin m of the mono mode (symmetric part of J <= -m I)."""
    ffn_mult: int = 4
    """FFN hidden width as a multiple of C (thick)."""
    qk_norm: bool = False
    """RMS-normalise queries and keys per head: bounds attention logits and tames the Jacobian."""
    embed_scale: float = 1.0
    """Std of token and position embeddings at init. At unit scale LayerNorm's Jacobian is O(1)
    and the free phase settles in tens of steps from the first update on; the research trainer's
    0.02 starts with a residual of ~3e-2 and gradient norms of ~1e4 at this size."""
    out_scale: float = 1.0
    """Multiplier on the block's output weights (W_o, W_proj) at init: < 1 starts near identity."""
    memory_scale: float = 0.3
    """Hopfield memory init std in units of 1/sqrt(C)."""
    seed: int = 0
    """Seed of the weight initialisation."""
    dtype: str = "float32"
    """'float32' or 'float64'. float64 makes twins comparable to rounding: in float32 the EP
    estimate itself scatters by ~1% (the nudge moves z by ~1e-5 of its norm)."""

    def __post_init__(self):
        check(self.kind == "transformer", "kind", self.kind, "is not a transformer kind",
              "set model.kind: transformer, or use MLPConfig")
        check(self.dtype in DTYPES, "dtype", self.dtype, "unsupported dtype",
              "use float32 or float64")
        check(self.mode in MODES, "mode", self.mode, "unknown force mode", f"use one of {', '.join(MODES)}")
        for key in ("vocab_size", "context", "width", "heads", "memory", "ffn_mult"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "must be a positive integer", "use an integer >= 1")
        check(self.width % self.heads == 0, "heads", self.heads, f"must divide width={self.width}",
              "pick heads so that width/heads is an integer")
        check(self.damping >= 0, "damping", self.damping, "must be >= 0")
        check(self.lse_gamma > 0, "lse_gamma", self.lse_gamma, "must be > 0")

    @property
    def leak(self) -> float:
        """The force's scalar self-decay lambda (F = -lambda z + ...): 1 + c (thick, energy), 1 + s c
        (real), m (mono)."""
        return {"thick": 1.0 + self.damping, "energy": 1.0 + self.damping, "real": 1.0 + self.attn_gain * self.damping,
                "mono": self.mono_margin}[self.mode]


@dataclass
class MLPConfig:
    """Shape, activation and initialisation of the equilibrium MLP (layered Hopfield network)."""

    kind: str = "mlp"
    """Which model: 'mlp' (this config) or 'transformer' (`TransformerConfig`)."""
    inputs: int = 64
    """Input width (64 pixels for the 8x8 digits; a run ties it to the data)."""
    hidden: tuple[int, ...] = (128,)
    """Widths of the hidden layers, bottom to top (at least one)."""
    classes: int = 10
    """Output width: one logit per class (a run ties it to the data)."""
    activation: str = "tanh"
    """Rate function rho of the hidden layers: 'tanh' (rho'(0) = 1, zero-centred) or 'sigmoid'."""
    damping: float = 0.0
    """Extra leak c: the self term is (1 + c)/2 |s|^2, a stronger pull to 0 (more contraction)."""
    init_scale: float = 1.0
    """Weight init std in units of 1/sqrt(fan_in) (Glorot-like); biases start at 0."""
    seed: int = 0
    """Seed of the weight initialisation."""
    dtype: str = "float32"
    """'float32' or 'float64' (the ideal chip's twins agree to rounding in float64)."""

    def __post_init__(self):
        self.hidden = tuple(self.hidden)  # YAML gives a list
        check(self.kind == "mlp", "kind", self.kind, "is not an MLP kind", "set model.kind: mlp, or use TransformerConfig")
        for key in ("inputs", "classes"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "must be a positive integer")
        check(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden), "hidden", self.hidden,
              "needs at least one layer of positive width", "use e.g. [128]")
        check(self.activation in ACTIVATIONS, "activation", self.activation, "unknown activation",
              f"use one of {', '.join(ACTIVATIONS)}")
        check(self.damping >= 0, "damping", self.damping, "must be >= 0")
        check(self.init_scale > 0, "init_scale", self.init_scale, "must be > 0")
        check(self.dtype in DTYPES, "dtype", self.dtype, "unsupported dtype", "use float32 or float64")

    @property
    def leak(self) -> float:
        """The force's scalar self-decay: 1 + c, the self term of every layer."""
        return 1.0 + self.damping


#: model.kind -> its config class.
MODEL_KINDS = {"transformer": TransformerConfig, "mlp": MLPConfig}
