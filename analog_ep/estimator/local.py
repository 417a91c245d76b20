"""The local EP rule of a layered energy model: each crossbar's update from its two layers' rates.

For a layered Hopfield network (`analog_ep.model.mlp`) the energy couples layer l and l+1 through
-r_l^T W_l r_{l+1}, so dE/dW_l = -r_l r_{l+1}^T and EP's estimate is

    centred:   g_W = -(1 / (2 beta G)) sum_b [ r_l^+ (r_{l+1}^+)^T - r_l^- (r_{l+1}^-)^T ]
    one-sided: g_W = -(1 / (beta G))   sum_b [ r_l^+ (r_{l+1}^+)^T - r_l^0 (r_{l+1}^0)^T ]

with the rates measured at the nudged (+-beta) and free (0) equilibria, and the biases'
g_b = -(1 / (2 beta G)) sum_b (r^+ - r^-) (G the nudge gain: 1 for the batch-mean nudge, B for a
circuit's per-sample nudge; restarts are averaged). Nothing in it reads a conductance or carries
an error backward across a crossbar: each crossbar needs only the rates on its own rows and
columns, so it can be written as rank-1 pulse updates (`analog_ep.hardware.outer`).

Two equal ways to write P P'^T - M M'^T (P, M the rates of a plus and minus phase) as rank-1 terms
(`ChipConfig.local_update`):

* 'naive': P P'^T and -M M'^T, two large terms whose difference is small;
* 'rank2': [(P - M)(P' + M')^T + (P + M)(P' - M')^T] / 2, each term with one small (difference)
  factor. Stochastic pulse trains realise a term x d^T with a spread per device that grows with
  |x_i d_j|, so the naive form's noise is that of the two large terms, the rank-2 form's that of
  small ones: README, "The MLP's local rule", has the measured numbers.

The estimate equals the vector-field estimator (`analog_ep.estimator.ep`) to first order in beta:
both are EP; this one uses the energy's closed form, the vector-field one its linearisation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from analog_ep.errors import check
from analog_ep.estimator.ep import Adjoint, EPConfig, NudgePoints
from analog_ep.schema.hardware import LOCAL_UPDATES


@dataclass
class LocalUpdate:
    """A local EP estimate as rank-1 terms: g_W = -scale * x^T d per crossbar, dense bias gradients."""

    terms: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)
    """Weight name -> (x (N, in), d (N, out), scale): the rates on the crossbar's rows and columns."""
    biases: dict[str, torch.Tensor] = field(default_factory=dict)
    """Bias name -> its gradient (a neuron's own local quantity, held digitally)."""

    def dense(self, name: str) -> torch.Tensor:
        """The weight gradient formed digitally: -scale x^T d, (in, out)."""
        x, d, scale = self.terms[name]
        return -scale * (x.t() @ d)

    def grads(self) -> dict[str, torch.Tensor]:
        """Every gradient dense (what a digital controller writing 'ideal' or 'quantized' forms)."""
        return {**{n: self.dense(n) for n in self.terms}, **self.biases}


def nudged_states(adjoint: Adjoint) -> list[torch.Tensor]:
    """Each restart's stacked nudged states as measured: a circuit's samples, or the digital states."""
    out = [getattr(p, "sample", p) for p in adjoint.phases]
    check(bool(out) and all(isinstance(t, torch.Tensor) for t in out), "ep.select_cap", "adaptive",
          "local learning needs the nudged states at the end of T2", "set ep.select_cap: 0")
    return out


def local_update(model, x_in: torch.Tensor, free_z: torch.Tensor, adjoint: Adjoint, config: EPConfig,
                 form: str = "rank2", gain: float = 1.0) -> LocalUpdate:
    """The local EP estimate from the free state and the adjoint's recorded nudged states.

    `model` provides `layer_rates(z, x_in)` (the rates [r_0 = input, r_1, ..., r_out]) and
    `local_pairs()` ((weight name, lower layer, upper layer) and (bias name, layer)).
    """
    check(form in LOCAL_UPDATES, "local_update", form, "unknown form", f"use one of {', '.join(LOCAL_UPDATES)}")
    points = NudgePoints.from_config(config)
    check(not points.complex, "holomorphic", config.holomorphic,
          "the local rule measures real equilibria", "use the centred or one-sided estimator (holomorphic: 0)")
    phases = nudged_states(adjoint)
    batch = free_z.shape[0]
    span = 2 * config.beta if points.count == 2 else config.beta
    coef = 1.0 / (span * gain * len(phases))
    weights, biases = model.local_pairs()
    free_rates = model.layer_rates(free_z, x_in) if points.count == 1 else None
    per_phase = []
    for z in phases:
        parts = z.real.reshape(points.count, batch, *z.shape[1:])  # (n_points*B, D) -> (n_points, B, D)
        plus = model.layer_rates(parts[0], x_in)
        minus = model.layer_rates(parts[1], x_in) if points.count == 2 else free_rates
        per_phase.append((plus, minus))
    out = LocalUpdate()
    for name, lower, upper in weights:
        xs, ds = [], []
        for plus, minus in per_phase:
            P, M, Pu, Mu = plus[lower], minus[lower], plus[upper], minus[upper]
            if form == "rank2":
                xs += [P - M, P + M]
                ds += [Pu + Mu, Pu - Mu]
            else:
                xs += [P, M]
                ds += [Pu, -Mu]
        out.terms[name] = (torch.cat(xs), torch.cat(ds), coef * (0.5 if form == "rank2" else 1.0))
    for name, layer in biases:
        out.biases[name] = -coef * sum((p[layer] - m[layer]).sum(0) for p, m in per_phase)
    return out


__all__ = ["LOCAL_UPDATES", "LocalUpdate", "local_update", "nudged_states"]
