"""Equilibrium-propagation gradient estimators (vector-field form).

Given the free fixed point z*, nudged relaxations estimate the adjoint state
    a = -dz*/dbeta  (= lambda solving J^T lambda = -dloss/dz when the AEP correction is on),
and the parameter update is one vector-Jacobian product at the fixed point,
    grad_theta = d/dtheta <a, F(z*; theta)>   (+ the readout's local gradient),
never backpropagation through the relaxation: memory does not depend on T1 or T2.

Nudge points. Every variant evaluates the nudged dynamics
    z <- z + eps [F(z) - beta_k dloss/dz(z) - corr_k(z)]
at points beta_k = r exp(i phi_k) and combines them with a discrete Cauchy integral
    a = -Re[ (1 / (N r)) sum_k exp(-i phi_k) (z_k - z*) ].
One-sided EP is N=1 (bias O(beta)); centred EP is N=2, +-beta (bias O(beta^2)); holomorphic EP
(Laborieux & Zenke 2022) uses N points on a circle of radius r (bias O(r^N)) with the
holomorphically extended force and no clamps. Conjugate points give conjugate trajectories (the
dynamics are real-analytic), so only k = 0..N//2 are integrated and the rest are mirrored.

AEP correction (Scurria et al. 2026): corr(z) = J_nc v - J_nc^T v with v = z - z* turns the
non-conservative part's J into J^T; it is real-linear, so complex states are corrected part by
part. 'frozen' linearises J_nc once at z*; 'tracking' re-linearises it every step at the common
mode of the nudge points (v stays the displacement from z*). The correction is clipped to the norm of the nudged force.

All points are integrated together as one stacked batch (P*B samples), so each step is a single
call of the force and of the Jacobian products.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from analog_ep.errors import check
from analog_ep.estimator.linear import JacobianProducts
from analog_ep.model.base import EquilibriumModel
from analog_ep.relax.solvers import Relaxation, RelaxConfig, relax
from analog_ep.schema.estimator import AEP_MODES, EPConfig  # noqa: F401  (re-exported)




@dataclass
class NudgePoints:
    """The beta_k of the stacked nudges and the Cauchy weights that combine them."""

    betas: list[complex]
    weights: list[float]
    n_circle: int
    radius: float

    @property
    def complex(self) -> bool:
        return any(abs(b.imag) > 0 for b in self.betas)

    @staticmethod
    def from_config(cfg: EPConfig) -> "NudgePoints":
        if cfg.holomorphic:
            N, r = cfg.holomorphic, cfg.radius
            ks = range(N // 2 + 1)
            betas = [_circle_point(r, k, N) for k in ks]
            weights = [1.0 if k == 0 or 2 * k == N else 2.0 for k in ks]
            return NudgePoints(betas, weights, N, r)
        if cfg.centered:
            return NudgePoints([complex(cfg.beta), complex(-cfg.beta)], [1.0, 1.0], 2, cfg.beta)
        return NudgePoints([complex(cfg.beta)], [1.0], 1, cfg.beta)

    def contrast(self, z: torch.Tensor, z_star: torch.Tensor) -> torch.Tensor:
        """a = -Re[(1/(N r)) sum_k w_k exp(-i phi_k) (z_k - z*)] from the stacked states z."""
        parts = z.reshape(len(self.betas), *z_star.shape)  # (P*B, ...) -> (P, B, ...)
        a = torch.zeros_like(z_star)
        for zk, beta, w in zip(parts, self.betas, self.weights):
            rot = beta.conjugate() / abs(beta)  # exp(-i phi_k)
            dz = zk - z_star
            a -= w * (rot.real * dz.real - rot.imag * dz.imag if dz.is_complex() else rot.real * dz)
        return a / (self.n_circle * self.radius)

    def common_mode(self, z: torch.Tensor, z_star: torch.Tensor) -> torch.Tensor:
        """Mean state over all nudge points (mirrored ones included): real by symmetry."""
        parts = z.reshape(len(self.betas), *z_star.shape)
        if self.n_circle == 1:  # one-sided: midway between the free and the nudged state
            return 0.5 * (z_star + parts[0].real)
        total = sum(w * zk.real for zk, w in zip(parts, self.weights))
        return total / self.n_circle


def _circle_point(r: float, k: int, n: int) -> complex:
    phi = 2.0 * math.pi * k / n
    c, s = math.cos(phi), math.sin(phi)
    # Exact zeros/signs at multiples of pi/2 keep the real points real.
    c, s = (0.0 if abs(c) < 1e-15 else c), (0.0 if abs(s) < 1e-15 else s)
    return complex(r * c, r * s)


@dataclass
class Adjoint:
    """The estimated adjoint state and what it cost."""

    a: torch.Tensor
    """Adjoint estimate, shape of z*."""
    nudge_steps: int
    """Nudge steps taken per restart (the selected snapshot's step under adaptive T2)."""
    force_evals: int
    """Force evaluations of B samples spent in the nudged phases."""
    jacobian_products: int = 0
    """Jacobian-vector and vector-Jacobian products (B samples each) of the AEP correction."""


def _per_point_norm(t: torch.Tensor, points: int) -> torch.Tensor:
    flat = t.reshape(points, -1)
    norm = flat.abs().norm(dim=1) if flat.is_complex() else flat.norm(dim=1)
    return norm.view(points, *([1] * (t.ndim - 1)))  # broadcast over each point's block


def clip_correction(corr: torch.Tensor, force: torch.Tensor, points: int, ratio: float) -> torch.Tensor:
    """Scale each nudge point's correction down to at most `ratio` x the norm of its force (0: off)."""
    if ratio <= 0:
        return corr
    cn, fn = _per_point_norm(corr, points), ratio * _per_point_norm(force, points) + 1e-8
    scale = torch.where(cn > fn, fn / cn, torch.ones_like(cn))
    return (corr.reshape(points, -1) * scale.reshape(points, 1)).reshape(corr.shape)


class _Correction:
    """AEP correction for a stack of P points, real-linear in v (complex v is split into re/im)."""

    def __init__(self, model: EquilibriumModel, x_in: torch.Tensor, z_lin: torch.Tensor, slots: int):
        x_rep = x_in.repeat(slots, *([1] * (x_in.ndim - 1)))
        z_rep = z_lin.repeat(slots, *([1] * (z_lin.ndim - 1)))
        closed_form = getattr(model, "linearize_nc", None)  # a model may know its J_nc analytically
        self.products = (closed_form(z_rep) if closed_form else None) or \
            JacobianProducts(lambda u: model.nc_force(u, x_rep), z_rep)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if not v.is_complex():
            return self.products.antisymmetric(v)
        both = self.products.antisymmetric(torch.cat([v.real, v.imag]))
        re, im = both.chunk(2)
        return torch.complex(re, im)


def estimate_adjoint(model: EquilibriumModel, x_in: torch.Tensor, y: torch.Tensor, z_star: torch.Tensor,
                     config: EPConfig) -> Adjoint:
    """Run the nudged phases from z* and return the adjoint estimate a ~ -dz*/dbeta."""
    points = NudgePoints.from_config(config)
    if points.complex and not model.analytic:
        check(False, "holomorphic", config.holomorphic,
              f"{type(model).__name__} in this mode has no holomorphic extension (relu terms)",
              "use a real estimator (holomorphic: 0) or an analytic model such as mode 'thick'")
    aep = config.aep if model.nc_force(z_star[:1], x_in[:1]) is not None else "none"
    total, steps_used, evals, products = None, 0, 0, 0
    for _ in range(config.restarts):
        a, steps_used, ev, pr = _nudge(model, x_in, y, z_star, config, points, aep)
        total = a if total is None else total + a
        evals, products = evals + ev, products + pr
    return Adjoint(total / config.restarts, steps_used, evals, products)


def _nudge(model, x_in, y, z_star, cfg: EPConfig, points: NudgePoints, aep: str):
    P = len(points.betas)
    dtype = torch.complex64 if points.complex else z_star.dtype
    if z_star.dtype == torch.float64 and points.complex:
        dtype = torch.complex128
    bshape = (P, *z_star.shape)  # per-point beta broadcast over that point's block of samples
    beta = torch.tensor(points.betas, dtype=torch.complex128).to(dtype) if points.complex else \
        torch.tensor([b.real for b in points.betas], dtype=z_star.dtype)
    beta = beta.to(z_star.device)
    beta = beta.view(P, *([1] * z_star.ndim)).expand(bshape).reshape(P * z_star.shape[0], *z_star.shape[1:])
    rep = lambda t: t.repeat(P, *([1] * (t.ndim - 1)))  # noqa: E731  (B, ...) -> (P*B, ...)
    x_rep, y_rep, z_lin = rep(x_in), rep(y), rep(z_star)
    slots = P * (2 if points.complex else 1)
    frozen = _Correction(model, x_in, z_star, slots) if aep == "frozen" else None
    clip = cfg.nudge_clip if (cfg.nudge_clip > 0 and not cfg.holomorphic) else 0.0

    z = z_lin.to(dtype).clone()
    horizon = cfg.select_cap or cfg.steps
    best, best_inc, best_step, prev = None, math.inf, 0, None
    evals = products = 0
    with torch.no_grad():
        for t in range(1, horizon + 1):
            g = model.loss_grad(z, y_rep) * P  # loss_grad averages over all P*B rows
            if clip:
                g = g.clamp(-clip, clip)
            f = model.force(z, x_rep) - beta * g
            evals += P
            if aep != "none":
                if aep == "frozen":
                    corr_op = frozen
                else:  # re-linearise at the common mode; the displacement stays measured from z*
                    corr_op = _Correction(model, x_in, points.common_mode(z, z_star), slots)
                corr = corr_op(z - z_lin)
                products += 2 * slots
                f = f - clip_correction(corr, f, P, cfg.aep_clip)
            z = z + cfg.eps * f
            if cfg.select_cap and (t % cfg.select_every == 0 or t == horizon):
                a = points.contrast(z, z_star)
                if prev is not None:
                    inc = float((a - prev).norm())
                    if inc <= best_inc:
                        best, best_inc, best_step = a, inc, t
                prev = a
    if not cfg.select_cap or best is None:
        best, best_step = points.contrast(z, z_star), horizon
    return best, best_step, evals, products


def vector_field_gradient(model: EquilibriumModel, x: torch.Tensor, y: torch.Tensor, z_star: torch.Tensor,
                          a: torch.Tensor) -> dict[str, torch.Tensor]:
    """grad_theta <a, F(z*; theta)> for force parameters plus d loss(z*)/d theta for the readout."""
    force_params = model.force_parameters()
    readout = model.readout_parameters()
    grads: dict[str, torch.Tensor] = {}
    with torch.enable_grad():
        x_in = model.drive(x)  # live: embeddings learn through the clamp
        f = model.force(z_star.detach(), x_in)
        gs = torch.autograd.grad((a.detach() * f).sum(), [p for _, p in force_params], allow_unused=True)
        for (name, p), g in zip(force_params, gs):
            grads[name] = torch.zeros_like(p) if g is None else g
        if readout:
            loss = model.loss(z_star.detach(), y)
            gs = torch.autograd.grad(loss, [p for _, p in readout])
            grads.update({name: g for (name, _), g in zip(readout, gs)})
    return grads


@dataclass
class EPResult:
    """One EP gradient evaluation."""

    grads: dict[str, torch.Tensor]
    """Parameter name -> gradient estimate (a descent direction of the loss)."""
    free: Relaxation
    """The free-phase relaxation (residual, force evaluations...)."""
    adjoint: Adjoint
    """The nudged phases' adjoint estimate."""
    loss: float
    """Task loss at the free fixed point."""
    force_evals: int = field(init=False)
    """Force evaluations of B samples in total (free + nudged + the final vector-field product)."""

    def __post_init__(self):
        self.force_evals = self.free.force_evals + self.adjoint.force_evals + 1


def ep_gradient(model: EquilibriumModel, x: torch.Tensor, y: torch.Tensor, relax_config: RelaxConfig,
                ep_config: EPConfig) -> EPResult:
    """Free phase, nudged phases, vector-field readout: the full EP gradient for one batch."""
    with torch.no_grad():
        x_in = model.drive(x)
        free = relax(lambda z: model.force(z, x_in), model.initial_state(x_in), relax_config)
        loss = float(model.loss(free.z, y))
    adjoint = estimate_adjoint(model, x_in, y, free.z, ep_config)
    grads = vector_field_gradient(model, x, y, free.z, adjoint.a)
    return EPResult(grads, free, adjoint, loss)
