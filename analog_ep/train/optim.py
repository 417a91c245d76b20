"""Optimizers, learning-rate schedules and a parameter EMA.

Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") is the optimizer of
choice for analog hardware: its update is a sign per weight, i.e. one pulse up, one pulse down or
none, times one learning rate per array. `Lion.sign_updates()` returns those signs *without*
applying them so the analog twin can write them as device pulses; `Lion.step()` applies the same
signs digitally.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import nn

from analog_ep.errors import ConfigError, check

OPTIMIZERS = ("lion", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "wsd")
#: Betas used when `OptimizerConfig.betas` is None (each optimizer's published default).
DEFAULT_BETAS = {"lion": (0.9, 0.99), "adamw": (0.9, 0.999)}


# ---- Lion -----------------------------------------------------------------------------------------
class Lion(torch.optim.Optimizer):
    """Lion: u = sign(b1*m + (1-b1)*g); p *= 1 - lr*wd; p -= lr_eff*u; m = b2*m + (1-b2)*g.

    With `trust_ratio`, each tensor's step is scaled by ||p|| / ||u|| (LAMB-style), so every
    array moves by the same *relative* amount: one gain per crossbar on hardware. The ratio is 1
    when either norm is zero. Weight decay always uses the base lr (it is decoupled from the step).
    """

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, trust_ratio: bool = False):
        check(lr > 0, "lr", lr, "must be positive")
        for i, b in enumerate(betas):
            check(0.0 <= b < 1.0, f"betas[{i}]", b, "must lie in [0, 1)")
        check(weight_decay >= 0, "weight_decay", weight_decay, "must be non-negative")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                      trust_ratio=trust_ratio))

    @torch.no_grad()
    def sign_updates(self) -> dict[torch.Tensor, tuple[torch.Tensor, float]]:
        """Per parameter with a gradient: (u, lr_eff), u the sign tensor in {-1, 0, 1}.

        Changes nothing. The caller applies `p -= lr_eff * u` (after decaying p by
        `1 - lr*weight_decay` of its group) to the tensors it handles itself, and passes the
        others to `step(updates=...)`, which also updates every momentum while the gradients are
        in place. `lr_eff` is a Python float (one host sync per tensor when
        `trust_ratio` is on).
        """
        updates = {}
        for group in self.param_groups:
            beta1, _ = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].get("exp_avg")
                c = p.grad * (1 - beta1) if m is None else torch.lerp(p.grad, m, beta1)
                u = torch.sign(c)
                lr_eff = group["lr"]
                if group["trust_ratio"]:
                    p_norm, u_norm = float(p.norm()), float(u.norm())
                    if p_norm > 0 and u_norm > 0:
                        lr_eff *= p_norm / u_norm
                updates[p] = (u, lr_eff)
        return updates

    @torch.no_grad()
    def apply_sign_updates(self, updates: dict[torch.Tensor, tuple[torch.Tensor, float]]) -> None:
        """Digitally apply `updates` from `sign_updates()`: decoupled weight decay, then the step."""
        for group in self.param_groups:
            decay = 1 - group["lr"] * group["weight_decay"]
            for p in group["params"]:
                if p in updates:
                    u, lr_eff = updates[p]
                    if decay != 1:
                        p.mul_(decay)
                    p.add_(u, alpha=-lr_eff)

    @torch.no_grad()
    def update_momentum(self) -> None:
        """m = b2*m + (1-b2)*g for every parameter with a gradient (after its step was taken)."""
        for group in self.param_groups:
            _, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg"].lerp_(p.grad, 1 - beta2)

    @torch.no_grad()
    def step(self, closure=None, updates: dict[torch.Tensor, tuple[torch.Tensor, float]] | None = None):
        """One Lion step: `apply_sign_updates(updates)` then `update_momentum()`.

        `updates` defaults to `sign_updates()`. The analog twin passes what is left of them after
        taking out the tensors it writes as device pulses, so that every update still goes through
        `step()`, the call learning-rate schedulers count."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.apply_sign_updates(self.sign_updates() if updates is None else updates)
        self.update_momentum()
        return loss


# ---- optimizer config -------------------------------------------------------------------------------
@dataclass
class OptimizerConfig:
    """Which optimizer to use and its hyper-parameters."""

    name: str = "adamw"
    """One of 'lion', 'adamw', 'sgd' (SGD uses Nesterov momentum)."""

    lr: float = 1e-3
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

    @property
    def resolved_betas(self) -> tuple[float, float]:
        """`betas`, or the chosen optimizer's default when None."""
        return self.betas if self.betas is not None else DEFAULT_BETAS.get(self.name, (0.9, 0.999))


def build_optimizer(params, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The optimizer named by `cfg` over `params` (tensors or param-group dicts)."""
    if cfg.name == "lion":
        return Lion(params, lr=cfg.lr, betas=cfg.resolved_betas, weight_decay=cfg.weight_decay,
                    trust_ratio=cfg.trust_ratio)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.resolved_betas,
                                 weight_decay=cfg.weight_decay)
    # torch.optim.SGD's weight_decay is coupled L2; it equals decoupled decay for plain SGD and
    # is the usual choice with momentum.
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float) -> float:
    """Clip the global gradient norm to `max_norm` (0 = off) and return the norm before clipping."""
    norm = nn.utils.clip_grad_norm_(list(params), max_norm if max_norm > 0 else math.inf)
    return float(norm)


# ---- learning-rate schedules --------------------------------------------------------------------------
@dataclass
class ScheduleConfig:
    """Learning-rate schedule as a factor of the peak lr, per optimizer step."""

    name: str = "cosine"
    """'constant', 'cosine' (decay over the whole run after warmup) or 'wsd' (warmup-stable-decay)."""

    warmup: int = 0
    """Steps of linear warmup: step s < warmup (0-based) uses (s+1)/warmup of the peak."""

    total_steps: int = 1000
    """Number of optimizer steps in the run; the last one (total_steps-1) uses min_ratio."""

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


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR multiplying each group's lr by `cfg.factor(step)`; call `.step()` after each step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, cfg.factor)


# ---- parameter EMA ----------------------------------------------------------------------------------
def _param_list(params) -> list[torch.Tensor]:
    return list(params.parameters()) if isinstance(params, nn.Module) else list(params)


class ParameterEMA:
    """Exponential moving average of parameters: ema = decay*ema + (1-decay)*p after each update.

    Evaluate with the averaged weights inside `with ema.applied(model): ...`; the live weights are
    restored on exit. Low-precision parameters are averaged in float32.
    """

    def __init__(self, params, decay: float = 0.999):
        """Track `params` (a module or tensors); the average starts at their current values."""
        check(0.0 <= decay < 1.0, "ema.decay", decay, "must lie in [0, 1)", "use e.g. 0.999")
        self.params = _param_list(params)
        self.decay = decay
        self.num_updates = 0
        self.shadow = [self._copy(p) for p in self.params]

    @staticmethod
    def _copy(p: torch.Tensor) -> torch.Tensor:
        p = p.detach()
        low = p.is_floating_point() and torch.finfo(p.dtype).bits < 32
        return p.to(torch.float32, copy=True) if low else p.clone()

    def _match(self, params) -> list[torch.Tensor]:
        params = self.params if params is None else _param_list(params)
        if len(params) != len(self.shadow) or any(
                p.shape != s.shape for p, s in zip(params, self.shadow)):
            raise ValueError("ParameterEMA: the parameters differ from those it was built with")
        return params

    @torch.no_grad()
    def update(self, params=None) -> None:
        """Fold the current values of `params` (default: the tracked ones) into the average."""
        for p, s in zip(self._match(params), self.shadow):
            s.lerp_(p.detach().to(s.dtype), 1 - self.decay)
        self.num_updates += 1

    @contextmanager
    def applied(self, params=None) -> Iterator[None]:
        """Temporarily load the averaged values into `params`; the live values return on exit."""
        params = self._match(params)
        # no_grad only around the copies: the body keeps the caller's grad mode.
        with torch.no_grad():
            backup = [p.detach().clone() for p in params]
            for p, s in zip(params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup):
                    p.copy_(b)

    def state_dict(self) -> dict:
        """The average and its counters (tensors are the live shadows; clone to keep a snapshot)."""
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": list(self.shadow)}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`; shapes must match the tracked parameters."""
        if len(state["shadow"]) != len(self.shadow) or any(
                t.shape != s.shape for t, s in zip(state["shadow"], self.shadow)):
            raise ValueError("ParameterEMA.load_state_dict: shadow shapes do not match the parameters")
        self.decay, self.num_updates = state["decay"], state["num_updates"]
        for s, t in zip(self.shadow, state["shadow"]):
            s.copy_(t)


__all__ = ["Lion", "OptimizerConfig", "build_optimizer", "clip_gradients", "ScheduleConfig",
           "build_scheduler", "ParameterEMA", "OPTIMIZERS", "SCHEDULES"]
