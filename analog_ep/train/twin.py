"""The digital reference twin: ideal weights, exact relaxation, an exact or EP gradient.

One `DigitalTwin` owns a model, its optimizer, schedule, stabilisers and optional parameter EMA,
and advances one step per batch. The gradient source is selectable: 'ep' (the estimator a chip
would run), 'bptt' (backpropagation through the T1 unroll) or 'adjoint' (exact implicit gradient).

The step is the same for every twin; what it relaxes on and writes through are components
(`analog_ep.train.backend`): the digital twin relaxes digitally and writes its parameters; the
analog twin (`analog_ep.train.analog.AnalogTwin`) relaxes on its chip (and circuit) and writes
pulses. A skipped step (validity gate) writes nothing and reports no pulses, and every step -
skipped or not - advances the learning-rate schedule, so all twins stay on the same schedule.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import torch

from analog_ep.errors import check
from analog_ep.estimator.ep import EPConfig, vector_field_gradient
from analog_ep.estimator.exact import adjoint_gradient, bptt_gradient
from analog_ep.model.base import EquilibriumModel
from analog_ep.relax.solvers import RelaxConfig
from analog_ep.schema.train import GRADIENTS, TWINS, TrainConfig  # noqa: F401  (re-exported)
from analog_ep.train.backend import DigitalBackend
from analog_ep.train.optim import (OptimizerConfig, ParameterEMA, ScheduleConfig, build_optimizer,
                                   build_scheduler, clip_gradients)
from analog_ep.train.stabilizers import (JacobianController, StabilizerConfig, WeightConstraints, abscissa_penalty,
                                         add_scaled, grad_norm, jacobian_penalty, residual_penalty, resreg_fraction)



@dataclass
class StepRecord:
    """What one training step measured."""

    loss: float
    """Task loss at the free state (before the update)."""
    residual: float
    """Free-phase residual at T1."""
    force_evals: int
    """Force evaluations of one batch spent on the gradient."""
    grad_norm: float
    """Norm of the applied gradient (before clipping)."""
    jacreg: float
    """Jacobian-penalty (jacreg) weight used."""
    skipped: bool
    """True when the validity gate skipped the task gradient."""
    settle_time: float | None = None
    """Physical settle time of all phases (s). None when the relaxation ran no circuit (the digital
    twin, or an analog twin built without `circuit=`): the digital loop has no physical time."""
    energy: float | None = None
    """Estimated energy of the step (J). None without a circuit, like `settle_time`: the energy
    model needs the circuit's settle times and constants."""
    verdict: str = ""
    """Settle monitor's verdict on the free phase ('settled', 'slow', 'oscillating', ...)."""
    pulses: int = 0
    """Device pulses written (analog twin; 0 on a skipped step)."""
    latency: float = 0.0
    """Estimated wall time of the step on the chip: settles, sampling, writes (s; analog twin on a
    circuit)."""
    accuracy: float = float("nan")
    """Fraction of the batch's predictions (argmax of the logits at the free state) that are right."""


class ParameterWriter:
    """Writes an update the digital way: the optimizer's step on the parameters."""

    pulses = rounds = 0
    reads = (0, 0)  # the write controller's (row reads, devices converted): none

    def begin(self) -> None:
        """A new step: nothing written yet."""

    def write(self, twin: "DigitalTwin") -> None:
        twin.optimizer.step()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def scaled_groups(model, params: list, config: OptimizerConfig, **options) -> list[dict]:
    """`params` as optimizer groups, one per `config.lr_scale` factor (lr = config.lr x factor), each
    with `options` (e.g. weight_decay); a name in lr_scale that is not a parameter is refused."""
    names = {id(p): n for n, p in model.named_parameters()}
    known = set(names.values())
    for name in config.lr_scale:
        check(name in known, f"optim.lr_scale.{name}", config.lr_scale[name], "is not a parameter of the model",
              f"use one of {', '.join(sorted(known))}")
    groups: dict[float, list] = {}
    for p in params:
        groups.setdefault(config.lr_scale.get(names[id(p)], 1.0), []).append(p)
    return [{"params": ps, "lr": config.lr * factor, **options} for factor, ps in groups.items()]


class DigitalTwin:
    """A model trained with ideal weights (see module docstring)."""

    def __init__(self, model: EquilibriumModel, relax_config: RelaxConfig, ep_config: EPConfig,
                 optim_config: OptimizerConfig, schedule_config: ScheduleConfig,
                 stabilizer_config: StabilizerConfig, gradient: str = "ep", ema: float = 0.0, seed: int = 0,
                 backend=None, writer=None):
        check(gradient in GRADIENTS, "gradient", gradient, "unknown gradient", f"use one of {', '.join(GRADIENTS)}")
        self.backend = backend if backend is not None else DigitalBackend(relax_config, ep_config)
        self.writer = writer if writer is not None else ParameterWriter()
        check(gradient == "ep" or isinstance(self.backend, DigitalBackend), "gradient", gradient,
              "a circuit's twin estimates its gradient by EP", "use gradient: ep")
        self.model, self.gradient = model, gradient
        self.relax_config, self.ep_config, self.stab = relax_config, ep_config, stabilizer_config
        self.optim_config = optim_config
        self.params = list(model.parameters())
        self.optimizer = build_optimizer(self.optimizer_groups(), optim_config)
        self.scheduler = build_scheduler(self.optimizer, schedule_config)
        self.controller = JacobianController(stabilizer_config)
        self.constraints = WeightConstraints(model, stabilizer_config)
        self.ema = ParameterEMA(self.params, ema) if ema > 0 else None
        self.generator = torch.Generator().manual_seed(seed)
        self._eig_cache: dict = {}
        self.current_step = 0
        self.last_cost = None

    def optimizer_groups(self):
        """What the optimizer is built over: every parameter, one group, or groups by their
        `optim.lr_scale` factor when it names any."""
        if not self.optim_config.lr_scale:
            return self.params
        return scaled_groups(self.model, self.params, self.optim_config)

    # ---- one step ----------------------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor, step: int) -> StepRecord:
        model, backend = self.model, self.backend
        self.current_step = step
        self.writer.begin()
        with torch.no_grad():
            x_in = model.drive(x)
        free = backend.free(model, x_in, self.generator)
        with torch.no_grad():
            loss = float(model.loss(free.z_eval, y))
            accuracy = float((model.logits(free.z_eval).argmax(-1) == y).double().mean())
        skipped = self.stab.gate > 0 and free.residual_gate > self.stab.gate
        grads: dict[str, torch.Tensor] = {}
        evals, adjoint = free.force_evals, None
        if not skipped:
            if self.gradient == "ep":
                adjoint = backend.adjoint(model, x_in, y, free, self.generator)
                grads = self.ep_grads(x, y, x_in, free, adjoint)
                evals += adjoint.force_evals + 1
            elif self.gradient == "bptt":
                grads, _ = bptt_gradient(model, x, y, self.relax_config.steps, self.relax_config.eps)
                evals += self.relax_config.steps
            else:
                grads = adjoint_gradient(model, x, y, free.z, strict=False).grads
        weight = self.stabilize(grads, x_in, free.z, free.z_eval, free.residual, skipped, step)
        norm = self._apply(grads)
        self._advance_schedule()
        costs = backend.cost(model, free, adjoint, self.writer.pulses, self.writer.rounds, self.writer.reads)
        self.last_cost = costs.detail
        return StepRecord(loss, free.residual, evals, norm, weight, skipped, costs.settle_time, costs.energy,
                          free.verdict, self.writer.pulses, costs.latency, accuracy)

    def ep_grads(self, x: torch.Tensor, y: torch.Tensor, x_in: torch.Tensor, free, adjoint) -> dict[str, torch.Tensor]:
        """The EP gradient from the phases: the vector-field estimator reading the backend's `reads`."""
        return vector_field_gradient(self.model, x, y, free.z, adjoint.a, self.backend.reads)

    def stabilize(self, grads: dict[str, torch.Tensor], x_in: torch.Tensor, z: torch.Tensor,
                  z_budget: torch.Tensor, residual: float, skipped: bool, step: int) -> float:
        """Add the stabilisers' gradients to `grads` (in place) and update the controllers; returns
        the jacreg weight used (divergence, the abort fuse included, is watched by the caller:
        `analog_ep.train.stabilizers.DivergenceMonitor`). `z` is the settled state, `z_budget` the state
        after the T1 budget (what evaluation sees), `residual` its residual. Their products read
        the backend's `reads`."""
        model, stab, reads = self.model, self.stab, self.backend.reads
        jacreg_weight = self.controller.weight if stab.jacreg > 0 else 0.0
        if not skipped:
            fraction = resreg_fraction(stab, residual)
            if fraction > 0:
                extra = residual_penalty(model, x_in, z_budget, self.relax_config.eps, reads)
                task, extra_norm = grad_norm(grads), grad_norm(extra)
                add_scaled(grads, extra, fraction * task / (extra_norm + 1e-20))
            if stab.eigreg > 0:
                extra, _ = abscissa_penalty(model, x_in, z, stab.eigreg, stab.eig_margin, self._eig_cache, reads)
                add_scaled(grads, extra)
        if jacreg_weight > 0:
            add_scaled(grads, jacobian_penalty(model, x_in, z, jacreg_weight, self.generator, reads))
        self._feedback(residual)
        return jacreg_weight

    def _feedback(self, residual: float) -> None:
        if self.stab.jacreg > 0:
            self.controller.update(residual)
        elif self.stab.damping_feedback and hasattr(self.model, "config"):
            cfg = self.model.config
            if residual > 1e-3:
                cfg.damping = min(self.stab.damping_max, cfg.damping * 1.3)
            elif residual < 2e-4:
                cfg.damping = max(0.5, cfg.damping * 0.97)

    def _apply(self, grads: dict[str, torch.Tensor]) -> float:
        """Load the gradients, clip them and write the update; returns the norm before clipping."""
        if not grads or not all(bool(torch.isfinite(g).all()) for g in grads.values()):
            return float("nan") if grads else 0.0  # a non-finite estimate is skipped, not applied
        named = dict(self.model.named_parameters())
        self.optimizer.zero_grad(set_to_none=True)
        for name, g in grads.items():
            named[name].grad = g.detach().clone()
        norm = clip_gradients(self.params, self.optim_config.grad_clip)
        self.writer.write(self)
        self.constraints.apply()
        if self.ema is not None:
            self.ema.update(self.params)
        return norm

    def _advance_schedule(self) -> None:
        """One schedule step per training step, whether or not an update was written."""
        with warnings.catch_warnings():  # sign pulses and skipped steps bypass optimizer.step(), which torch checks
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            self.scheduler.step()

    # ---- evaluation --------------------------------------------------------------------------
    def evaluate(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Mean loss at the free phase's evaluated state over fixed batches (`evaluate_metrics`)."""
        return self.evaluate_metrics(batches)[0]

    @torch.no_grad()
    def evaluate_metrics(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
        """(mean loss per batch, accuracy over all samples) at the free phase's evaluated state (the
        T1 state; a circuit's sample) over fixed batches (with the EMA weights when enabled)."""
        def run() -> tuple[float, float]:
            total, correct, count = 0.0, 0, 0
            for x, y in batches:
                free = self.backend.free(self.model, self.model.drive(x), self.generator)
                total += float(self.model.loss(free.z_eval, y))
                correct += int((self.model.logits(free.z_eval).argmax(-1) == y).sum())
                count += y.numel()
            return total / len(batches), correct / count

        if self.ema is None:
            return run()
        with self.ema.applied(self.params):
            return run()

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything the next step depends on (a resumed twin continues bit for bit)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "controller": self.controller.state_dict(),
                "constraints": self.constraints.state_dict(),
                "ema": None if self.ema is None else self.ema.state_dict(),
                "generator": self.generator.get_state(),
                "damping": getattr(getattr(self.model, "config", None), "damping", None),  # damping feedback
                "eig_start": self._eig_cache.get("v0"),  # eigreg's warm Lanczos start
                **self.writer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.controller.load_state_dict(state["controller"])
        self.constraints.load_state_dict(state["constraints"])
        if state["damping"] is not None:
            self.model.config.damping = state["damping"]
        if state["eig_start"] is not None:
            self._eig_cache["v0"] = state["eig_start"]
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.generator.set_state(state["generator"])
        self.writer.load_state_dict(state)
