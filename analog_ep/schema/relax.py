"""Schema of the digital relaxation (`analog_ep.relax.solvers` runs it)."""
from __future__ import annotations

from dataclasses import dataclass

from analog_ep.errors import check

METHODS = ("euler", "anderson")


@dataclass
class RelaxConfig:
    """How the digital twin relaxes to its fixed point (the free phase of every digital relaxation:
    the digital twins, and the analog twin without a circuit). A circuit's free phase is its own
    settle (`circuit.settle`): these fields do not apply to it."""

    method: str = "euler"
    """'euler' (T1 explicit steps, the research semantics) or 'anderson' (accelerated fixed point)."""
    eps: float = 0.1
    """Euler step size (dimensionless: time step / circuit time constant)."""
    steps: int = 40
    """T1: Euler steps of the free phase (for 'anderson': the force-evaluation budget). 40 steps
    at eps 0.1 (4 time constants) settle the default block; the research trainer uses 80."""
    refine_to: int = 0
    """t1max: keep relaxing in chunks up to this many steps until the residual <= refine_tol (0: off)."""
    refine_tol: float = 1e-4
    """res_est: residual below which the free phase counts as settled for the estimator."""
    refine_chunk: int = 50
    """Euler steps between residual checks during refinement."""
    anderson_memory: int = 5
    """Anderson: number of past iterates mixed (m)."""
    anderson_tol: float = 1e-6
    """Anderson: stop when the residual ||eps F(z)|| / ||z|| of every sample is below this."""
    anderson_damping: float = 1.0
    """Anderson: mixing parameter (1 = undamped)."""
    anderson_step: float = 0.0
    """Anderson: step h of the accelerated map z <- z + h F(z), in time constants (0: eps). For the
    transformer block (F = -lambda z + N(z), lambda = 1 + damping) h = 1/lambda is the leak's exact
    step and converges fastest (measured: README, Measured: Performance). The residual and
    anderson_tol stay in units of eps."""
    anderson_restart: float = 1.0
    """Anderson's safeguard: a sample whose residual grows by more than this factor from one
    iterate to the next drops its history and takes a plain step (inf: never restart)."""

    def __post_init__(self):
        check(self.method in METHODS, "method", self.method, "unknown relaxation method",
              f"use one of {', '.join(METHODS)}")
        check(self.eps > 0, "eps", self.eps, "step size must be > 0")
        check(self.steps >= 1, "steps", self.steps, "must be >= 1")
        check(self.refine_to >= 0, "refine_to", self.refine_to, "must be >= 0 (0 turns refinement off)")
        check(self.refine_chunk >= 1, "refine_chunk", self.refine_chunk, "must be >= 1")
        check(self.anderson_memory >= 1, "anderson_memory", self.anderson_memory, "must be >= 1")
        check(self.anderson_tol > 0, "anderson_tol", self.anderson_tol, "must be > 0")
        check(0 < self.anderson_damping <= 1, "anderson_damping", self.anderson_damping, "must be in (0, 1]")
        check(self.anderson_step >= 0, "anderson_step", self.anderson_step, "must be >= 0 (0: the Euler step eps)")
        check(self.anderson_restart >= 1, "anderson_restart", self.anderson_restart,
              "must be >= 1 (a restart on a shrinking residual would discard every history)", "use 1.0, or .inf to never restart")
        check(self.method == "euler" or self.refine_to == 0, "refine_to", self.refine_to,
              "refinement applies to Euler only", "Anderson already stops at anderson_tol; set refine_to: 0")
