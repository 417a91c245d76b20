"""Schema of the EP estimator (`analog_ep.estimator.ep` runs it)."""
from __future__ import annotations

from dataclasses import dataclass

from analog_ep.errors import check

AEP_MODES = ("none", "frozen", "tracking")
NUDGES = ("nonlinear", "linear")


@dataclass
class EPConfig:
    """The nudged phase and how its contrast is read out."""

    beta: float = 0.02
    """Nudge strength of the real estimators (one-sided / centred)."""
    centered: bool = True
    """Centred +-beta nudges (bias O(beta^2)); False: one-sided +beta (bias O(beta))."""
    steps: int = 15
    """T2: Euler steps of each digital nudged phase (the cap when `select_cap` > 0 overrides it). A
    circuit's nudged phase lasts its settle (`circuit.settle.nudge_time`, or `time` when that is 0);
    set explicitly, steps x eps must be that settle in node time constants (loop: passes), else the
    run is refused."""
    eps: float = 0.1
    """Euler step size of the digital nudged phases (time step / node time constant). On a loop
    circuit, set explicitly, it must equal `circuit.loop_eps`; on an RC circuit see `steps`."""
    aep: str = "frozen"
    """AEP correction: 'none', 'frozen' (linearised at z*) or 'tracking' (at the moving common mode;
    digital phases only: a circuit's co-processor linearises once, at the sampled free state)."""
    aep_clip: float = 1.0
    """Clip the correction's norm to this multiple of the nudged force's norm (0: off). The research
    trainer uses 1; it bounds a bad linearisation but biases long nudges (T2 >> 20) slightly."""
    nudge_clip: float = 2.0
    """Elementwise bound on the per-token loss gradient d l_t / d z_t, the error current one output
    node receives per unit beta (0: off), in every backend (module docstring). Holomorphic nudges
    never clip. The default does not fire (rram_512: max |d l_t / d z_t| 0.51 at init, 0.48 after 40 steps)."""
    holomorphic: int = 0
    """N >= 2: holomorphic EP with N points on a circle (0: real one-sided/centred estimator)."""
    radius: float = 0.02
    """Radius r of the holomorphic circle."""
    select_cap: int = 0
    """Adaptive T2: run up to this many steps and return the most settled snapshot (0: fixed T2).
    Digital phases only: a circuit's settle monitor is its adaptive T2."""
    select_every: int = 5
    """Adaptive T2: steps between contrast snapshots."""
    nudge: str = "nonlinear"
    """'nonlinear': the nudged phases follow the nudged dynamics at +-beta (or the holomorphic
    points), what a chip does. 'linear': the digital twin's fast estimator, their beta -> 0 limit:
    the linear response a' = J~ a + g at z* (J~ = J^T with the AEP correction on, J without it; g the
    nudge's loss gradient, clipped as the nudge clips it), one product per step shared by both
    signs of beta (the +- phases are exactly antisymmetric there), accelerated by Anderson mixing
    and stopped at `nudge_tol`, at most `steps` products. It has no beta, no fp32 cancellation in the
    contrast and no beta^2 bias, and needs the operator's transpose: digital twins only (a chip
    does not know its Jacobian), and the correction's clip does not apply."""
    nudge_tol: float = 1e-3
    """'linear' nudge: stop when every sample's relative step ||eps (J~ a + g)|| / ||a|| is <= this."""
    restarts: int = 1
    """K: average the contrast of K independent nudges (reduces hardware noise by sqrt(K)); on a
    circuit, K nudged settles from the same free state, each costing its time and energy."""

    def __post_init__(self):
        check(self.nudge in NUDGES, "nudge", self.nudge, "unknown nudge", f"use one of {', '.join(NUDGES)}")
        check(self.nudge_tol > 0, "nudge_tol", self.nudge_tol, "must be > 0")
        check(self.nudge == "nonlinear" or (self.holomorphic == 0 and self.select_cap == 0 and self.restarts == 1),
              "nudge", self.nudge, "the linear nudge has no nudge points, snapshots or restarts",
              "set holomorphic: 0, select_cap: 0 and restarts: 1, or nudge: nonlinear")
        check(self.aep in AEP_MODES, "aep", self.aep, "unknown AEP mode", f"use one of {', '.join(AEP_MODES)}")
        check(self.beta > 0, "beta", self.beta, "nudge strength must be > 0")
        check(self.steps >= 1, "steps", self.steps, "T2 must be >= 1")
        check(self.eps > 0, "eps", self.eps, "step size must be > 0")
        check(self.holomorphic == 0 or self.holomorphic >= 2, "holomorphic", self.holomorphic,
              "needs at least 2 points", "use 0 (off) or N >= 2")
        check(self.radius > 0, "radius", self.radius, "must be > 0")
        check(self.aep_clip >= 0, "aep_clip", self.aep_clip, "must be >= 0 (0 turns the clip off)")
        check(self.select_cap >= 0, "select_cap", self.select_cap, "must be >= 0 (0: fixed T2)")
        check(self.select_every >= 1, "select_every", self.select_every, "must be >= 1")
        check(self.restarts >= 1, "restarts", self.restarts, "must be >= 1")
        check(self.nudge_clip >= 0, "nudge_clip", self.nudge_clip, "must be >= 0 (0 turns the clip off)")
