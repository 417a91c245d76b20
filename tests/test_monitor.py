"""Settle monitor on small explicit ODEs: settled, slow, a Hopf limit cycle, a noise floor.

Trajectories are integrated here (RK4; Euler-Maruyama with noise) in units of the node time
constant TAU, so tau dz/dt = F(z), and reported to the monitor in seconds. Every system relaxes to
a nonzero operating point z*, as a circuit does (around z* = 0 the relative residual of a single
mode would stay constant). The residual at each check is the one the circuit settle uses,
||H tau dz/dt|| / ||z|| = ||H F(z)|| / ||z|| with H = 0.1 (analog_ep.circuit.dynamics.RESIDUAL_EPS).
The state goes to the monitor as a float32 (2, n/2) tensor, exercising "any shape".
"""
import math

import numpy as np
import pytest
import torch

from analog_ep.circuit.monitor import VERDICTS, MonitorConfig, SettleMonitor
from analog_ep.errors import ConfigError

TAU = 1e-8  # s
H = 0.1     # residual reference interval, in units of TAU


def rotation_blocks(rng, n, re, im_max):
    """A normal matrix with eigenvalues re_i +- i b_i, b_i in [0, im_max], in a random basis."""
    A = np.zeros((n, n))
    for i in range(0, n, 2):
        a, b = rng.uniform(*re), rng.uniform(0, im_max)
        A[i:i + 2, i:i + 2] = [[a, b], [-b, a]]
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return q @ A @ q.T


def operating_point(rng, n):
    z = rng.standard_normal(n)
    return z * math.sqrt(n) / np.linalg.norm(z)


def linear(rng, n, re, im_max):
    A, zs = rotation_blocks(rng, n, re, im_max), operating_point(rng, n)
    return (lambda z: A @ (z - zs)), zs


def hopf(rng, mu, omega, extra=6, harmonic=0.0):
    """Supercritical Hopf normal form dw/dt = (mu + i omega) w - |w|^2 w in 2 real coordinates,
    driving `extra` stable dimensions (Re in [-2, -1]) through w and, with weight `harmonic`,
    through w^2 (a non-sinusoidal cycle with a first harmonic), all around an operating point z*."""
    B, C = rotation_blocks(rng, extra, (-2.0, -1.0), 1.0), 0.3 * rng.standard_normal((extra, 2))
    C2 = harmonic * rng.standard_normal((extra, 2))
    zs = operating_point(rng, 2 + extra)

    def F(z):
        x, y = z[0] - zs[0], z[1] - zs[1]
        r2 = x * x + y * y
        return np.concatenate([[mu * x - omega * y - r2 * x, omega * x + mu * y - r2 * y],
                               B @ (z[2:] - zs[2:]) + C @ np.array([x, y])
                               + C2 @ np.array([x * x - y * y, 2 * x * y])])
    return F, zs


def relax(F, z0, every, checks, monitor, ds=0.01, noise=0.0, rng=None):
    """Integrate tau dz/dt = F(z) (+ thermal noise sqrt(2 noise^2 / tau) dW) and report each check.

    Returns the verdict after each check."""
    z, s, steps, verdicts = z0.copy(), 0.0, max(1, round(every / ds)), []
    ds = every / steps
    for _ in range(checks):
        for _ in range(steps):
            if noise:
                z = z + F(z) * ds + noise * math.sqrt(2 * ds) * rng.standard_normal(z.shape)
            else:
                k1 = F(z)
                k2 = F(z + ds / 2 * k1)
                k3 = F(z + ds / 2 * k2)
                z = z + ds / 6 * (k1 + 2 * k2 + 2 * k3 + F(z + ds * k3))
        s += every
        res = np.linalg.norm(H * F(z)) / np.linalg.norm(z)
        monitor.update(s * TAU, torch.from_numpy(z).float().reshape(2, -1), res)
        verdicts.append(monitor.verdict())
    return verdicts


def test_contractive_system_settles():
    for seed in range(3):
        rng = np.random.default_rng(seed)
        F, zs = linear(rng, 8, (-3.0, -1.2), 2.0)
        mon = SettleMonitor(MonitorConfig())
        verdicts = relax(F, zs + rng.standard_normal(8), 1.0, 12, mon)
        k = verdicts.index("settled")
        r = [res for _, res in mon.history]
        print(f"seed {seed}: residual {r[0]:.1e} -> {r[k]:.1e} at check {k + 1}; {mon.explain()}")
        assert verdicts[:k] == ["running"] * k, verdicts  # the window (16) is not yet full before
        assert r[k - 1] > mon.config.threshold >= r[k]
        assert all(v == "settled" for v in verdicts[k:]) and mon.settled
        assert mon.explain().startswith("settled")


def test_weakly_contractive_system_is_slow():
    # Re = -0.01 / tau checked every 20 tau: log10 residual falls 0.01 * 20 / ln 10 = 0.087 per check.
    decays, creeps = [], []
    for seed in range(3):
        rng = np.random.default_rng(200 + seed)
        F, zs = linear(rng, 8, (-0.01, -0.01), 0.2)
        z0 = zs + rng.standard_normal(8)
        mon = SettleMonitor(MonitorConfig())
        assert relax(F, z0, 20.0, 16, mon, ds=0.1)[-1] == "slow", mon.explain()
        d = mon.diagnose()
        assert not mon.settled and d.decay >= mon.config.slow_decay
        decays.append(d.decay)
        # Checked every tau it creeps < 0.01 decades / check (||z|| turning can even make the
        # residual rise), below slow_decay, yet it is smooth motion, not noise: still 'slow'.
        mon = SettleMonitor(MonitorConfig())
        assert relax(F, z0, 1.0, 16, mon, ds=0.1)[-1] == "slow", mon.explain()
        d = mon.diagnose()
        assert d.decay < mon.config.slow_decay and d.coherence >= mon.config.min_coherence
        creeps.append((d.decay, d.coherence))
    print(f"decay per check at 20 tau: {np.round(decays, 4)} (slow_decay 0.05, margin x{min(decays) / 0.05:.2f}); "
          f"at 1 tau (decay, coherence): {np.round(creeps, 4).tolist()}")


@pytest.mark.parametrize("omega,noise,harmonic", [(1.0, 0.0, 0.0), (1.5, 0.0, 0.0), (1.0, 0.05, 0.0),
                                                   (1.0, 0.0, 1.0)])
def test_hopf_limit_cycle_oscillates(omega, noise, harmonic):
    # mu = 0.5: the cycle has radius sqrt(mu) = 0.71; checks every tau give 2 pi / omega checks per
    # period, so the 16-check window holds 2.4 (omega 1) to 3.6 (omega 1.5) periods. Thermal noise
    # of spread 0.05 per node, or a first harmonic in the driven dimensions, must not hide it.
    periods, cohs = [], []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        F, zs = hopf(rng, 0.5, omega, harmonic=harmonic)
        mon = SettleMonitor(MonitorConfig(), probe_seed=seed)
        verdicts = relax(F, zs + 0.05 * rng.standard_normal(8), 1.0, 40, mon, noise=noise, rng=rng)
        d = mon.diagnose()
        assert verdicts[-1] == "oscillating", mon.explain()
        assert verdicts[-8:] == ["oscillating"] * 8  # steady once the transient has left the window
        assert abs(d.decay) < mon.config.slow_decay and d.crossings >= mon.config.min_crossings
        periods.append(d.period / TAU)
        cohs.append(d.coherence)
        if seed == 0:
            print(mon.explain())
        print(f"  seed {seed}: crossings {d.crossings}, coherence {d.coherence:.3f}, lag-1 {d.lag1:+.2f}, "
              f"decay {d.decay:+.4f}, floor {d.floor:.1e}")
    true = 2 * math.pi / omega
    err = np.abs(np.array(periods) / true - 1)
    print(f"omega {omega}, noise {noise}, harmonic {harmonic}: period {np.round(periods, 3).tolist()} tau "
          f"vs {true:.3f} (max error {err.max():.1%}); coherence min {min(cohs):.3f} "
          f"vs {MonitorConfig().min_coherence}")
    assert err.max() < 0.10


def test_noise_floor_is_not_oscillating():
    # Stable (Re in [-3, -1]) under thermal noise, sampled from 0.1 to 2 relaxation times apart:
    # the crossings are frequent, but the motion is incoherent.
    cohs, lag1s, crossings = [], [], []
    for every in (0.1, 0.3, 1.0, 2.0):
        for seed in range(5):
            rng = np.random.default_rng(100 + seed)
            F, zs = linear(rng, 8, (-3.0, -1.0), 2.0)
            mon = SettleMonitor(MonitorConfig(), probe_seed=seed)
            # Start at z*: the spread reaches stationarity within ~1 tau, before the window.
            verdicts = relax(F, zs.copy(), every, 16 + round(2 / every), mon, ds=min(0.01, every / 4),
                             noise=0.01, rng=rng)
            d = mon.diagnose()
            assert verdicts[-1] == "noise_floor", mon.explain()
            assert d.residual > mon.config.threshold and abs(d.decay) < mon.config.slow_decay
            cohs.append(d.coherence)
            lag1s.append(d.lag1)
            crossings.append(d.crossings)
    print(mon.explain())
    print(f"coherence max {max(cohs):.3f} (min_coherence {MonitorConfig().min_coherence}), median "
          f"{np.median(cohs):.3f}; crossings {min(crossings)}..{max(crossings)}; lag-1 autocorrelation "
          f"{min(lag1s):+.2f}..{max(lag1s):+.2f} (the omega = 1.5 cycle has ~ +0.07: lag-1 cannot separate)")
    assert max(cohs) < MonitorConfig().min_coherence


def test_short_history_is_running():
    mon = SettleMonitor(MonitorConfig())
    assert mon.verdict() == "running" and not mon.settled
    rng = np.random.default_rng(0)
    F, zs = hopf(rng, 0.5, 1.0)
    verdicts = relax(F, zs + 0.5 * rng.standard_normal(8), 1.0, 15, mon)
    assert set(verdicts) == {"running"}, verdicts
    assert mon.explain().startswith("running: 15 of 16 checks")
    assert len(mon.history) == 15 and mon.history[0][0] == pytest.approx(TAU)
    mon.update(16 * TAU, torch.from_numpy(zs).reshape(2, -1), 0.01)
    assert mon.verdict() in VERDICTS and mon.verdict() != "running"
    mon.reset()
    assert mon.history == [] and mon.verdict() == "running"
    mon.update(1e-9, torch.ones(3), 1e-5)  # a new shape after reset is fine
    assert mon.settled and mon.verdict() == "settled"


@pytest.mark.parametrize("field,value,key", [
    ("threshold", 0.0, "threshold"), ("threshold", -1e-4, "threshold"), ("threshold", math.nan, "threshold"),
    ("window", 5, "window"), ("window", 16.0, "window"), ("slow_decay", 0.0, "slow_decay"),
    ("slow_decay", math.inf, "slow_decay"), ("min_crossings", 1, "min_crossings"),
    ("min_crossings", 15, "window"),  # 15 crossings need a window of 17
    ("min_coherence", 0.0, "min_coherence"), ("min_coherence", 1.0, "min_coherence"), ("probes", 0, "probes"),
    ("order", 0, "order"), ("order", 12, "window")])  # order 12 needs a window of 18
def test_bad_config_raises(field, value, key):
    with pytest.raises(ConfigError) as err:
        MonitorConfig(**{field: value})
    assert err.value.key == key, str(err.value)


def test_bad_updates_raise():
    mon = SettleMonitor(MonitorConfig())
    mon.update(1e-9, torch.ones(4), 0.1)
    with pytest.raises(ConfigError, match="residual"):
        mon.update(2e-9, torch.ones(4), math.nan)
    with pytest.raises(ConfigError, match="t="):
        mon.update(1e-9, torch.ones(4), 0.1)
    with pytest.raises(ConfigError, match="state size changed"):
        mon.update(2e-9, torch.ones(5), 0.1)
    assert len(mon.history) == 1


def test_static_state_with_force_is_not_noise_motion():
    # A state pinned (e.g. at a rail) while the force is not zero: no motion to classify.
    mon = SettleMonitor(MonitorConfig())
    for k in range(16):
        mon.update((k + 1) * TAU, torch.full((4, 4), 0.5), 1e-2)
    assert mon.verdict() == "noise_floor" and "does not move" in mon.explain(), mon.explain()
