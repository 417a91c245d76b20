"""Equilibrium-propagation gradient estimators (vector-field form).

Given the free fixed point z*, nudged relaxations estimate the adjoint state
    a = -dz*/dbeta  (= the adjoint state solving J^T a = -dloss/dz when the AEP correction is on),
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
mode of the nudge points (v stays the displacement from z*). The correction is clipped to the norm
of the nudged force. Its products come from `analog_ep.linear.linearize`, reading the weights the
caller names (`reads`: the model's parameters, or a chip's effective conductances).

A nudged phase is a phase of `analog_ep.phase`: the term `NudgedTerm` (the force, the nudge and the
correction) is built here once for every backend; the digital phases integrate it with Euler steps
of `eps` (fixed T2, or the most settled snapshot under adaptive T2), a circuit with its own node
dynamics (`analog_ep.circuit.measure`). All points are integrated together as one stacked batch
(n_points * B samples), so each step is a single call of the force and of the Jacobian products.

The nudge. `nudge_clip` bounds every element of the per-token loss gradient d l_t / d z_t (the
error current a nudge injects at one output node, per unit beta) in every backend. The digital
estimator nudges the batch-mean loss, i.e. that gradient divided by the token count, so its clip
acts at nudge_clip / tokens; a circuit nudges each token's own loss (`SettleConfig.nudge_per_token`)
and clips at nudge_clip.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from analog_ep.errors import check
from analog_ep.linear import antisymmetric, linearize, weight_leaves
from analog_ep.model.base import EquilibriumModel
from analog_ep.phase import Fixed, SelectSettled, Term, solve
from analog_ep.relax.solvers import Anderson, Euler, Relaxation, RelaxConfig, relax
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

    @property
    def count(self) -> int:
        """Nudge points integrated (the mirrored ones of a holomorphic circle are not)."""
        return len(self.betas)

    def beta_per_sample(self, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """beta_k broadcast over point k's block of the stacked batch, shaped like `like` (n_points*B, ...)."""
        n = self.count
        values = torch.tensor(self.betas, dtype=torch.complex128).to(dtype) if dtype.is_complex else \
            torch.tensor([b.real for b in self.betas], dtype=dtype)
        values = values.to(like.device).view(n, *([1] * like.ndim))
        return values.expand(n, like.shape[0] // n, *like.shape[1:]).reshape(like.shape)

    def contrast(self, z: torch.Tensor, z_star: torch.Tensor) -> torch.Tensor:
        """a = -Re[(1/(N r)) sum_k w_k exp(-i phi_k) (z_k - z*)] from the stacked states z."""
        parts = z.reshape(self.count, *z_star.shape)  # (n_points*B, ...) -> (n_points, B, ...)
        a = torch.zeros_like(z_star)
        for zk, beta, w in zip(parts, self.betas, self.weights):
            rot = beta.conjugate() / abs(beta)  # exp(-i phi_k)
            dz = zk - z_star
            a -= w * (rot.real * dz.real - rot.imag * dz.imag if dz.is_complex() else rot.real * dz)
        return a / (self.n_circle * self.radius)

    def common_mode(self, z: torch.Tensor, z_star: torch.Tensor) -> torch.Tensor:
        """Mean state over all nudge points (mirrored ones included): real by symmetry."""
        parts = z.reshape(self.count, *z_star.shape)  # (n_points*B, ...) -> (n_points, B, ...)
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
    """Jacobian-vector and vector-Jacobian products (B samples each): the AEP correction's, or the
    linear nudge's."""
    phases: list = field(default_factory=list)
    """What each restart's nudged phase delivered besides the contrast: a circuit its `Settle`, the
    digital phase its stacked nudged states (n_points*B, ...)."""
    linearizations: int = 0
    """Linearisations built (each costs about one force evaluation: the closed form's slopes)."""


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


class AEPCorrection:
    """The AEP correction (J_nc - J_nc^T)(z - z_ref) for a stack of nudge points.

    'frozen' linearises J_nc once at `z_lin`; 'tracking' re-linearises at the common mode of the
    current stacked state on every call. Real-linear in the displacement: a complex displacement is
    corrected part by part (two real slots). `reads` names the weights the products read
    (`analog_ep.linear`). `products` counts J v and J^T v products of B samples.
    """

    def __init__(self, model: EquilibriumModel, x_in: torch.Tensor, z_ref: torch.Tensor, z_lin: torch.Tensor,
                 points: NudgePoints, mode: str, reads: str):
        self.model, self.x_in, self.points, self.mode, self.reads = model, x_in, points, mode, reads
        self.slots = points.count * (2 if points.complex else 1)
        self.z_ref = z_ref.repeat(points.count, *([1] * (z_ref.ndim - 1)))  # (B, ...) -> (n_points*B, ...)
        self.products = 0
        self._frozen = self._linearize(z_lin) if mode == "frozen" else None

    def _linearize(self, z_lin: torch.Tensor):
        stack = lambda t: t.repeat(self.slots, *([1] * (t.ndim - 1)))  # noqa: E731  (B, ...) -> (slots*B, ...)
        return linearize(self.model, stack(self.x_in), stack(z_lin), part="nc", reads=self.reads)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        op = self._frozen
        if op is None:  # tracking: the common mode of the nudge points; displacements stay from z_ref
            op = self._linearize(self.points.common_mode(z, self.z_ref[: z.shape[0] // self.points.count]))
        v = z - self.z_ref
        self.products += 2 * self.slots
        if not v.is_complex():
            return antisymmetric(op, v)
        re, im = antisymmetric(op, torch.cat([v.real, v.imag])).chunk(2)
        return torch.complex(re, im)


class NudgedTerm(Term):
    """The vector field of a nudged phase, for every backend:

        F(z) - beta_k g(z) - clip(corr(z)),

    g the loss gradient times `gain` (1: the gradient of the batch-mean loss, as the digital
    estimator nudges; tokens per sample x batch: each token's own loss, a circuit's per-token
    nudge), its elements bounded at `nudge_clip` per token (module docstring), and the AEP
    correction clipped per point to `aep_clip` x the nudged force (`clip_correction`).
    """

    def __init__(self, model: EquilibriumModel, x_in: torch.Tensor, y: torch.Tensor, points: NudgePoints,
                 config: EPConfig, beta: torch.Tensor, correction: AEPCorrection | None, gain: float = 1.0):
        n = points.count
        stack = lambda t: t.repeat(n, *([1] * (t.ndim - 1)))  # noqa: E731  (B, ...) -> (n_points*B, ...)
        self.model, self.x_rep, self.y_rep, self.config = model, stack(x_in), stack(y), config
        self.beta, self.correction, self.n_points = beta, correction, n
        # loss_grad averages over all n_points*B rows: times n_points is the gradient of each
        # point's batch-mean loss; `gain` rescales it to what the nudge injects.
        self.scale = n * gain
        tokens = y.numel()
        self.clip = config.nudge_clip * gain / tokens if config.nudge_clip > 0 and not points.complex else 0.0
        super().__init__(self._force, model.leak)

    def _force(self, z: torch.Tensor) -> torch.Tensor:
        g = self.model.loss_grad(z, self.y_rep) * self.scale
        if self.clip:
            g = g.clamp(-self.clip, self.clip)
        f = self.model.force(z, self.x_rep) - self.beta * g
        if self.correction is not None:
            f = f - clip_correction(self.correction(z), f, self.n_points, self.config.aep_clip)
        return f


def nudged_term(model: EquilibriumModel, x_in: torch.Tensor, y: torch.Tensor, z_ref: torch.Tensor,
                config: EPConfig, points: NudgePoints, reads: str = "parameters", z_lin: torch.Tensor | None = None,
                gain: float = 1.0) -> NudgedTerm:
    """The nudged phase's term around the reference state `z_ref` (the free fixed point, or a circuit's
    sampled free state); the AEP correction is linearised at `z_lin` (default `z_ref`), reading `reads`."""
    dtype = z_ref.dtype
    if points.complex:
        dtype = torch.complex128 if z_ref.dtype == torch.float64 else torch.complex64
    stacked = z_ref.repeat(points.count, *([1] * (z_ref.ndim - 1)))
    beta = points.beta_per_sample(stacked, dtype)
    aep = config.aep if model.has_nc_force else "none"
    correction = None if aep == "none" else AEPCorrection(model, x_in, z_ref, z_ref if z_lin is None else z_lin,
                                                          points, aep, reads)
    return NudgedTerm(model, x_in, y, points, config, beta, correction, gain)


def digital_nudge(term: NudgedTerm, start: torch.Tensor, z_ref: torch.Tensor, config: EPConfig, points: NudgePoints
                  ) -> tuple[torch.Tensor, int, None]:
    """A digital nudged phase: Euler steps of `eps` from `start`, T2 steps or the most settled
    snapshot (adaptive T2). Returns (contrast, steps behind it, the stacked nudged states at T2 -
    what a local learning rule measures - or None under adaptive T2)."""
    solver = Euler(config.eps)
    contrast = lambda z: points.contrast(z, z_ref)  # noqa: E731
    if config.select_cap:
        phase = solve(term, solver, solver.init(term, start), SelectSettled(config.select_cap, config.select_every,
                                                                            contrast))
        return phase.output, phase.info["selected_step"], None
    phase = solve(term, solver, solver.init(term, start), Fixed(config.steps))
    return contrast(phase.output), config.steps, phase.output


def estimate_adjoint(model: EquilibriumModel, x_in: torch.Tensor, y: torch.Tensor, z_star: torch.Tensor,
                     config: EPConfig, reads: str = "parameters", run_phase=None, gain: float = 1.0) -> Adjoint:
    """Run the nudged phases from z* and return the adjoint estimate a ~ -dz*/dbeta.

    `run_phase(term, start) -> (contrast, steps, record)` integrates one nudged phase; the default
    is the digital one (`digital_nudge`), a circuit passes its settle-and-sample. The contrast of
    each of the `restarts` phases is averaged, then divided by `gain` (back to the batch-mean loss's
    gradient).
    """
    if config.nudge == "linear":
        check(run_phase is None, "nudge", config.nudge, "a circuit settles the nonlinear nudged dynamics",
              "use ep.nudge: nonlinear on an analog twin")
        return linear_adjoint(model, x_in, y, z_star, config, reads, gain)
    points = NudgePoints.from_config(config)
    if points.complex and not model.analytic:
        check(False, "holomorphic", config.holomorphic,
              f"{type(model).__name__} in this mode has no holomorphic extension (relu terms)",
              "use a real estimator (holomorphic: 0) or an analytic model such as mode 'thick'")
    term = nudged_term(model, x_in, y, z_star, config, points, reads, gain=gain)
    start = z_star.repeat(points.count, *([1] * (z_star.ndim - 1))).to(term.beta.dtype)
    if run_phase is None:
        run_phase = lambda t, s: digital_nudge(t, s, z_star, config, points)  # noqa: E731
    total, steps_used, records = None, 0, []
    with torch.no_grad():
        for _ in range(config.restarts):
            a, steps_used, record = run_phase(term, start)
            total = a if total is None else total + a
            if record is not None:
                records.append(record)
    correction = term.correction
    products = correction.products if correction is not None else 0
    built = 0 if correction is None else (1 if correction.mode == "frozen" else term.evals)
    return Adjoint(total / (config.restarts * gain), steps_used, term.evals * points.count, products, records,
                   linearizations=built)


#: Past iterates Anderson mixes in the linear nudge: the linear response converges like restarted
#: GMRES(m), so a longer memory than the free phase's pays (measured on the settled research block:
#: bench/ep_step.py --levers).
LINEAR_NUDGE_MEMORY = 10


class ForceLinearization:
    """J v and J^T u of the whole force at z*: the model's closed-form non-conservative products
    minus the leak when the force is x_in - leak z + F_nc(z) (the thick block), else autograd."""

    def __init__(self, model: EquilibriumModel, x_in: torch.Tensor, z: torch.Tensor, reads: str):
        self.leak = model.leak
        closed = getattr(model, "config", None) is not None and getattr(model.config, "mode", "") == "thick"
        self.nc = linearize(model, x_in, z, part="nc", reads=reads) if closed else None
        if self.nc is None or not hasattr(self.nc, "probs"):  # no closed form: autograd on the whole force
            self.nc, self.leak = linearize(model, x_in, z, part="force", reads=reads), 0.0

    @property
    def products(self) -> int:
        return self.nc.products

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        return self.nc.jvp(v).sub_(v, alpha=self.leak) if self.leak else self.nc.jvp(v)

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        return self.nc.vjp(u).sub_(u, alpha=self.leak) if self.leak else self.nc.vjp(u)


def linear_adjoint(model: EquilibriumModel, x_in: torch.Tensor, y: torch.Tensor, z_star: torch.Tensor,
                   config: EPConfig, reads: str = "parameters", gain: float = 1.0) -> Adjoint:
    """The linear nudge (`EPConfig.nudge = 'linear'`): the nudged phases' beta -> 0 limit.

    Around z*, the nudged dynamics z' = F(z) - beta g(z) - corr(z) move v = z - z* as
    v' = J~ v - beta g(z*) + O(beta v, |v|^2), with J~ = J - (J_nc - J_nc^T) = J^T when the AEP
    correction is on (J without it). The centred contrast -(v+ - v-) / (2 beta) then follows
    a' = J~ a + g exactly: one product per step for both signs. Anderson mixing of
    a <- a + eps (J~ a + g) (per sample, `LINEAR_NUDGE_MEMORY` iterates) replaces the Euler
    transient; it stops when every sample's step is <= `nudge_tol` of its |a|, or after `steps`
    products. Its fixed point J~ a = -g is the equilibrium adjoint (`analog_ep.estimator.exact`).
    It evaluates no force: its cost is `jacobian_products` and one linearisation. (`gain`
    only rescales a circuit's nudge, which this digital limit does not have.)
    """
    with torch.no_grad():
        g = model.loss_grad(z_star, y)
        tokens = y.numel()
        if config.nudge_clip > 0:  # the nudge's own bound (NudgedTerm), at the batch-mean scale
            g = g.clamp(-config.nudge_clip / tokens, config.nudge_clip / tokens)
    transpose = model.has_nc_force and config.aep != "none"
    op = ForceLinearization(model, x_in, z_star, reads)
    product = op.vjp if transpose else op.jvp
    term = Term(lambda a: product(a).add_(g))
    solver = Anderson(config.eps, LINEAR_NUDGE_MEMORY, config.nudge_tol)
    phase = solve(term, solver, solver.init(term, torch.zeros_like(z_star)), Fixed(config.steps))
    return Adjoint(phase.state.z, phase.state.steps, 0, term.evals, linearizations=1)


def vector_field_gradient(model: EquilibriumModel, x: torch.Tensor, y: torch.Tensor, z_star: torch.Tensor,
                          a: torch.Tensor, reads: str = "parameters") -> dict[str, torch.Tensor]:
    """grad_theta <a, F(z*; theta)> for force parameters plus d loss(z*)/d theta for the readout.

    `reads` names the weights differentiated (`analog_ep.linear`): the model's parameters, or the
    chip's effective conductances (the co-processor's knowledge of a chip); the gradients are
    returned under the parameters' names either way.
    """
    force_names = [n for n, _ in model.force_parameters()]
    readout_names = [n for n, _ in model.readout_parameters()]
    leaves = weight_leaves(model, reads, force_names + readout_names)
    substitutes = {n: t for n, t in leaves.items() if not isinstance(t, torch.nn.Parameter)}
    grads: dict[str, torch.Tensor] = {}
    with torch.enable_grad(), model.substituted(substitutes):
        x_in = model.drive(x)  # live: embeddings learn through the clamp
        f = model.force(z_star.detach(), x_in)
        gs = torch.autograd.grad((a.detach() * f).sum(), [leaves[n] for n in force_names], allow_unused=True)
        for name, g in zip(force_names, gs):
            grads[name] = torch.zeros_like(leaves[name]) if g is None else g
        if readout_names:
            loss = model.loss(z_star.detach(), y)
            gs = torch.autograd.grad(loss, [leaves[n] for n in readout_names])
            grads.update(dict(zip(readout_names, gs)))
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

    @property
    def equivalents(self) -> int:
        """The step's cost in force-evaluation equivalents: a force evaluation of B samples counts
        1, a Jacobian-vector or vector-Jacobian product 2 (the AEP correction's and the linear
        nudge's products, and the final vector-field gradient), a linearisation 1."""
        a = self.adjoint
        return self.free.force_evals + a.force_evals + 2 * a.jacobian_products + a.linearizations + 2


def ep_gradient(model: EquilibriumModel, x: torch.Tensor, y: torch.Tensor, relax_config: RelaxConfig,
                ep_config: EPConfig, reads: str = "parameters") -> EPResult:
    """Free phase, nudged phases, vector-field readout: the full EP gradient for one batch.

    The relaxations read the model's products as it routes them (through its chip, with the
    periphery, when it has one); the co-processor's linear algebra (the AEP correction, the
    vector-field gradient) reads `reads` (`analog_ep.linear`).
    """
    with torch.no_grad():
        x_in = model.drive(x)
        free = relax(Term(lambda z: model.force(z, x_in), model.leak), model.initial_state(x_in), relax_config)
        loss = float(model.loss(free.z, y))
    adjoint = estimate_adjoint(model, x_in, y, free.z, ep_config, reads)
    grads = vector_field_gradient(model, x, y, free.z, adjoint.a, reads)
    return EPResult(grads, free, adjoint, loss)
