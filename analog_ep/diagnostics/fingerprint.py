"""The fingerprint of an operator: is the EP estimate valid here, and is the fixed point stable?

* residual at T1 (the estimator's validity signal);
* cos(EP, BPTT) overall and per parameter group (how faithful the chip-style gradient is);
* the leading eigenvalues mu of the continuous-time Jacobian dF/dz at the free state
  (Re mu > 0: unstable; a complex pair: Hopf oscillation) and the numerical abscissa;
* force evaluations the EP gradient used.

What is read (`reads`, an explicit choice):

* 'parameters' - the model's own weights (a digital model; on a model holding a chip, its
  parameters, bypassing the chip);
* 'chip' - the chip as read through its periphery. The relaxation (T1 Euler steps, `relax.*`) and
  the nudged phases (`ep.*`) run every weight product through the chip's reads - read noise,
  converters, programmed levels, mismatch - so the residual, the loss and the EP estimate are
  what the chip itself would measure. The derivatives - the co-processor's AEP and vector-field
  products, BPTT through the T1 unroll, the Jacobian's eigenvalues - are those of the chip's
  deterministic effective conductances (levels x mismatch, `AnalogChip.effective_weights`), the
  operator of its mean read, linearised at the state the noisy relaxation reached: a noisy,
  quantised read has no derivative. cos(EP, BPTT) thus compares the chip's measured estimate with
  the exact gradient of its mean operator. The circuit's node dynamics are not simulated here
  (the relaxation is the digital twin's Euler loop on the chip's reads).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from analog_ep.errors import check
from analog_ep.estimator.ep import EPConfig, ep_gradient
from analog_ep.estimator.exact import bptt_gradient
from analog_ep.linear import READS, SpectrumConfig, leading_eigenvalues, linearize
from analog_ep.model.base import EquilibriumModel
from analog_ep.relax.solvers import RelaxConfig


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(a, b) of two flat tensors, clamped to [-1, 1] (rounding gives 1.000000238 for a == b in
    float32); 0 when either is zero."""
    return min(1.0, max(-1.0, float((a @ b) / (a.norm() * b.norm() + 1e-30))))


def group_cosines(model: EquilibriumModel, g1: dict, g2: dict) -> dict[str, float]:
    """Cosine between two gradients per parameter group of `model`."""
    out = {}
    for group, names in model.groups().items():
        a = torch.cat([g1[n].reshape(-1) for n in names])
        b = torch.cat([g2[n].reshape(-1) for n in names])
        out[group] = cosine(a, b)
    return out


def fingerprint(model: EquilibriumModel, x: torch.Tensor, y: torch.Tensor, relax_config: RelaxConfig,
                ep_config: EPConfig, spectrum: SpectrumConfig = SpectrumConfig(k=4), reads: str = "parameters"
                ) -> dict:
    """The diagnose report as a plain dict (keys: reads, residual, cos_ep_bptt, cos_groups, eig_re,
    eig_im, abscissa, force_evals, loss); `reads` is 'parameters' or 'chip' (module docstring)."""
    check(reads in READS, "reads", reads, "unknown weight source", f"use one of {', '.join(READS)}")
    chip = model.hardware
    check(reads == "parameters" or chip is not None, "reads", reads, "the model holds no chip",
          "build an AnalogChip on it, or read its parameters")
    # 'parameters' on a chip-backed model: every product reads the parameters, none the chip.
    bypass = model.substituted({n: model.get_parameter(n) for n in chip.arrays}) \
        if reads == "parameters" and chip is not None else nullcontext()
    with bypass:
        ep = ep_gradient(model, x, y, relax_config, ep_config, reads)
        bptt, _ = bptt_gradient(model, x, y, relax_config.steps, relax_config.eps, reads)
        with torch.no_grad():
            x_in = model.drive(x)
        spec = leading_eigenvalues(linearize(model, x_in, ep.free.z, part="force", reads=reads), ep.free.z, spectrum)
    names = [n for n, _ in model.named_parameters()]
    overall = cosine(torch.cat([ep.grads[n].reshape(-1) for n in names]),
                     torch.cat([bptt[n].reshape(-1) for n in names]))
    return {
        "reads": reads,
        "residual": ep.free.residual,
        "cos_ep_bptt": overall,
        "cos_groups": group_cosines(model, ep.grads, bptt),
        "eig_re": list(spec.eig_re),
        "eig_im": list(spec.eig_im),
        "abscissa": spec.abscissa,
        "force_evals": ep.force_evals,
        "loss": ep.loss,
    }
