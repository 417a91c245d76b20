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
from typing import Iterable, Iterator

import torch
from torch import nn

from analog_ep.errors import check
from analog_ep.schema.train import (DEFAULT_BETAS, OPTIMIZERS, SCHEDULES,  # noqa: F401  (re-exported)
                                    OptimizerConfig, ScheduleConfig)



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
