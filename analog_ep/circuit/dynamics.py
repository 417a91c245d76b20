"""The relaxation as the physics of a circuit: tau dz/dt = F_hw(z).

Each node is a capacitor charged by the crossbars' output currents; `tau` is its time constant.
Pieces, joined by `integrate` (diffrax style):

* the *term* (`CircuitTerm`): the vector field, optionally with a finite-bandwidth amplifier (an
  extra pole: tau dz/dt = u, tau_amp du/dt = F(z) - u), and rail saturation of the node voltages;
* the *solvers*: explicit Euler, classic RK4 (fixed dt) and adaptive Dormand-Prince 5(4) with an
  rtol/atol error controller; thermal noise enters as an SDE (Euler-Maruyama increment),
      dz = F(z)/tau dt + noise * sqrt(2/tau) dW,
  scaled so that a node with unit leak settles to a stationary spread of `noise`, whatever dt;
* the optical *loop* kind, which is no ODE: z <- z + eps F_noisy(z) once per pass of the loop.

Steps are pure (state in, state out) and build no autograd graph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from analog_ep.errors import check
from analog_ep.schema.circuit import INTEGRATORS, KINDS, CircuitConfig  # noqa: F401  (re-exported)

Force = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class CircuitState:
    """Node voltages z, the amplifier outputs u (with a finite-bandwidth amplifier) and time t (s)."""

    z: torch.Tensor
    u: torch.Tensor | None = None
    t: float = 0.0


class CircuitTerm:
    """The vector field of the circuit; counts force evaluations."""

    def __init__(self, force: Force, config: CircuitConfig):
        self.force, self.config = force, config
        self.evals = 0

    def initial(self, z0: torch.Tensor) -> CircuitState:
        """Start at z0 with the amplifier (if any) already tracking the force there."""
        z = self._rails(z0.detach().clone())
        u = self.evaluate(z) if self.config.amp_tau > 0 else None
        return CircuitState(z, u, 0.0)

    def evaluate(self, z: torch.Tensor) -> torch.Tensor:
        self.evals += 1
        with torch.no_grad():
            return self.force(z)

    def drift(self, z: torch.Tensor, u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(dz/dt, du/dt) in units per second."""
        cfg = self.config
        if u is None:
            return self.evaluate(z) / cfg.tau, None
        return u / cfg.tau, (self.evaluate(z) - u) / cfg.amp_tau

    def _rails(self, z: torch.Tensor) -> torch.Tensor:
        v = self.config.v_rail
        return z.clamp_(-v, v) if v > 0 else z


def _axpy(state: tuple, derivs: list[tuple], coeffs: list[float], h: float) -> tuple:
    """state + h * sum_i c_i derivs_i, component-wise over (z, u)."""
    out = []
    for k, base in enumerate(state):
        if base is None:
            out.append(None)
            continue
        acc = base.clone()
        for c, d in zip(coeffs, derivs):
            if c:
                acc.add_(d[k], alpha=h * c)
        out.append(acc)
    return tuple(out)


# Dormand-Prince 5(4) tableau (FSAL): nodes, stages, 5th-order weights, 5th-4th error weights.
_DP_A = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
         [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
         [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
         [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]]
_DP_B = [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0]
_DP_E = [71 / 57600, 0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40]


@dataclass
class IntegrationStats:
    """What one `integrate` call spent."""

    steps: int = 0
    """Accepted steps."""
    rejected: int = 0
    """Rejected dopri5 trial steps."""
    dt_next: float = 0.0
    """Step size to continue with (dopri5 keeps it across calls)."""


def integrate(term: CircuitTerm, state: CircuitState, duration: float, generator: torch.Generator | None = None,
              dt: float | None = None) -> tuple[CircuitState, IntegrationStats]:
    """Advance the circuit by `duration` seconds (exactly: the last step is shortened)."""
    cfg = term.config
    if cfg.kind == "loop":
        return _loop(term, state, duration)
    if cfg.integrator == "dopri5":
        return _dopri5(term, state, duration, dt or cfg.dt)
    return _fixed(term, state, duration, generator)


def _noise_increment(z: torch.Tensor, h: float, cfg: CircuitConfig, generator) -> torch.Tensor:
    xi = torch.randn(z.shape, generator=generator, dtype=z.dtype)
    return xi.mul_(cfg.noise * math.sqrt(2.0 * h / cfg.tau))


def _fixed(term: CircuitTerm, state: CircuitState, duration: float, generator):
    cfg = term.config
    n = max(1, math.ceil(duration / cfg.dt - 1e-9))
    check(n <= cfg.max_steps, "dt", cfg.dt, f"needs {n} steps for {duration:g} s (max_steps {cfg.max_steps})",
          "raise dt or max_steps, or shorten the settle time")
    h = duration / n
    y = (state.z, state.u)
    for _ in range(n):
        k1 = term.drift(*y)
        if cfg.integrator == "euler":
            y = _axpy(y, [k1], [1.0], h)
        else:  # classic RK4
            k2 = term.drift(*_axpy(y, [k1], [0.5], h))
            k3 = term.drift(*_axpy(y, [k2], [0.5], h))
            k4 = term.drift(*_axpy(y, [k3], [1.0], h))
            y = _axpy(y, [k1, k2, k3, k4], [1 / 6, 1 / 3, 1 / 3, 1 / 6], h)
        z = y[0]
        if cfg.noise > 0:
            z.add_(_noise_increment(z, h, cfg, generator))
        y = (term._rails(z), y[1])
    return CircuitState(y[0], y[1], state.t + duration), IntegrationStats(n, 0, h)


def _error_norm(err: tuple, y0: tuple, y1: tuple, cfg: CircuitConfig) -> float:
    total, count = 0.0, 0
    for e, a, b in zip(err, y0, y1):
        if e is None:
            continue
        scale = cfg.atol + cfg.rtol * torch.maximum(a.abs(), b.abs())
        total += float((e / scale).pow(2).sum())
        count += e.numel()
    return math.sqrt(total / max(count, 1))


def _dopri5(term: CircuitTerm, state: CircuitState, duration: float, h: float):
    cfg = term.config
    y, t, end = (state.z, state.u), 0.0, duration
    stats = IntegrationStats()
    k_first = term.drift(*y)
    while t < end * (1 - 1e-12):
        check(stats.steps + stats.rejected < cfg.max_steps, "max_steps", cfg.max_steps,
              f"dopri5 needed more steps for {duration:g} s", "loosen rtol/atol or raise max_steps")
        h = min(h, end - t)
        ks = [k_first]
        for a in _DP_A[1:]:
            ks.append(term.drift(*_axpy(y, ks, a, h)))
        y_new = _axpy(y, ks, _DP_B, h)
        err = _axpy(tuple(None if c is None else torch.zeros_like(c) for c in y), ks, _DP_E, h)
        norm = _error_norm(err, y, y_new, cfg)
        factor = 0.9 * norm ** -0.2 if norm > 0 else 5.0
        if norm <= 1.0:
            t += h
            stats.steps += 1
            z = term._rails(y_new[0])
            y = (z, y_new[1])
            # FSAL: the last stage is the drift at the new point, unless the rails moved it.
            k_first = ks[-1] if cfg.v_rail <= 0 else term.drift(*y)
            h *= min(5.0, max(0.2, factor))
        else:
            stats.rejected += 1
            h *= min(1.0, max(0.2, factor))
    stats.dt_next = h
    return CircuitState(y[0], y[1], state.t + duration), stats


def _loop(term: CircuitTerm, state: CircuitState, duration: float):
    """Discrete passes z <- z + eps F(z); F carries the chip's fresh per-pass noise itself."""
    cfg = term.config
    passes = max(1, round(duration / cfg.pass_time))
    z = state.z
    for _ in range(passes):  # the same fused update as the digital Euler relaxation
        z = term._rails(z.add(term.evaluate(z), alpha=cfg.loop_eps))
    return CircuitState(z, None, state.t + passes * cfg.pass_time), IntegrationStats(passes, 0, cfg.pass_time)
