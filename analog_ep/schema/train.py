"""Schema of training: the optimizer, the learning-rate schedule, the stabilisers and the loop.

`analog_ep.train.optim`, `analog_ep.train.stabilizers` and `analog_ep.train.twin` run them. The
defaults are the digital recipe every shipped chip starts from: AdamW at 3e-3 with a 20-step
warmup into a cosine decay over 300 steps, and the Jacobian penalty at 0.1 steered toward a
residual of 3e-3 through an EMA of 0.9.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from analog_ep.errors import ConfigError, check

OPTIMIZERS = ("lion", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "wsd")
#: Betas used when `OptimizerConfig.betas` is None (each optimizer's published default).
DEFAULT_BETAS = {"lion": (0.9, 0.99), "adamw": (0.9, 0.999)}
GRADIENTS = ("ep", "bptt", "adjoint")
TWINS = ("analog", "digital", "bptt")


@dataclass
class OptimizerConfig:
    """Which optimizer to use and its hyper-parameters."""

    name: str = "adamw"
    """One of 'lion', 'adamw', 'sgd' (SGD uses Nesterov momentum)."""

    lr: float = 3e-3
    """Peak learning rate (schedules scale it). Lion usually wants 3-10x less than AdamW."""

    betas: tuple[float, float] | None = None
    """(beta1, beta2) of Lion/AdamW; None = (0.9, 0.99) for Lion, (0.9, 0.999) for AdamW."""

    weight_decay: float = 1e-4
    """Decoupled weight decay per unit lr: each step multiplies weights by 1 - lr*weight_decay."""

    momentum: float = 0.95
    """SGD momentum (Nesterov) in [0, 1); 0 = plain SGD. Ignored by Lion/AdamW."""

    trust_ratio: bool = False
    """Lion only: scale each tensor's step by ||p|| / ||u|| (one gain per array on hardware)."""

    grad_clip: float = 5.0
    """Clip the global gradient norm to this value before each step; 0 = no clipping."""

    lr_scale: dict[str, float] = field(default_factory=dict)
    """Per-parameter learning-rate factors by parameter name, e.g. {weights.0: 3.0}: that tensor's
    lr is lr x factor (the schedule scales it as every lr); unnamed tensors keep 1. A chip realises
    it per array: an outer-product write's pulse trains use its matrix's scaled lr, a sign-pulse
    write its pulse count. Plain SGD on the layered MLP wants a larger step for the input-side
    crossbar, whose gradient is several times smaller (README, "The equilibrium MLP on chip")."""

    def __post_init__(self):
        check(self.name in OPTIMIZERS, "optim.name", self.name, "unknown optimizer",
              f"use one of {', '.join(OPTIMIZERS)}")
        check(self.lr > 0, "optim.lr", self.lr, "must be positive", "use e.g. 1e-3")
        if self.betas is not None:
            check(len(self.betas) == 2, "optim.betas", self.betas, "needs two values",
                  "use e.g. [0.9, 0.99]")
            self.betas = tuple(float(b) for b in self.betas)  # YAML gives a list
            for b in self.betas:
                check(0.0 <= b < 1.0, "optim.betas", self.betas, "each beta must lie in [0, 1)")
        check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay,
              "must be non-negative", "use 0 to disable")
        check(0.0 <= self.momentum < 1.0, "optim.momentum", self.momentum, "must lie in [0, 1)")
        check(not self.trust_ratio or self.name == "lion", "optim.trust_ratio", self.trust_ratio,
              f"only Lion supports it, not {self.name!r}", "set it false or use name: lion")
        check(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, "must be non-negative",
              "use 0 to disable clipping")
        check(isinstance(self.lr_scale, dict), "optim.lr_scale", self.lr_scale,
              "must map parameter names to factors", "use e.g. {weights.0: 3.0}")
        for name, factor in self.lr_scale.items():
            check(isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor > 0,
                  f"optim.lr_scale.{name}", factor, "must be a positive number", "use e.g. 3.0")
        self.lr_scale = {str(k): float(v) for k, v in self.lr_scale.items()}

    @property
    def resolved_betas(self) -> tuple[float, float]:
        """`betas`, or the chosen optimizer's default when None."""
        return self.betas if self.betas is not None else DEFAULT_BETAS.get(self.name, (0.9, 0.999))


@dataclass
class ScheduleConfig:
    """Learning-rate schedule as a factor of the peak lr, per optimizer step."""

    name: str = "cosine"
    """'constant', 'cosine' (decay over the whole run after warmup) or 'wsd' (warmup-stable-decay)."""

    warmup: int = 20
    """Steps of linear warmup: step s < warmup (0-based) uses (s+1)/warmup of the peak (0: none).
    A run shorter than its warmup uses a warmup of a fifth of its steps instead."""

    total_steps: int = 300
    """Number of optimizer steps in the run; the last one (total_steps-1) uses min_ratio (a run
    sets it to `train.steps`)."""

    min_ratio: float = 0.05
    """Final lr / peak lr, in [0, 1]; the factor stays there after total_steps."""

    decay_fraction: float = 0.25
    """WSD only: fraction of total_steps (rounded) spent in cosine decay at the end; the peak is
    held between warmup and the decay."""

    def __post_init__(self):
        check(self.name in SCHEDULES, "schedule.name", self.name, "unknown schedule",
              f"use one of {', '.join(SCHEDULES)}")
        check(isinstance(self.total_steps, int) and self.total_steps >= 1, "schedule.total_steps",
              self.total_steps, "must be a positive integer")
        check(isinstance(self.warmup, int) and 0 <= self.warmup < self.total_steps,
              "schedule.warmup", self.warmup, f"must lie in [0, total_steps={self.total_steps})")
        check(0.0 <= self.min_ratio <= 1.0, "schedule.min_ratio", self.min_ratio,
              "must lie in [0, 1]")
        check(0.0 < self.decay_fraction <= 1.0, "schedule.decay_fraction", self.decay_fraction,
              "must lie in (0, 1]")
        if self.name == "wsd":
            check(self.decay_steps >= 1, "schedule.decay_fraction", self.decay_fraction,
                  f"gives no decay step for total_steps={self.total_steps}",
                  "raise decay_fraction or total_steps")
        if self.name == "wsd" and self.warmup + self.decay_steps > self.total_steps:
            raise ConfigError("schedule.decay_fraction", self.decay_fraction,
                              f"warmup ({self.warmup}) + decay ({self.decay_steps} steps) exceeds "
                              f"total_steps={self.total_steps}",
                              "shorten warmup or lower decay_fraction")

    @property
    def decay_steps(self) -> int:
        """WSD: number of decaying steps at the end of the run."""
        return round(self.decay_fraction * self.total_steps)

    def factor(self, step: int) -> float:
        """lr / peak lr at optimizer step `step` (0-based)."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.name == "constant":
            return 1.0
        # `start` is the last step at the peak; the decay reaches min_ratio at the last step.
        last = self.total_steps - 1
        start = max(self.warmup - 1, 0)
        if self.name == "wsd":
            start = max(start, self.total_steps - self.decay_steps - 1)
        if step <= start:
            return 1.0
        progress = min(1.0, (step - start) / max(1, last - start))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class StabilizerConfig:
    """Stabilisers applied around each training step: the Jacobian penalty and its controller, the
    abort fuse and the weight caps are on at their defaults, the others off."""

    jacreg: float = 0.1
    """Initial weight of the Jacobian penalty ||J_nc||_F^2 (0: off)."""
    jacreg_floor: float | None = None
    """Controller floor for the jacreg weight (None: the initial jacreg). Keep it > 0: runs whose
    weight fell to 0 blew up."""
    jacreg_max: float = 16.0
    """Controller ceiling for the jacreg weight."""
    residual_target: float = 3e-3
    """Residual the controller steers toward (a chip whose residual floor, set by its noise, lies
    above it raises it: the controller would otherwise ratchet lambda to its ceiling)."""
    residual_ema: float = 0.9
    """EMA factor on the residual fed to the controller (0: raw; 0.9 stops controller thrash)."""
    controller_exponent: float = 0.3
    """weight <- weight * (res / target) ** exponent each step."""
    resreg: float = 0.0
    """T1-residual penalty as a fraction of the task-gradient norm (0: off)."""
    resreg_onset: float = 7e-4
    """Residual below which resreg is inactive."""
    resreg_full: float = 2e-2
    """Residual at which resreg reaches its full fraction (linear ramp from 0 above the onset)."""
    eigreg: float = 0.0
    """Weight of relu(omega(J_nc) - margin)^2, omega the numerical abscissa (0: off)."""
    eig_margin: float = 1.0
    """Abscissa above which eigreg acts (the free-phase Hopf boundary is near 1 + damping)."""
    gate: float = 0.0
    """Validity gate: above this residual skip the task gradient and apply only jacreg (0: off)."""
    abort_residual: float = 0.1
    """Abort fuse: a free-phase residual above this counts as lost containment (0: off). 0.1 is
    20x the noisiest shipped chip's floor (5e-3): EP's estimate is meaningless there."""
    abort_patience: int = 20
    """The twin has diverged after this many consecutive steps above `abort_residual` (the
    research trainer's 100 is longer than most runs; a Hopf limit cycle does not recover)."""
    diverge_loss_factor: float = 10.0
    """A training loss above this multiple of the twin's initial validation loss (at step 0) counts
    toward divergence (0: off). 10x an untrained model's loss is far beyond any learning curve."""
    diverge_patience: int = 10
    """The twin has diverged after this many consecutive steps above `diverge_loss_factor` x the
    initial loss. (A non-finite loss, gradient or state is divergence at once.)"""
    spectral_bound: float = 0.0
    """Project attention/FFN weights so their largest singular value <= this after each step (0: off)."""
    weight_cap: float = 3.0
    """Cap each weight matrix's Frobenius norm at this multiple of its initial norm (0: off); applied
    after the spectral projection when both are set."""
    damping_feedback: bool = False
    """Without jacreg: raise the damping c x1.3 when res > 1e-3, lower it x0.97 when res < 2e-4."""
    damping_max: float = 8.0
    """Ceiling of the damping feedback."""

    def __post_init__(self):
        for key in ("jacreg", "jacreg_max", "resreg", "eigreg", "gate", "abort_residual", "spectral_bound",
                    "weight_cap", "residual_ema"):
            check(getattr(self, key) >= 0, key, getattr(self, key), "must be >= 0", "use 0 for off")
        check(self.residual_target > 0, "residual_target", self.residual_target, "must be > 0")
        check(0 <= self.residual_ema < 1, "residual_ema", self.residual_ema, "must be in [0, 1)")
        check(self.abort_patience >= 1, "abort_patience", self.abort_patience, "must be >= 1",
              "e.g. 20 steps")
        check(self.diverge_loss_factor == 0 or self.diverge_loss_factor > 1, "diverge_loss_factor",
              self.diverge_loss_factor, "must be > 1 (a multiple of the initial loss)", "e.g. 10, or 0 for off")
        check(self.diverge_patience >= 1, "diverge_patience", self.diverge_patience, "must be >= 1",
              "e.g. 10 steps")
        check(self.resreg_full > self.resreg_onset, "resreg_full", self.resreg_full,
              f"must exceed resreg_onset={self.resreg_onset}")


@dataclass
class TrainConfig:
    """The training loop."""

    steps: int = 300
    """Optimizer steps."""
    batch_size: int = 32
    """Sequences (or samples) per step."""
    gradient: str = "ep"
    """Gradient of the digital twin: 'ep', 'bptt' or 'adjoint'."""
    twins: tuple[str, ...] = ("analog", "digital")
    """Twins trained side by side from the same initial weights on the same batches: 'analog'
    (the chip), 'digital' (ideal weights, exact relaxation, EP), 'bptt' (digital, BPTT)."""
    update_cos: bool = False
    """Also record, each step, the cosine between the analog twin's update and the digital EP
    gradient at the analog weights (one extra digital EP evaluation per step)."""
    eval_every: int = 50
    """Steps between validation evaluations (step 0 and the last step are always evaluated;
    evaluation has its own noise generators, so this does not change training)."""
    eval_batches: int = 4
    """Fixed validation batches per evaluation (the same for every twin and every evaluation).
    Text data only: on classification data (digits) every held-out sample is evaluated."""
    checkpoint_every: int = 10
    """Steps between checkpoints (state.pt, run.h5, best.pt; every evaluation and the last step also
    checkpoint, and only they redraw curves.png): a kill loses at most this many steps (~11 s of
    the default job)."""
    ema: float = 0.0
    """Parameter-EMA decay used for evaluation (0: off)."""
    seed: int = 0
    """Seed of the batch sampler and the stabilisers' random probes."""

    def __post_init__(self):
        check(self.gradient in GRADIENTS, "gradient", self.gradient, "unknown gradient",
              f"use one of {', '.join(GRADIENTS)}")
        for key in ("steps", "batch_size", "eval_every", "eval_batches", "checkpoint_every"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1", "e.g. 10")
        check(0 <= self.ema < 1, "ema", self.ema, "must be in [0, 1)")
        self.twins = tuple(self.twins)
        for name in self.twins:
            check(name in TWINS, "twins", list(self.twins), f"unknown twin {name!r}", f"use some of {', '.join(TWINS)}")
        check(len(set(self.twins)) == len(self.twins) and self.twins, "twins", list(self.twins),
              "must name each twin at most once, and at least one")
