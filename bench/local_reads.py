"""What local learning's reads cost the update's direction, on a shipped chip at its initial weights.

One batch, one sampled free state and one adjoint (the chip's circuit, `chip.learning: local`),
then the estimator's weight products two ways on the same chip: read through the tiles
(reads='tiles': forward reads with `periphery`, transposed reads with `periphery_backward`) and
with the co-processor's exact conductances (reads='chip'). Prints one JSON object:

* `grad_cos` - cosine of the local vector-field gradient of the held matrices to the
  co-processor's, with the chip's own transposed reads, with ideal transposed reads (no converter,
  no noise: `periphery_backward` adc_bits = dac_bits = read_noise = 0), and with an ideal
  periphery both ways (the floor is then float32 rounding);
* `aep_cos` - the same for one AEP product pair (J_nc - J_nc^T) v at the free state, v the
  adjoint;
* `norm_ratio` - |local| / |co-processor| of the gradient (a scale error would show here).

Also with one transposed-read setting changed at a time (`--backward KEY=VALUE ...`; default: no
ADC, no DAC, no read noise, an ADC range of 1.0), to say which limits the AEP products.

Usage: python bench/local_reads.py [CHIP] [--batch N] [--backward KEY=VALUE ...]
(default rram_512, 8 sequences)
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json

import torch

from analog_ep.circuit.dynamics import circuit_solver
from analog_ep.circuit.measure import circuit_adjoint, settle_free
from analog_ep.config import load_config
from analog_ep.estimator.ep import vector_field_gradient
from analog_ep.hardware.chip import AnalogChip
from analog_ep.linear import antisymmetric, linearize
from analog_ep.run.loop import build
from analog_ep.schema.hardware import BackwardPeripheryConfig


def cosine(a: dict, b: dict, names) -> float:
    x = torch.cat([a[n].flatten() for n in names]).double()
    y = torch.cat([b[n].flatten() for n in names]).double()
    return float(x @ y / (x.norm() * y.norm()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chip", nargs="?", default="rram_512")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--backward", nargs="*", default=["adc_bits=0", "dac_bits=0", "read_noise=0",
                                                           "adc_bound=1.0"],
                        help="also try these transposed-read settings, one at a time (chip.periphery_backward.KEY=VALUE)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.chip, ["chip.learning=local"])
    corpus, model = build(cfg)
    x, y = corpus.batch("train", args.batch, torch.Generator().manual_seed(0))
    ideal_back = BackwardPeripheryConfig(dac_bits=0, adc_bits=0, read_noise=0.0, optical_noise=0.0)
    ideal_periphery = dataclasses.replace(cfg.chip.periphery, dac_bits=0, adc_bits=0, read_noise=0.0,
                                          optical_noise=0.0, weight_bits=0, mismatch=0.0)
    tight = {}
    for item in args.backward:  # one transposed-read setting changed at a time
        key, value = item.split("=")
        value = type(getattr(cfg.chip.periphery, key))(float(value) if key != "noise_management" else value)
        tight[f"backward_{key}_{value}"] = dataclasses.replace(
            cfg.chip, periphery_backward=dataclasses.replace(cfg.chip.periphery_backward, **{key: value}))
    variants = {"chip": cfg.chip, **tight, "ideal_backward": dataclasses.replace(cfg.chip, periphery_backward=ideal_back),
                "ideal_periphery": dataclasses.replace(cfg.chip, periphery=ideal_periphery,
                                                       periphery_backward=BackwardPeripheryConfig())}
    out = {"chip": args.chip, "batch": args.batch, "grad_cos": {}, "aep_cos": {}, "norm_ratio": {}}
    solver = circuit_solver(cfg.circuit.dynamics)
    for label, chip_cfg in variants.items():
        m = copy.deepcopy(model)
        chip = AnalogChip(m, chip_cfg)
        names = list(chip.arrays)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            x_in = m.drive(x)
            free = settle_free(m, x_in, solver, cfg.circuit.settle, gen)
        adjoint = circuit_adjoint(m, x_in, y, free, solver, cfg.circuit.settle, cfg.ep, gen, "tiles")
        local = vector_field_gradient(m, x, y, free.sample, adjoint.a, "tiles")
        exact = vector_field_gradient(m, x, y, free.sample, adjoint.a, "chip")
        out["grad_cos"][label] = round(cosine(local, exact, names), 4)
        out["norm_ratio"][label] = round(float(torch.cat([local[n].flatten() for n in names]).norm()
                                               / torch.cat([exact[n].flatten() for n in names]).norm()), 4)
        v = adjoint.a
        corr_local = antisymmetric(linearize(m, x_in, free.sample, part="nc", reads="tiles"), v)
        corr_exact = antisymmetric(linearize(m, x_in, free.sample, part="nc", reads="chip"), v)
        out["aep_cos"][label] = round(cosine({"c": corr_local}, {"c": corr_exact}, ["c"]), 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
