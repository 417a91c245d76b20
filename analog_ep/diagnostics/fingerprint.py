"""The fingerprint of an operator: is the EP estimate valid here, and is the fixed point stable?

* residual at T1 (the estimator's validity signal);
* cos(EP, BPTT) overall and per parameter group (how faithful the chip-style gradient is);
* the leading eigenvalues mu of the continuous-time Jacobian dF/dz at the free state
  (Re mu > 0: unstable; a complex pair: Hopf oscillation) and the numerical abscissa;
* force evaluations the EP gradient used.
"""
from __future__ import annotations

import torch

from analog_ep.diagnostics.spectrum import SpectrumConfig, leading_eigenvalues
from analog_ep.estimator.ep import EPConfig, ep_gradient
from analog_ep.estimator.exact import bptt_gradient
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
                ep_config: EPConfig, spectrum: SpectrumConfig = SpectrumConfig(k=4)) -> dict:
    """The diagnose report as a plain dict (keys: residual, cos_ep_bptt, cos_groups, eig_re, eig_im,
    abscissa, force_evals, loss)."""
    ep = ep_gradient(model, x, y, relax_config, ep_config)
    bptt, _ = bptt_gradient(model, x, y, relax_config.steps, relax_config.eps)
    names = [n for n, _ in model.named_parameters()]
    overall = cosine(torch.cat([ep.grads[n].reshape(-1) for n in names]),
                     torch.cat([bptt[n].reshape(-1) for n in names]))
    with torch.no_grad():
        x_in = model.drive(x)
    spec = leading_eigenvalues(lambda z: model.force(z, x_in), ep.free.z, spectrum)
    return {
        "residual": ep.free.residual,
        "cos_ep_bptt": overall,
        "cos_groups": group_cosines(model, ep.grads, bptt),
        "eig_re": list(spec.eig_re),
        "eig_im": list(spec.eig_im),
        "abscissa": spec.abscissa,
        "force_evals": ep.force_evals,
        "loss": ep.loss,
    }
