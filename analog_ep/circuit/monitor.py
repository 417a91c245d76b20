"""Settle monitor: is the relaxation settled, slow, oscillating or sitting on a noise floor?

EP is only valid at a settled fixed point. As training drifts the operator, a complex eigenvalue
pair of the Jacobian crosses into Re mu > 0 (a Hopf bifurcation): the circuit then circles a
limit cycle, its residual stops falling, and a fixed-time settle would silently hand EP a point on
the cycle. At each check the monitor records the caller's residual and `probes` random unit
projections of the state, and over the trailing `window` checks tells apart:

* settled     - the last residual is <= `threshold`;
* slow        - log10(residual) falls by >= `slow_decay` per check (least-squares slope over the
                window): converging, too slowly for the cap;
* oscillating - the residual falls by less, the probes move coherently: one linear recurrence
                x[k+1] = a1 x[k] + ... + a_order x[k-order+1] (+ offset and trend per probe),
                shared by all probes, predicts >= `min_coherence` of their detrended variance;
                and the probe it fits best, linearly detrended, crosses zero >= `min_crossings`
                times. A sampled sinusoid obeys x[k+1] = 2 cos(w dt) x[k] - x[k-1] exactly, a
                cycle with its first harmonic a 4-term recurrence; noise obeys none;
* noise_floor - the residual falls by less than `slow_decay` and the probes move incoherently
                (coherence < `min_coherence`): thermal or read noise keeps the force from vanishing.

Coherent motion with too few crossings counts as 'slow', not as noise: a creep slower than
`slow_decay` (checked every tau, a mode at Re = -0.01 / tau falls 0.004 decades / check, and ||z||
turning under it can even make the residual rise), or a cycle longer than window / 2 checks. A
barely damped focus (Re mu just below 0) circles like a limit cycle within the window and counts
as 'oscillating': it will not settle in time either; the explanation prints its decay.

Measured with the defaults (the systems of tests/test_monitor.py, and the attention block of
tests/test_circuit.py with a rotation of gain 4 or 8 as W_o, checked every 0.7-2 tau): every
window of the block's limit cycles called oscillating (coherence >= 0.93, period 6.0-6.6 tau);
clean Hopf normal forms 1.00, with or without a first harmonic; on 880 noise floors (8 or 32
nodes, checks 0.1-3 relaxation times apart) median 0.20, 99th percentile 0.48, max 0.63, none
called oscillating. A Hopf cycle of radius 0.71 under thermal noise of stationary spread 0.05 /
0.1 / 0.15 / 0.2 per node is called oscillating in 100 / 90 / 30 / 3% of runs. The simplest form
of the test, a 2-term recurrence on 2 probes, overlaps: block cycles down to 0.70, noise up to
0.67, and a cycle with a harmonic fails. The lag-1 autocorrelation overlaps worse: a cycle at the
4-7 checks per period that 4 crossings in 16 checks imply has cos(2 pi / 4..7) = 0.0..0.6, noise
floors spread over -0.8..+0.8.

The fit assumes roughly uniform check spacing; crossing times, hence the period, use the actual
check times, from the probes that see the cycle, at their longest: a cycle whose harmonic
outweighs its fundamental in every probe reads half its period. The window must span
>= min_crossings / 2 periods: widen it for slow cycles. Probes cost probes x numel x 8 bytes on
the state's device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from analog_ep.errors import check
from analog_ep.schema.circuit import MonitorConfig  # noqa: F401  (re-exported)

VERDICTS = ("settled", "slow", "oscillating", "noise_floor", "running")

_LOG_FLOOR = 1e-300  # log10 of a zero residual (a state that stopped exactly)


@dataclass
class Diagnosis:
    """A verdict with every number behind it."""

    verdict: str
    """'settled' | 'slow' | 'oscillating' | 'noise_floor' | 'running'."""
    checks: int
    """Checks used: the window, or all of them while fewer."""
    residual: float
    """Last residual."""
    floor: float
    """Median residual over the window."""
    decay: float
    """Least-squares decay of log10(residual) per check over the window (negative: rising)."""
    coherence: float = 0.0
    """Fraction (0..1) of the probes' detrended variance the shared recurrence predicts."""
    probe: int = 0
    """The probe reported: of those the recurrence fits on their own (>= min_coherence) and that
    cross zero >= min_crossings times, the median of the ones near the longest period."""
    crossings: int = 0
    """Zero crossings of that probe, linearly detrended over the window."""
    period: float | None = None
    """Seconds, from that probe's interpolated crossing times (None unless oscillating)."""
    lag1: float = math.nan
    """Lag-1 autocorrelation of that probe: reported for comparison, not a criterion."""


def _detrend(t: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x - np.polyval(np.polyfit(t - t[0], x, 1), t - t[0])


def _crossings(t: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Times where x changes sign, linearly interpolated between checks (sub-check resolution)."""
    k = np.nonzero(np.signbit(x[1:]) != np.signbit(x[:-1]))[0]
    return t[k] - x[k] * (t[k + 1] - t[k]) / (x[k + 1] - x[k])


def _recurrence(proj: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit x[k+1] = sum_i a_i x[k-i] + c_p + d_p k, a shared by all probes p.

    Per-probe offset and trend terms make sinusoid + linear drift an exact fit, where fitting a
    detrended signal leaves the detrending error (measured coherence 0.92 instead of 1.00 at 4
    checks per period); sharing a asks every probe for the same frequencies, so the fit explains
    little of independent noise. Returns each probe's squared misfit and its squared spread about
    a straight line (coherence = 1 - misfit / spread).
    """
    n, m = proj.shape
    k = np.arange(n - order) / n
    rows, ys = [], []
    for p in range(m):
        x = proj[:, p]
        own = np.zeros((n - order, 2 * m))
        own[:, 2 * p], own[:, 2 * p + 1] = 1.0, k
        lags = np.stack([x[order - 1 - i:n - 1 - i] for i in range(order)], 1)
        rows.append(np.concatenate([lags, own], 1))
        ys.append(x[order:])
    X, y = np.concatenate(rows), np.concatenate(ys)
    a, *_ = np.linalg.lstsq(X, y, rcond=None)
    miss = ((y - X @ a) ** 2).reshape(m, n - order).sum(1)
    spread = np.array([(_detrend(k, x[order:]) ** 2).sum() for x in proj.T])
    return miss, spread


class SettleMonitor:
    """Classifies a relaxation from its residual and state at each check (see module docstring).

    `update(t, z, residual)` at each check; `settled`, `verdict()`, `explain()`, `diagnose()` at
    any time. One monitor watches one relaxation: `reset()` before the next.
    """

    def __init__(self, config: MonitorConfig | None = None, probe_seed: int = 0):
        self.config = config if config is not None else MonitorConfig()
        self.probe_seed = probe_seed
        self.history: list[tuple[float, float]] = []
        """(t seconds, residual) per check."""
        self._proj: list[list[float]] = []
        self._probes: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the history and the probe directions (the next relaxation may differ in shape)."""
        self.history.clear()
        self._proj.clear()
        self._probes = None

    def update(self, t: float, z: torch.Tensor, residual: float) -> None:
        """Record one check: time t (s), state z (any shape), the caller's residual."""
        t, residual = float(t), float(residual)
        check(math.isfinite(residual) and residual >= 0, "residual", residual, "must be finite and >= 0",
              "a non-finite residual means the relaxation diverged: stop it")
        check(math.isfinite(t) and (not self.history or t > self.history[-1][0]), "t", t,
              "check times must be finite and increasing", "call reset() between relaxations")
        z = z.detach().reshape(-1)
        if self._probes is None:
            # Seeded on the CPU so the directions do not depend on the device.
            g = torch.Generator().manual_seed(self.probe_seed)
            p = torch.randn(self.config.probes, z.numel(), generator=g, dtype=torch.float64)
            self._probes = (p / p.norm(dim=1, keepdim=True)).to(z.device)
        check(z.numel() == self._probes.shape[1], "z", tuple(z.shape),
              f"state size changed from {self._probes.shape[1]} elements", "call reset() between relaxations")
        # float64: the cycle can be a 1e-4 ripple on an O(1) operating point.
        self._proj.append((self._probes @ z.to(torch.float64)).tolist())
        self.history.append((t, residual))

    @property
    def settled(self) -> bool:
        """The last residual is at or below the threshold."""
        return bool(self.history) and self.history[-1][1] <= self.config.threshold

    def diagnose(self) -> Diagnosis:
        """The verdict with every number behind it."""
        cfg, n = self.config, min(len(self.history), self.config.window)
        if not self.history:
            return Diagnosis("running", 0, math.nan, math.nan, math.nan)
        t = np.array([h[0] for h in self.history[-n:]])
        r = np.array([h[1] for h in self.history[-n:]])
        last, floor = float(r[-1]), float(np.median(r))
        decay = -float(np.polyfit(np.arange(n), np.log10(np.maximum(r, _LOG_FLOOR)), 1)[0]) if n >= 3 else math.nan
        if self.settled or n < cfg.window:
            return Diagnosis("settled" if self.settled else "running", n, last, floor, decay)
        if decay >= cfg.slow_decay:
            return Diagnosis("slow", n, last, floor, decay)
        raw = np.array(self._proj[-n:])
        proj = raw - raw.mean(0)
        # One common scale keeps the probes' relative weight (a probe nearly orthogonal to the cycle
        # adds little) and conditions the fit. Motion at round-off level is no motion.
        scale = float(np.abs(np.stack([_detrend(t, x) for x in proj.T], 1)).max())
        if not scale > 1e-12 * max(float(np.abs(raw).max()), 1e-300):
            return Diagnosis("noise_floor", n, last, floor, decay)
        proj = proj / scale
        miss, spread = _recurrence(proj, cfg.order)
        coherence = max(0.0, 1.0 - float(miss.sum() / spread.sum()))
        # Crossings and period from the probes that see the cycle cleanly (their own coherence):
        # a probe nearly orthogonal to the cycle crosses zero on its noise (measured: 8 crossings,
        # period off by 21%). Of those, the group near the longest period, their median: a probe
        # dominated by the cycle's harmonic crosses twice as often (measured: periods 50% short),
        # while the longest alone is biased up (3% instead of 1% on a clean cycle).
        own = 1.0 - miss / np.maximum(spread, 1e-300)
        seeing = np.nonzero(own >= cfg.min_coherence)[0] if coherence >= cfg.min_coherence else []
        seeing = [int(p) for p in seeing] or [int(np.argmax(spread - miss))]
        times = {p: _crossings(t, _detrend(t, proj[:, p])) for p in seeing}
        periods = {p: 2 * float(c[-1] - c[0]) / (len(c) - 1) for p, c in times.items()
                   if len(c) >= max(2, cfg.min_crossings)}
        if periods:
            group = sorted((v, p) for p, v in periods.items() if v >= 0.75 * max(periods.values()))
            period, best = group[len(group) // 2]
        else:
            period, best = None, max(seeing, key=lambda p: len(times[p]))
        c = times[best]
        x = _detrend(t, proj[:, best])
        lag1 = float(x[1:] @ x[:-1] / (x @ x))
        if coherence < cfg.min_coherence:
            verdict = "noise_floor"
        elif periods:
            verdict = "oscillating"
        else:
            verdict = "slow"  # smooth deterministic motion without repeated crossings: a creep
        return Diagnosis(verdict, n, last, floor, decay, coherence, best, len(c),
                         period if verdict == "oscillating" else None, lag1)

    def verdict(self) -> str:
        """'settled' | 'slow' | 'oscillating' | 'noise_floor' | 'running' (too few checks to tell)."""
        return self.diagnose().verdict

    def explain(self) -> str:
        """One line for users."""
        d, cfg = self.diagnose(), self.config
        if d.verdict == "running":
            return (f"running: {d.checks} of {cfg.window} checks recorded, residual {d.residual:.1e} "
                    f"(threshold {cfg.threshold:.0e})")
        if d.verdict == "settled":
            return (f"settled: residual {d.residual:.1e} <= threshold {cfg.threshold:.0e} "
                    f"after {len(self.history)} checks")
        if d.verdict == "slow" and d.decay >= cfg.slow_decay:
            return (f"slow: residual {d.residual:.1e} still falling {d.decay:.3f} decades/check over the last "
                    f"{d.checks} checks (threshold {cfg.threshold:.0e}): give it more time")
        trend = f"decay {d.decay:+.3f} decades/check"
        if d.verdict == "slow":
            how = "creeping down" if d.decay > 0 else "not falling"
            return (f"slow: residual {d.residual:.1e} {how} ({trend}, slow_decay {cfg.slow_decay}) over the last "
                    f"{d.checks} checks, the state moving smoothly (coherence {d.coherence:.2f}) with only "
                    f"{d.crossings} zero crossings: a slow mode, or a cycle longer than the window")
        if d.verdict == "oscillating":
            return (f"oscillating: residual floored at {d.floor:.1e} over the last {d.checks} checks ({trend}) "
                    f"with {d.crossings} zero crossings of the probe projection "
                    f"(period ~ {d.period:.1e} s, coherence {d.coherence:.2f}): a limit cycle, not a fixed point; "
                    f"EP is invalid here")
        if math.isnan(d.lag1):
            return (f"noise_floor: residual floored at {d.floor:.1e} over the last {d.checks} checks but the "
                    f"state does not move: a force held off by a limit (a clipped rail?)")
        return (f"noise_floor: residual floored at {d.floor:.1e} over the last {d.checks} checks ({trend}); "
                f"probe motion incoherent (coherence {d.coherence:.2f} < {cfg.min_coherence}, "
                f"{d.crossings} crossings): noise keeps the force from vanishing")
