"""The relaxation as the physics of a circuit: the circuit's solvers of the phase API.

Each node is a capacitor charged by the crossbars' output currents; `tau` is its time constant:

    tau dz/dt = F(z)                                  (ideal amplifiers)
    tau dz/dt = u,  amp_tau du/dt = F(z) - u          (a finite-bandwidth amplifier: a second pole)

with F the phase's term (`analog_ep.phase.Term`: the model's force, the nudge, the AEP correction),
node voltages saturating at the rails +-v_rail, and thermal noise as an SDE,

    dz = (...) dt + noise sqrt(2/tau) dW,

scaled so that a node with unit leak settles to a stationary spread of `noise`, whatever dt.

Integrators (`CircuitConfig.integrator`), all pure steps (state in, state out):

* 'exp_euler' - exponential Euler: the linear part - the node leak lambda (`Term.leak`: F(z) =
  -lambda z + N(z)) and the amplifier pole - is integrated exactly over each step, the crossbar
  current N(z) is held over the step; the thermal noise increment is the exact one of that
  linear part (Van Loan's method), so a linear node's stationary spread is exact at any dt. With
  lambda = 0 and no pole it is explicit Euler.
* 'euler', 'rk4' - explicit Euler and classic RK4 on everything (fixed dt), noise by
  Euler-Maruyama increments.
* 'dopri5' - adaptive Dormand-Prince 5(4) with an rtol/atol error controller (no noise).

Fixed steps are checked before a run (`analog_ep.train.backend.check_backend`) and when a solver
starts: `check_step` refuses a dt at which the explicit part would be unstable for a contractive
circuit (crossbar gain below the leak), and explicit Euler at dt >= amp_tau (the pole degenerates
into a one-step delay). A configuration holding such a dt still loads (an old run can be read and
diagnosed); it cannot relax.

The optical `loop` kind is no ODE: z <- z + loop_eps F_noisy(z) once per pass (`LoopSolver`).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import scipy.linalg
import torch

from analog_ep.errors import ConfigError, check
from analog_ep.phase import Solver, State, Term, replaced
from analog_ep.schema.circuit import FIXED_STEP, INTEGRATORS, KINDS, CircuitConfig  # noqa: F401  (re-exported)

#: The monitor's residual is ||RESIDUAL_EPS * tau dz/dt|| / ||z||, numerically the digital
#: relaxation's residual at its default step eps = 0.1, so thresholds carry over.
RESIDUAL_EPS = 0.1


# ---- the exact linear part ------------------------------------------------------------------------

def _linear_part(tau: float, amp_tau: float, leak: float) -> tuple[np.ndarray, np.ndarray]:
    """(A, b): d(z, u)/dt = A (z, u) + b N(z), per node (u only with a pole)."""
    if amp_tau > 0:
        return np.array([[0.0, 1.0 / tau], [-leak / amp_tau, -1.0 / amp_tau]]), np.array([0.0, 1.0 / amp_tau])
    return np.array([[-leak / tau]]), np.array([1.0 / tau])


@functools.lru_cache(maxsize=64)
def exponential_coefficients(tau: float, amp_tau: float, leak: float, h: float, noise: float
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(E, p, L) of an exponential-Euler step of length h: y' = E y + p N(z) + L xi, xi ~ N(0, I).

    E = exp(h A), p = int_0^h exp(s A) b ds (both from one augmented exponential); L L^T the exact
    covariance int_0^h exp(s A) g g^T exp(s A)^T ds of the noise g = (noise sqrt(2/tau), 0)
    entering the node (Van Loan 1978), as its symmetric square root L (L L^T = that covariance).
    """
    A, b = _linear_part(tau, amp_tau, leak)
    n = A.shape[0]
    aug = np.zeros((n + 1, n + 1))
    aug[:n, :n], aug[:n, n] = A, b
    expm = scipy.linalg.expm(aug * h)
    E, p = expm[:n, :n], expm[:n, n]
    g = np.zeros((n, 1))
    g[0, 0] = noise * math.sqrt(2.0 / tau)
    van_loan = np.zeros((2 * n, 2 * n))
    van_loan[:n, :n], van_loan[:n, n:], van_loan[n:, n:] = -A, g @ g.T, A.T
    blocks = scipy.linalg.expm(van_loan * h)
    Q = blocks[n:, n:].T @ blocks[:n, n:]
    w, V = np.linalg.eigh(0.5 * (Q + Q.T))
    L = V @ np.diag(np.sqrt(np.clip(w, 0.0, None))) @ V.T  # symmetric root: robust when Q is near singular
    return E, p, L


def _growth(integrator: str, tau: float, amp_tau: float, leak: float, h: float, mu: complex) -> float:
    """Spectral radius of one step on the linear test node whose crossbar current is N(z) = mu z."""
    A, b = _linear_part(tau, amp_tau, leak)
    full = A.astype(complex).copy()
    full[:, 0] += b * mu  # the whole continuous system with N linearised
    if integrator == "exp_euler":
        E, p, _ = exponential_coefficients(tau, amp_tau, leak, h, 0.0)
        step = E.astype(complex).copy()
        step[:, 0] += p * mu
    elif integrator == "euler":
        step = np.eye(len(A)) + h * full
    else:  # rk4: the 4th-order Taylor polynomial of exp(h A)
        hA, term, step = h * full, np.eye(len(A), dtype=complex), np.eye(len(A), dtype=complex)
        for k in range(1, 5):
            term = term @ hA / k
            step = step + term
    return float(np.abs(np.linalg.eigvals(step)).max())


def _worst_growth(integrator: str, tau: float, amp_tau: float, leak: float, h: float) -> float:
    """Largest growth per step over crossbar gains mu with |mu| <= leak where the circuit itself settles
    (at a rate of at least 1% of the leak: near-marginal modes are marginal for any integrator)."""
    reference = leak if leak > 0 else 1.0  # a term without a declared leak is judged as a unit-leak node
    worst = 0.0
    for r in (0.25, 0.5, 0.75, 1.0):
        for theta in np.linspace(0.0, 2 * np.pi, 73)[:-1]:
            mu = r * reference * complex(math.cos(theta), math.sin(theta))
            A, b = _linear_part(tau, amp_tau, leak)
            full = A.astype(complex).copy()
            full[:, 0] += b * mu
            if np.linalg.eigvals(full).real.max() > -0.01 * reference / tau:
                continue  # the circuit itself does not settle here: not the integrator's business
            worst = max(worst, _growth(integrator, tau, amp_tau, leak, h, mu))
    return worst


@functools.lru_cache(maxsize=64)
def _step_verdict(integrator: str, tau: float, amp_tau: float, leak: float, dt: float) -> tuple[float, float]:
    """(worst growth per step at dt, largest stable dt found by bisection below it)."""
    worst = _worst_growth(integrator, tau, amp_tau, leak, dt)
    if worst <= 1.0 + 1e-9:
        return worst, dt
    lo, hi = 0.0, dt
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _worst_growth(integrator, tau, amp_tau, leak, mid) <= 1.0 + 1e-9 else (lo, mid)
    return worst, lo


def check_step(config: CircuitConfig, leak: float, source: str = "") -> None:
    """Refuse explicit Euler at dt >= amp_tau, and a fixed dt at which the explicit part of the
    integrator grows on a contractive circuit:
    one whose crossbar gain |mu| is at most the leak (every eigenvalue mu of dN/dz with |mu| <= leak,
    where the continuous circuit itself settles). Measured (leak 2): exp_euler passes at any dt
    without a pole and up to 2 tau with amp_tau = 0.1 tau, but a slow pole limits it (amp_tau = tau:
    dt <= 0.10 tau); explicit euler fails above tau / leak, rk4 above 0.7 tau (0.28 tau with the
    pole at 0.1 tau). The message gives the largest stable dt."""
    if config.kind != "rc" or config.integrator not in FIXED_STEP:
        return
    check(not (config.integrator == "euler" and 0 < config.amp_tau <= config.dt), "circuit.dt", config.dt,
          f"explicit Euler at dt >= amp_tau={config.amp_tau:g} turns the amplifier pole into a one-step delay",
          "use integrator: exp_euler (the pole integrated exactly), or dt < amp_tau", source)
    worst, safe = _step_verdict(config.integrator, config.tau, config.amp_tau, float(leak), config.dt)
    if worst > 1.0 + 1e-9:
        scale = 10.0 ** (math.floor(math.log10(safe)) - 2)
        safe = math.floor(safe / scale) * scale  # three digits, rounded down: the printed fix is stable
        fix = f"dt <= {safe:.3g}" if config.integrator == "exp_euler" else \
            f"use integrator: exp_euler, or dt <= {safe:.3g}"
        raise ConfigError("circuit.dt", config.dt, f"{config.integrator} steps grow x{worst:.4f} per step on a "
                          f"contractive circuit (tau {config.tau:g} s, amp_tau {config.amp_tau:g} s, leak {leak:g})",
                          fix, source)


# ---- solvers --------------------------------------------------------------------------------------

# Dormand-Prince 5(4) tableau (FSAL): nodes, stages, 5th-order weights, 5th-4th error weights.
_DP_A = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
         [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
         [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
         [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]]
_DP_B = [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0]
_DP_E = [71 / 57600, 0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40]


def _axpy(state: tuple, derivs: list[tuple], coeffs: list[float], h: float) -> tuple:
    """state + h * sum_i c_i derivs_i, component-wise over (z, u) (new tensors)."""
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


class NodeSolver(Solver):
    """The RC node dynamics of `CircuitConfig` (kind 'rc'); time in seconds."""

    unit = "s"

    def __init__(self, config: CircuitConfig):
        self.config = config

    def _rails(self, z: torch.Tensor) -> torch.Tensor:
        v = self.config.v_rail
        return z.clamp_(-v, v) if v > 0 else z

    def init(self, term: Term, z0: torch.Tensor) -> State:
        """Start at z0 with the amplifier (if any) already tracking the force there."""
        check_step(self.config, term.leak)
        z = self._rails(z0.detach().clone())
        return State(z, term(z) if self.config.amp_tau > 0 else None)

    def residual(self, term: Term, state: State) -> float:
        """||0.1 tau dz/dt|| / ||z||: tau dz/dt is the amplifier output u with a pole, F(z) without."""
        rate = state.u if state.u is not None else term(state.z)
        return float((RESIDUAL_EPS * rate).norm() / (state.z.norm() + 1e-12))

    def drift(self, term: Term, z: torch.Tensor, u: torch.Tensor | None) -> tuple:
        """(dz/dt, du/dt) in units per second."""
        cfg = self.config
        if u is None:
            return term(z) / cfg.tau, None
        return u / cfg.tau, (term(z) - u) / cfg.amp_tau

    def _noise(self, z: torch.Tensor, generator) -> torch.Tensor:
        return torch.randn(z.shape, generator=generator, dtype=z.dtype)

    def _fixed_step(self, term: Term, state: State, h: float, generator) -> State:
        cfg = self.config
        z, u = state.z, state.u
        if cfg.integrator == "exp_euler":
            E, p, L = exponential_coefficients(cfg.tau, cfg.amp_tau, term.leak, h, cfg.noise)
            n = torch.add(term(z), z, alpha=term.leak)  # N(z) = F(z) + leak z
            if u is None:
                z_new = torch.add(z * float(E[0, 0]), n, alpha=float(p[0]))
                if cfg.noise > 0:
                    z_new.add_(self._noise(z, generator), alpha=float(L[0, 0]))
            else:
                z_new = z * float(E[0, 0]) + u * float(E[0, 1]) + n * float(p[0])
                u = z * float(E[1, 0]) + u * float(E[1, 1]) + n * float(p[1])
                if cfg.noise > 0:  # correlated node and amplifier increments: L (xi_1, xi_2)
                    xi_1, xi_2 = self._noise(z, generator), self._noise(z, generator)
                    z_new.add_(xi_1, alpha=float(L[0, 0])).add_(xi_2, alpha=float(L[0, 1]))
                    u.add_(xi_1, alpha=float(L[1, 0])).add_(xi_2, alpha=float(L[1, 1]))
        else:
            y = (z, u)
            k1 = self.drift(term, *y)
            if cfg.integrator == "euler":
                y = _axpy(y, [k1], [1.0], h)
            else:  # classic RK4
                k2 = self.drift(term, *_axpy(y, [k1], [0.5], h))
                k3 = self.drift(term, *_axpy(y, [k2], [0.5], h))
                k4 = self.drift(term, *_axpy(y, [k3], [1.0], h))
                y = _axpy(y, [k1, k2, k3, k4], [1 / 6, 1 / 3, 1 / 3, 1 / 6], h)
            z_new, u = y
            if cfg.noise > 0:
                z_new.add_(self._noise(z_new, generator), alpha=cfg.noise * math.sqrt(2.0 * h / cfg.tau))
        return replaced(state, z=self._rails(z_new), u=u, t=state.t + h, steps=state.steps + 1)

    def step(self, term: Term, state: State, generator=None) -> State:
        return self._fixed_step(term, state, self.config.dt, generator)

    def advance(self, term: Term, state: State, duration: float, generator=None) -> State:
        """Advance by `duration` seconds exactly (fixed steps: n equal steps of at most dt)."""
        cfg = self.config
        if cfg.integrator == "dopri5":
            return self._dopri5(term, state, duration)
        n = max(1, math.ceil(duration / cfg.dt - 1e-9))
        check(n <= cfg.max_steps, "dt", cfg.dt, f"needs {n} steps for {duration:g} s (max_steps {cfg.max_steps})",
              "raise dt or max_steps, or shorten the settle time")
        h, t_end = duration / n, state.t + duration
        for _ in range(n):
            state = self._fixed_step(term, state, h, generator)
        return replaced(state, t=t_end)

    def _error_norm(self, err: tuple, y0: tuple, y1: tuple) -> float:
        cfg, total, count = self.config, 0.0, 0
        for e, a, b in zip(err, y0, y1):
            if e is None:
                continue
            scale = cfg.atol + cfg.rtol * torch.maximum(a.abs(), b.abs())
            total += float((e / scale).pow(2).sum())
            count += e.numel()
        return math.sqrt(total / max(count, 1))

    def _dopri5(self, term: Term, state: State, duration: float) -> State:
        """Adaptive steps over `duration`; the step the controller proposes is carried to the next
        call, never one shortened to land on the end time."""
        cfg = self.config
        y, t, end = (state.z, state.u), 0.0, duration
        steps, rejected = state.steps, state.rejected
        h_free = state.dt_next or cfg.dt
        k_first = self.drift(term, *y)
        while t < end * (1 - 1e-12):
            check(steps + rejected - state.steps - state.rejected < cfg.max_steps, "max_steps", cfg.max_steps,
                  f"dopri5 needed more steps for {duration:g} s", "loosen rtol/atol or raise max_steps")
            h = min(h_free, end - t)
            truncated = h < h_free
            ks = [k_first]
            for a in _DP_A[1:]:
                ks.append(self.drift(term, *_axpy(y, ks, a, h)))
            y_new = _axpy(y, ks, _DP_B, h)
            err = _axpy(tuple(None if c is None else torch.zeros_like(c) for c in y), ks, _DP_E, h)
            norm = self._error_norm(err, y, y_new)
            factor = 0.9 * norm ** -0.2 if norm > 0 else 5.0
            if norm <= 1.0:
                t += h
                steps += 1
                y = (self._rails(y_new[0]), y_new[1])
                # FSAL: the last stage is the drift at the new point, unless the rails moved it.
                k_first = ks[-1] if cfg.v_rail <= 0 else self.drift(term, *y)
                grown = h * min(5.0, max(0.2, factor))
                h_free = max(h_free, grown) if truncated else grown
            else:
                rejected += 1
                h_free = h * min(1.0, max(0.2, factor))
        return replaced(state, z=y[0], u=y[1], t=state.t + duration, steps=steps, rejected=rejected, dt_next=h_free)


class LoopSolver(Solver):
    """The optical loop (kind 'loop'): z <- z + loop_eps F_noisy(z) per pass, F carrying the chip's
    fresh per-pass noise itself; time in seconds, one pass every `pass_time`."""

    unit = "s"

    def __init__(self, config: CircuitConfig):
        self.config = config

    def init(self, term: Term, z0: torch.Tensor) -> State:
        return State(self._rails(z0.detach().clone()))

    def _rails(self, z: torch.Tensor) -> torch.Tensor:
        v = self.config.v_rail
        return z.clamp_(-v, v) if v > 0 else z

    def residual(self, term: Term, state: State) -> float:
        return float((RESIDUAL_EPS * term(state.z)).norm() / (state.z.norm() + 1e-12))

    def step(self, term: Term, state: State, generator=None) -> State:
        z = self._rails(state.z.add(term(state.z), alpha=self.config.loop_eps))  # the digital Euler's fused update
        return replaced(state, z=z, t=state.t + self.config.pass_time, steps=state.steps + 1)

    def advance(self, term: Term, state: State, duration: float, generator=None) -> State:
        """Whole passes: round(duration / pass_time), at least one."""
        passes = max(1, round(duration / self.config.pass_time))
        for _ in range(passes):
            state = self.step(term, state, generator)
        return state


def circuit_solver(config: CircuitConfig) -> NodeSolver | LoopSolver:
    """The solver of a circuit: node dynamics ('rc') or the optical loop ('loop')."""
    return LoopSolver(config) if config.kind == "loop" else NodeSolver(config)
