"""Keeping the equilibrium operator inside the estimator's validity region.

EP is only valid at a settled fixed point, and training drifts the operator toward instability
(a complex eigenvalue pair crossing into Re mu > 0: a Hopf bifurcation). The research trainer's
stack, as composable pieces:

* jacreg - Hutchinson estimate of ||J_nc||_F^2 at z*, penalised with a weight w (Bai et al. 2021);
* a residual-driven controller for that weight: w <- clip(w (res_ema / target)^0.3, floor, max);
* resreg - the T1-residual penalty ||eps F(z_T1)||^2 / ||z_T1||^2, scaled to a fraction of the task
  gradient's norm and ramped in by the residual (it defends the state evaluation actually uses);
* eigreg - a one-sided penalty on the numerical abscissa of J_nc above a margin;
* a validity gate (skip the task gradient above a residual), an abort fuse (stop after N
  consecutive steps above a residual), spectral-norm projection and weight-norm caps.

The penalties' Jacobian products come from `analog_ep.linear` and read the weights the caller
names (`reads`): the model's parameters, or a chip's effective conductances (the co-processor of
an analog twin); their gradients are returned under the parameters' names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from analog_ep.errors import AnalogEPError, check
from analog_ep.linear import abscissa, linearize, weight_leaves
from analog_ep.model.base import EquilibriumModel


@dataclass
class StabilizerConfig:
    """Stabilisers applied around each training step (all off at their defaults unless noted)."""

    jacreg: float = 0.0
    """Initial weight of the Jacobian penalty ||J_nc||_F^2 (0: off)."""
    jacreg_floor: float | None = None
    """Controller floor for the jacreg weight (None: the initial jacreg). Keep it > 0: runs whose
    weight fell to 0 blew up."""
    jacreg_max: float = 16.0
    """Controller ceiling for the jacreg weight."""
    residual_target: float = 5e-3
    """Residual the controller steers toward."""
    residual_ema: float = 0.0
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
    """Abort fuse: residual that counts as lost containment (0: off)."""
    abort_patience: int = 100
    """Abort after this many consecutive steps above `abort_residual`."""
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
            check(getattr(self, key) >= 0, key, getattr(self, key), "must be >= 0")
        check(self.residual_target > 0, "residual_target", self.residual_target, "must be > 0")
        check(0 <= self.residual_ema < 1, "residual_ema", self.residual_ema, "must be in [0, 1)")
        check(self.abort_patience >= 1, "abort_patience", self.abort_patience, "must be >= 1")
        check(self.resreg_full > self.resreg_onset, "resreg_full", self.resreg_full,
              f"must exceed resreg_onset={self.resreg_onset}")


class AbortTraining(AnalogEPError):
    """The abort fuse tripped: the relaxation lost containment and did not recover."""


def _force_names(model: EquilibriumModel) -> list[str]:
    return [n for n, _ in model.force_parameters()]


def _grads(objective: torch.Tensor, leaves: dict[str, torch.Tensor], scale: float = 1.0) -> dict[str, torch.Tensor]:
    gs = torch.autograd.grad(objective, list(leaves.values()), allow_unused=True)
    return {n: scale * g for n, g in zip(leaves, gs) if g is not None}


def jacobian_penalty(model: EquilibriumModel, x_in: torch.Tensor, z: torch.Tensor, weight: float,
                     generator: torch.Generator | None = None, reads: str = "parameters") -> dict[str, torch.Tensor]:
    """Gradients of weight * ||J_nc e||^2 / ||e||^2 (Hutchinson, one Gaussian probe e) in theta."""
    if not model.has_nc_force:
        return {}
    leaves = weight_leaves(model, reads, _force_names(model))
    e = torch.randn(z.shape, generator=generator, dtype=z.dtype)
    with torch.enable_grad():
        op = linearize(model, x_in, z, part="nc", differentiable=True, leaves=leaves)
        jv = op.jvp(e)  # J_nc e, differentiable in theta
        return _grads(weight * jv.pow(2).sum() / e.pow(2).sum(), leaves)


def residual_penalty(model: EquilibriumModel, x_in: torch.Tensor, z_budget: torch.Tensor, eps: float,
                     reads: str = "parameters") -> dict[str, torch.Tensor]:
    """Gradients of ||eps F(z_T1)||^2 / ||z_T1||^2 in theta, with z_T1 and x_in held fixed."""
    leaves = weight_leaves(model, reads, _force_names(model))
    substitutes = {n: t for n, t in leaves.items() if not isinstance(t, torch.nn.Parameter)}
    with torch.enable_grad(), model.substituted(substitutes):
        z = z_budget.detach()
        f = model.force(z, x_in.detach())
        return _grads((eps * f).pow(2).sum() / (z.pow(2).sum() + 1e-9), leaves)


def numerical_abscissa(model: EquilibriumModel, x_in: torch.Tensor, z: torch.Tensor,
                       v0: torch.Tensor | None = None, tol: float = 1e-3, reads: str = "parameters"
                       ) -> tuple[float, torch.Tensor]:
    """omega(J_nc) = max eigenvalue of (J_nc + J_nc^T)/2 at z, and its unit eigenvector
    (`analog_ep.linear.abscissa`, from a fixed start so eigreg's gradient is reproducible)."""
    op = linearize(model, x_in, z, part="nc", reads=reads)
    return abscissa(op, z, v0=v0, tol=tol, maxiter=max(200, z.numel() // 10))


def abscissa_penalty(model: EquilibriumModel, x_in: torch.Tensor, z: torch.Tensor, weight: float,
                     margin: float, cache: dict, reads: str = "parameters") -> tuple[dict[str, torch.Tensor], float]:
    """Gradients of weight * relu(omega - margin)^2, using d omega / d theta = d(u^T J_nc u)/d theta."""
    omega, u_vec = numerical_abscissa(model, x_in, z, cache.get("v0"), reads=reads)
    cache["v0"] = u_vec
    if omega <= margin:
        return {}, omega
    leaves = weight_leaves(model, reads, _force_names(model))
    with torch.enable_grad():
        op = linearize(model, x_in, z, part="nc", differentiable=True, leaves=leaves)
        rayleigh = (u_vec * op.jvp(u_vec)).sum()  # u^T J_nc u = omega at the eigenvector, live in theta
        return _grads(rayleigh, leaves, 2.0 * weight * (omega - margin)), omega


class JacobianController:
    """Residual-driven jacreg weight: multiplicative steering toward a target residual."""

    def __init__(self, config: StabilizerConfig):
        self.config = config
        self.weight = config.jacreg
        self.floor = config.jacreg if config.jacreg_floor is None else config.jacreg_floor
        self.residual_smoothed: float | None = None

    def update(self, residual: float) -> float:
        cfg = self.config
        if cfg.jacreg <= 0:
            return 0.0
        ema = cfg.residual_ema
        self.residual_smoothed = residual if self.residual_smoothed is None else \
            ema * self.residual_smoothed + (1 - ema) * residual
        factor = ((self.residual_smoothed + 1e-9) / cfg.residual_target) ** cfg.controller_exponent
        self.weight = min(cfg.jacreg_max, max(self.floor, self.weight * factor))
        return self.weight

    def state_dict(self) -> dict:
        return {"weight": self.weight, "residual_smoothed": self.residual_smoothed}

    def load_state_dict(self, state: dict) -> None:
        self.weight, self.residual_smoothed = state["weight"], state["residual_smoothed"]


class AbortFuse:
    """Counts consecutive steps above the abort residual and trips after `patience` of them."""

    def __init__(self, config: StabilizerConfig):
        self.threshold, self.patience, self.count = config.abort_residual, config.abort_patience, 0

    def update(self, residual: float, step: int) -> None:
        if self.threshold <= 0:
            return
        self.count = self.count + 1 if residual > self.threshold else 0
        if self.count >= self.patience:
            raise AbortTraining(f"step {step}: residual above {self.threshold:g} for {self.count} consecutive "
                                "steps: the relaxation lost containment (raise jacreg or lower the learning rate)")


def resreg_fraction(config: StabilizerConfig, residual: float) -> float:
    """Fraction of the task-gradient norm given to resreg at this residual (0 below the onset)."""
    if config.resreg <= 0 or residual <= config.resreg_onset:
        return 0.0
    return config.resreg * min(1.0, residual / config.resreg_full)


def add_scaled(target: dict[str, torch.Tensor], extra: dict[str, torch.Tensor], scale: float = 1.0) -> None:
    """target += scale * extra, name by name (names missing in target are added)."""
    for n, g in extra.items():
        target[n] = scale * g if n not in target else target[n] + scale * g


def grad_norm(grads: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))


class WeightConstraints:
    """Post-step projections: spectral-norm bound and Frobenius caps relative to the initial norms."""

    def __init__(self, model: EquilibriumModel, config: StabilizerConfig):
        self.config = config
        self.matrices = list(model.weight_matrices())
        self.caps = {n: float(p.detach().norm()) * config.weight_cap for n, p in self.matrices}
        self._u: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def apply(self) -> dict[str, float]:
        """Project in place; returns name -> largest singular value estimate (when bounded)."""
        sigmas = {}
        for name, w in self.matrices:  # both constraints apply when both are set
            if self.config.spectral_bound > 0:
                sigma = self._power_sigma(name, w)
                sigmas[name] = sigma
                if sigma > self.config.spectral_bound:
                    w.mul_(self.config.spectral_bound / sigma)
            if self.config.weight_cap > 0:
                norm = float(w.norm())
                if norm > self.caps[name]:
                    w.mul_(self.caps[name] / norm)
        return sigmas

    def _power_sigma(self, name: str, w: torch.Tensor) -> float:
        u = self._u.get(name)
        iters = 2  # warm-started: two iterations per step track a slowly moving sigma
        if u is None:  # cold start, seeded per matrix so runs reproduce from the config alone
            gen = torch.Generator().manual_seed(len(self._u))
            u = torch.nn.functional.normalize(torch.randn(w.shape[0], generator=gen, dtype=w.dtype), dim=0)
            iters = 20
        for _ in range(iters):
            v = torch.nn.functional.normalize(w.t() @ u, dim=0)
            u = torch.nn.functional.normalize(w @ v, dim=0)
        self._u[name] = u
        return float(u @ (w @ v))

    def state_dict(self) -> dict:
        return {"caps": dict(self.caps), "u": {n: u.clone() for n, u in self._u.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.caps.update(state["caps"])
        self._u.update(state.get("u", {}))  # warm power-iteration vectors
