"""Why a twin diverged: its fingerprint at divergence and at its best state, and one line saying why.

Written to `<run>/diagnosis_<twin>.json` when a twin diverges:

    {"twin", "step", "reason",                 the divergence (see DivergenceMonitor)
     "diagnosis",                              one line, e.g. "complex pair crossed Re mu = 0: Hopf ..."
     "best_step", "best_val_loss",             the state kept in best.pt
     "at_divergence", "at_best"}               `analog_ep.diagnostics.fingerprint` reports (None when
                                               the weights are not finite; {"error": ...} when the
                                               probe itself failed)

The fingerprints read the twin's weights digitally (for the analog twin: the mirror of its tiles
as last read).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from analog_ep.atomic import atomic_write
from analog_ep.errors import AnalogEPError
from analog_ep.run.status import one_line

#: An eigenvalue counts as complex when |Im mu| exceeds this fraction of max(1, |mu|).
_COMPLEX_RTOL = 1e-6


def fingerprint_at(model, weights: dict, x: torch.Tensor, y: torch.Tensor, relax_config, ep_config) -> dict | None:
    """The fingerprint of `model` carrying `weights`; None when the weights are not finite."""
    from analog_ep.diagnostics.fingerprint import fingerprint

    if not all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point()):
        return None
    model.load_state_dict(weights)
    try:
        return fingerprint(model, x, y, relax_config, ep_config)
    except (AnalogEPError, ArithmeticError, ValueError, RuntimeError) as err:  # ARPACK, a NaN mid-probe
        return {"error": one_line(f"{type(err).__name__}: {err}")}


def diagnosis_line(at_divergence: dict | None, at_best: dict | None, best_step: int, abort_residual: float) -> str:
    """One line naming what failed, from the two fingerprints."""
    if at_divergence is None:
        return "the weights became non-finite: a numerical blow-up (lower optim.lr or raise jacreg)"
    if "error" in at_divergence:
        return f"no fingerprint at divergence ({at_divergence['error']})"
    re, im = at_divergence["eig_re"][0], at_divergence["eig_im"][0]
    residual = at_divergence["residual"]
    before = ""
    if at_best is not None and "error" not in at_best:
        before = f"; Re mu {at_best['eig_re'][0]:+.3g} at best step {best_step}"
    if re > 0 and abs(im) > _COMPLEX_RTOL * max(1.0, math.hypot(re, im)):
        return f"complex pair crossed Re mu = 0: Hopf (mu = {re:+.3g} +- {abs(im):.3g}j{before})"
    if re > 0:
        return f"real eigenvalue crossed Re mu = 0: the fixed point lost stability (mu = {re:+.3g}{before})"
    if residual > abort_residual:
        return (f"fixed point stable (Re mu = {re:+.3g}) but not reached in T1 (residual {residual:.2g}): "
                f"a slow mode (raise relax.steps or jacreg{before})")
    return (f"fixed point stable and settled (Re mu = {re:+.3g}, residual {residual:.2g}): the optimizer "
            f"diverged (lower optim.lr{before})")


def write_diagnosis(path: Path, report: dict) -> None:
    text = json.dumps(report, indent=1, allow_nan=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
