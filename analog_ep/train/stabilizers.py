"""Keeping the equilibrium operator inside the estimator's validity region.

EP is only valid at a settled fixed point, and training drifts the operator toward instability
(a complex eigenvalue pair crossing into Re mu > 0: a Hopf bifurcation). The research trainer's
stack, as composable pieces:

* jacreg - Hutchinson estimate of ||J_nc||_F^2 at z*, penalised with a weight w (Bai et al. 2021);
* a residual-driven controller for that weight: w <- clip(w (res_ema / target)^0.3, floor, max);
* resreg - the T1-residual penalty ||eps F(z_T1)||^2 / ||z_T1||^2, scaled to a fraction of the task
  gradient's norm and ramped in by the residual (it defends the state evaluation actually uses);
* eigreg - a one-sided penalty on the numerical abscissa of J_nc above a margin;
* a validity gate (skip the task gradient above a residual), spectral-norm projection and
  weight-norm caps;
* divergence detection (`DivergenceMonitor`): a non-finite loss, gradient or state; a loss above
  a multiple of the initial one for a patience window; the residual above the abort fuse for its
  patience. A run stops a diverged twin and says why (`analog_ep.run`).

The penalties' Jacobian products come from `analog_ep.linear` and read the weights the caller
names (`reads`): the model's parameters, or a chip's effective conductances (the co-processor of
an analog twin); their gradients are returned under the parameters' names.
"""
from __future__ import annotations

import math

import torch

from analog_ep.linear import abscissa, linearize, weight_leaves
from analog_ep.model.base import EquilibriumModel
from analog_ep.schema.train import StabilizerConfig  # noqa: F401  (re-exported)


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
        op = linearize(model, x_in, z, part="nc", reads=reads, differentiable=True, leaves=leaves)
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
        op = linearize(model, x_in, z, part="nc", reads=reads, differentiable=True, leaves=leaves)
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


class DivergenceMonitor:
    """Watches one twin's steps and says when, and why, it has diverged.

    `start(initial_loss)` sets the reference (the twin's validation loss before training); then
    `update(loss, residual, grad_norm, step)` after every step returns None, or a one-line reason
    once the twin has diverged:

    * a non-finite training loss, gradient norm or free state (its residual): at once;
    * a training loss above `diverge_loss_factor` x the initial loss for `diverge_patience`
      consecutive steps;
    * a residual above `abort_residual` (the abort fuse) for `abort_patience` consecutive steps.
    """

    def __init__(self, config: StabilizerConfig):
        self.config = config
        self.initial_loss: float | None = None
        self.loss_steps = 0  # consecutive steps above the loss threshold
        self.residual_steps = 0  # consecutive steps above the abort residual

    def start(self, initial_loss: float) -> None:
        self.initial_loss = float(initial_loss)

    def update(self, loss: float, residual: float, grad_norm: float, step: int) -> str | None:
        cfg = self.config
        for what, value in (("training loss", loss), ("gradient norm", grad_norm), ("free-state residual", residual)):
            if not math.isfinite(value):
                return f"step {step}: non-finite {what} ({value})"
        if self.initial_loss is None:  # no validation before training: the first loss is the reference
            self.initial_loss = loss
        limit = cfg.diverge_loss_factor * self.initial_loss
        self.loss_steps = self.loss_steps + 1 if cfg.diverge_loss_factor > 0 and loss > limit else 0
        if self.loss_steps >= cfg.diverge_patience:
            return (f"step {step}: loss {loss:.3g} > {cfg.diverge_loss_factor:g} x initial {self.initial_loss:.3g} "
                    f"for {self.loss_steps} steps")
        over = cfg.abort_residual > 0 and residual > cfg.abort_residual
        self.residual_steps = self.residual_steps + 1 if over else 0
        if self.residual_steps >= cfg.abort_patience:
            return (f"step {step}: residual {residual:.3g} > abort_residual {cfg.abort_residual:g} "
                    f"for {self.residual_steps} steps (the relaxation lost containment)")
        return None

    def state_dict(self) -> dict:
        return {"initial_loss": self.initial_loss, "loss_steps": self.loss_steps,
                "residual_steps": self.residual_steps}

    def load_state_dict(self, state: dict) -> None:
        self.initial_loss, self.loss_steps, self.residual_steps = (
            state["initial_loss"], state["loss_steps"], state["residual_steps"])


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
