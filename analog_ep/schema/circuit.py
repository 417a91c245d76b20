"""Schema of the relaxation circuit: node dynamics, settle protocol, energy constants.

What a `circuits/*.yaml` file holds (`CircuitFile`: sections `dynamics`, `settle`, `energy`) and
the `circuit:` section of a chip file. `analog_ep.circuit` runs it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from analog_ep.errors import check

KINDS = ("rc", "loop")
INTEGRATORS = ("exp_euler", "euler", "rk4", "dopri5")
FIXED_STEP = ("exp_euler", "euler", "rk4")


@dataclass
class CircuitConfig:
    """The node dynamics of the physical relaxation circuit (the `dynamics` section of a circuit file)."""

    kind: str = "rc"
    """'rc': continuous-time node dynamics tau dz/dt = F(z); 'loop': a discrete iterated loop
    z <- z + loop_eps F(z) (photonic chips), one pass every `pass_time`."""
    tau: float = 1e-8
    """Node time constant in seconds (node capacitance / leak conductance)."""
    integrator: str = "euler"
    """'exp_euler' (leak and amplifier pole integrated exactly, crossbar current explicit), 'euler',
    'rk4' (fixed step dt) or 'dopri5' (adaptive Dormand-Prince 5(4)); see `analog_ep.circuit.dynamics`.
    Settling is stiffness-limited, so fixed steps at dt = 0.1 tau are the cheapest settler
    (`bench/settle.py`); dopri5 is for accurate transients."""
    dt: float = 1e-9
    """Time step in seconds (fixed-step integrators; first trial step for dopri5). Refused where the
    explicit part is unstable for a contractive circuit (module docstring)."""
    rtol: float = 1e-5
    """dopri5: relative error tolerance per step."""
    atol: float = 1e-8
    """dopri5: absolute error tolerance per step (state units)."""
    noise: float = 0.0
    """Thermal/read noise: the stationary spread (state units) of a node with unit leak. Needs a
    fixed-step integrator."""
    amp_tau: float = 0.0
    """Amplifier time constant in seconds: a second pole, the drive follows F with this lag (0: ideal)."""
    v_rail: float = 0.0
    """Rail voltage: node states saturate at +-v_rail (0: no rails)."""
    loop_eps: float = 0.1
    """'loop': fraction of the force applied per pass."""
    pass_time: float = 1e-9
    """'loop': seconds per pass (optical round trip plus conversion)."""
    max_steps: int = 200_000
    """Safety cap on solver steps per integration call."""

    def __post_init__(self):
        check(self.kind in KINDS, "kind", self.kind, "unknown circuit kind", f"use one of {', '.join(KINDS)}")
        check(self.integrator in INTEGRATORS, "integrator", self.integrator, "unknown integrator",
              f"use one of {', '.join(INTEGRATORS)}")
        for key in ("tau", "dt", "rtol", "atol", "pass_time", "loop_eps"):
            check(getattr(self, key) > 0, key, getattr(self, key), "must be > 0")
        for key in ("noise", "amp_tau", "v_rail"):
            check(getattr(self, key) >= 0, key, getattr(self, key), "must be >= 0 (0 turns it off)")
        check(not (self.noise > 0 and self.kind == "rc" and self.integrator == "dopri5"), "integrator",
              self.integrator, "adaptive steps cannot integrate thermal noise (the error estimate is noise)",
              "use integrator: exp_euler, euler or rk4 with a fixed dt when noise > 0")
        check(self.max_steps >= 1, "max_steps", self.max_steps, "must be >= 1")


@dataclass
class MonitorConfig:
    """Thresholds of the settle monitor (all per check: they scale with the check spacing)."""

    threshold: float = 1e-4
    """Residual (dimensionless: the caller's relative speed ||dz|| / ||z|| over its reference
    interval) at or below which the state counts as settled."""
    window: int = 16
    """Checks in the trailing window behind the verdict (fewer recorded: 'running')."""
    slow_decay: float = 0.05
    """Least decay of log10(residual) per check (decades / check), least-squares over the window,
    that counts as still converging ('slow'); a mode of rate lambda checked every dt decays
    lambda dt / ln 10."""
    min_crossings: int = 4
    """Zero crossings (count) of the best-fitting detrended probe within the window that, with a
    floored residual and coherent motion, indicate oscillation; 4 = two periods."""
    min_coherence: float = 0.8
    """Fraction (0..1) of the probes' detrended variance that the shared recurrence must predict
    one check ahead to count as coherent motion (measured >= 0.93 on limit cycles, <= 0.63 on
    noise floors; see `analog_ep.circuit.monitor`)."""
    probes: int = 8
    """Random unit directions (count) the state is projected on at each check. Pooling them keeps
    the fit from explaining noise (max coherence on noise 0.79 with 2 probes, 0.56 with 8, at
    order 4) and leaves no cycle hidden from all of them."""
    order: int = 4
    """Past checks (count) the shared recurrence uses: a sum of q sinusoids needs 2q, so 4 fits a
    cycle's fundamental and first harmonic (at order 2 the block's cycles fall to 0.84, and a
    Hopf cycle with a harmonic to 0.23)."""

    def __post_init__(self):
        check(math.isfinite(self.threshold) and self.threshold > 0, "threshold", self.threshold, "must be > 0")
        check(isinstance(self.min_crossings, int) and self.min_crossings >= 2, "min_crossings",
              self.min_crossings, "must be an integer >= 2", "a period needs two crossings")
        check(isinstance(self.order, int) and self.order >= 1, "order", self.order, "must be an integer >= 1")
        check(isinstance(self.probes, int) and self.probes >= 1, "probes", self.probes, "must be an integer >= 1")
        # Each probe adds window - order equations for 2 offset/trend unknowns: keep >= 4 spare.
        need = max(self.min_crossings + 2, self.order + 6)
        check(isinstance(self.window, int) and self.window >= need, "window", self.window,
              f"must be an integer >= {need}", f"min_crossings={self.min_crossings}, order={self.order} need it")
        check(math.isfinite(self.slow_decay) and self.slow_decay > 0, "slow_decay", self.slow_decay,
              "must be > 0 (decades per check)")
        check(0 < self.min_coherence < 1, "min_coherence", self.min_coherence, "must be in (0, 1)")


@dataclass
class SettleConfig:
    """How long a phase settles and how its nodes are sampled."""

    time: float = 0.0
    """Fixed settle time in seconds (0: settle until the monitor says so, up to `cap`)."""
    nudge_time: float = 0.0
    """Fixed settle time of each nudged phase in seconds (0: as the free phase, `time` or the
    monitor). A nudged phase starts from the settled free state and moves the nodes by ~beta, so
    it can be sampled earlier than the free phase, as the digital twin's T2 (`ep.steps` x `ep.eps`
    relaxation time constants) is shorter than its T1; set, it is the T2 the circuit realises."""
    cap: float = 1e-6
    """Longest settle in seconds when monitored."""
    check_every: float = 1e-8
    """Seconds between settle-monitor checks."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """Settled / slow / oscillating classification and its threshold."""
    adc_bits: int = 0
    """Bits of the node-sampling ADC (0: ideal sampling)."""
    adc_range: float = 4.0
    """The ADC spans +-adc_range (state units); samples outside are clipped."""
    adc_noise: float = 0.0
    """Input-referred ADC noise (state units, Gaussian, fresh per sample)."""
    lockin: int = 1
    """Samples averaged per measurement (lock-in window; 1: a single snapshot)."""
    lockin_interval: float = 1e-9
    """Seconds between lock-in samples (the circuit keeps running in between): the window lasts
    (lockin - 1) x lockin_interval, counted in the phase's time, read energy and latency."""
    nudge_per_token: bool = True
    """Nudge every output node with the gradient of its own token's loss (beta per token, node
    displacements an ADC can resolve). False: the digital estimator's batch-mean nudge, for
    ideal reference circuits that must reproduce the digital twin."""
    stop_on_floor: bool = True
    """End a monitored settle once the monitor has diagnosed the same noise floor or limit cycle
    for a whole window of checks (waiting longer changes nothing); False waits for the threshold
    or the cap."""

    def __post_init__(self):
        if isinstance(self.monitor, dict):
            self.monitor = MonitorConfig(**self.monitor)
        check(self.time >= 0, "time", self.time, "must be >= 0 (0: monitored settle)")
        check(self.nudge_time >= 0, "nudge_time", self.nudge_time, "must be >= 0 (0: as the free phase)")
        check(self.cap > 0 and self.check_every > 0, "cap", self.cap, "cap and check_every must be > 0")
        check(self.adc_bits == 0 or 2 <= self.adc_bits <= 32, "adc_bits", self.adc_bits, "must be 0 or 2..32",
              "use 0 for ideal sampling, or 2 to 32 bits")
        check(self.adc_range > 0, "adc_range", self.adc_range, "must be > 0")
        check(self.adc_noise >= 0, "adc_noise", self.adc_noise, "must be >= 0 (a standard deviation)", "use 0 for none")
        check(self.lockin >= 1, "lockin", self.lockin, "must be >= 1")
        check(self.lockin_interval > 0, "lockin_interval", self.lockin_interval, "must be > 0")

    def nudged(self) -> "SettleConfig":
        """The settle of the nudged phases: `nudge_time` when set, else this one."""
        return replace(self, time=self.nudge_time) if self.nudge_time > 0 else self


@dataclass
class EnergyConfig:
    """Device and periphery constants of the energy/latency estimate."""

    v_read: float = 0.2
    """Read voltage amplitude on the rows (V)."""
    g_max: float = 1e-5
    """Conductance of a device at the top of its range (S): 10 uS ~ 100 kOhm."""
    e_pulse: float = 1e-12
    """Energy of one programming pulse (J)."""
    t_pulse: float = 1e-7
    """Duration of one pulse round on an array (s); rounds of different arrays overlap."""
    e_adc: float = 2e-12
    """Energy of one ADC conversion (J)."""
    t_adc: float = 1e-8
    """Time of one conversion (s); the columns convert in parallel."""
    p_laser: float = 0.0
    """Optical: electrical (wall-plug) power of the laser light feeding one input waveguide (W),
    on while a phase runs."""
    e_modulator: float = 0.0
    """Optical: energy to modulate one input value onto its waveguide, driver included (J)."""
    e_detector: float = 0.0
    """Optical: energy of one photodetector reading with its transimpedance amplifier (J)."""

    def __post_init__(self):
        for key, value in asdict(self).items():
            check(value >= 0, key, value, "must be >= 0")


@dataclass
class CircuitFile:
    """What a `circuits/*.yaml` file holds: the node dynamics, the settle/sampling protocol, and
    the energy constants of the periphery."""

    dynamics: CircuitConfig = field(default_factory=CircuitConfig)
    """Node dynamics (kind, tau, integrator, noise, amplifier pole, rails)."""
    settle: SettleConfig = field(default_factory=SettleConfig)
    """Settle criterion and node sampling (ADC, lock-in)."""
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    """Energy and latency constants."""
