"""How well stochastic pulse trains realise the MLP's local EP update: 'naive' against 'rank2'.

One digits batch, the MLP of chips/rram_mlp_digits.yaml at its initial weights, digital free and
+-beta phases (settled); the local rule's rank-1 terms (`analog_ep.estimator.local`) in each form
are turned into coincidence counts by the chip's pulse trains (`analog_ep.hardware.outer`,
the chip's pulse step, bit length and update management, lr = the chip's peak lr times the matrix's
`optim.lr_scale`) over `--draws`
draws. Printed (one JSON object), per form and crossbar: cosine and relative error of the
realised change against lr x the exact local update, averaged over draws, and pulses per step.

    python bench/mlp_local_rule.py [--draws 20] [--lr LR]
"""
from __future__ import annotations

import argparse
import json

import torch

from analog_ep.config import load_config
from analog_ep.estimator.ep import estimate_adjoint
from analog_ep.estimator.local import local_update
from analog_ep.hardware.chip import AnalogChip
from analog_ep.hardware.outer import coincidences
from analog_ep.relax.solvers import RelaxConfig, relax
from analog_ep.run.loop import build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--lr", type=float, default=None, help="default: the chip's optim.lr")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config("rram_mlp_digits")
    lr = cfg.optim.lr if args.lr is None else args.lr
    data, model = build(cfg)
    chip_model = type(model)(cfg.model)
    chip = AnalogChip(chip_model, cfg.chip)  # only for its pulse step per matrix (scale x dw_min)
    x, y = data.batch("train", cfg.train.batch_size, torch.Generator().manual_seed(0))
    x_in = model.drive(x)
    ep = cfg.ep
    with torch.no_grad():
        free = relax(lambda u: model.force(u, x_in), model.initial_state(x_in), RelaxConfig(eps=0.5, steps=200)).z
    from dataclasses import replace
    ep = replace(ep, steps=200, eps=0.5)
    adjoint = estimate_adjoint(model, x_in, y, free, ep)
    out = {"lr": lr, "lr_scale": cfg.optim.lr_scale, "draws": args.draws, "batch": cfg.train.batch_size}
    for form in ("naive", "rank2"):
        update = local_update(model, x_in, free, adjoint, ep, form)
        gen = torch.Generator().manual_seed(1)
        for name, (xs, ds, scale) in update.terms.items():
            step = chip.step_size[name]
            lr_name = lr * cfg.optim.lr_scale.get(name, 1.0)  # the matrix's own lr (optim.lr_scale)
            want = -lr_name * update.dense(name).double()  # the change the rule asks for, model units
            cos, err, pulses = 0.0, 0.0, 0
            for _ in range(args.draws):
                up, down = coincidences(xs, ds, lr_name * scale, step, cfg.chip.pulse_bits, cfg.chip.bl_management,
                                        cfg.chip.update_management, gen)
                got = (up - down).double() * step
                cos += float(torch.dot(got.flatten(), want.flatten()) / (got.norm() * want.norm() + 1e-30))
                err += float((got - want).norm() / want.norm())
                pulses += int((up + down).sum())
            out[f"{form}/{name}"] = {"cos": round(cos / args.draws, 4), "rel_error": round(err / args.draws, 4),
                                     "pulses_per_step": pulses // args.draws,
                                     "expected_pulses_net": round(float(want.abs().sum() / step), 1)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
