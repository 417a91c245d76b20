"""Cost of an analog relaxation vs a digital one with the same number of force evaluations.

The research configuration's block (C=128, H=4, T=64, B=32) relaxes T1 Euler steps three ways:
digitally; on a chip through the fast read path (tile conductances read once, periphery applied
as vectorised torch ops on every product); and, for reference, with every product through
aihwkit's own tile forward (`AnalogTile.forward`, what a naive co-simulation would call).

    python bench/analog_relax.py [--steps 40] [--json]

Prints seconds per relaxation and the ratios analog/digital for each periphery preset (goal:
<= 2x) and aihwkit/digital.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from aihwkit.simulator.tiles import AnalogTile

from analog_ep.hardware.chip import AnalogChip, ChipConfig
from analog_ep.hardware.device import DeviceConfig
from analog_ep.hardware.periphery import PeripheryConfig
from analog_ep.model.transformer import EquilibriumTransformer, TransformerConfig
from analog_ep.relax.solvers import euler

PERIPHERIES = {
    # ReRAM-style crossbar: 8-bit converters, read noise, static mismatch, 6-bit conductances.
    "rram": PeripheryConfig(dac_bits=8, adc_bits=8, read_noise=0.02, mismatch=0.02, weight_bits=6),
    # Photonic MVM: multiplicative noise on every product, 8-bit converters.
    "optical": PeripheryConfig(dac_bits=8, adc_bits=8, optical_noise=0.02),
    # Every non-ideality at once (both noise draws).
    "everything": PeripheryConfig(dac_bits=8, adc_bits=8, read_noise=0.02, optical_noise=0.02, mismatch=0.02,
                                  weight_bits=6),
}


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class AihwkitProducts:
    """Stand-in chip whose every product is aihwkit's own AnalogTile.forward (one tile per matrix)."""

    def __init__(self, model: EquilibriumTransformer):
        self.tiles = {}
        for name, w in model.weight_matrices():
            rpu = DeviceConfig().rpu_config(0)
            rpu.forward.is_perfect = False  # aihwkit's default periphery: 7/9-bit converters, read noise
            rpu.backward.is_perfect = False
            tile = AnalogTile(w.shape[1], w.shape[0], rpu)
            tile.set_weights(w.detach().t().contiguous())
            self.tiles[name] = tile

    def holds(self, name: str) -> bool:
        return name in self.tiles

    def matmul_shared(self, names, x):
        return [self.matmul(n, x) for n in names]

    def matmul(self, name, x, transpose=False):
        flat = x.reshape(-1, x.shape[-1])
        out = self.tiles[name].forward(flat) if not transpose else self.tiles[name].backward(flat)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="Euler steps per relaxation (force evaluations)")
    ap.add_argument("--repeats", type=int, default=5, help="alternating repeats per preset (median)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    # The research-size block (C=128, T=64, embeddings at 0.02), pinned: the package's defaults may move.
    model = EquilibriumTransformer(TransformerConfig(vocab_size=65, context=64, width=128, heads=4, mode="thick",
                                                     damping=1.0, ffn_mult=4, embed_scale=0.02, seed=0))
    idx = torch.randint(0, 65, (32, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x_in = model.drive(idx)

    def relax_once():
        euler(lambda z: model.force(z, x_in), x_in, 0.1, args.steps)

    report = {"steps": args.steps}
    digital_all = []
    for name, periphery in PERIPHERIES.items():
        chip = AnalogChip(model, ChipConfig(device=DeviceConfig(model="ConstantStep"), periphery=periphery,
                                            tile_rows=512, tile_cols=512, range_factor=2.0, seed=0))
        digital_t, analog_t = [], []
        for _ in range(args.repeats):  # alternate, so drifting machine load hits both alike
            model.hardware = None
            digital_t.append(timed(relax_once, 1))
            model.hardware = chip
            analog_t.append(timed(relax_once, 1))
        model.hardware = None
        digital_all += digital_t
        report[f"{name}_s"] = statistics.median(analog_t)
        report[f"{name}_ratio"] = report[f"{name}_s"] / statistics.median(digital_t)
    report["digital_s"] = statistics.median(digital_all)
    model.hardware = AihwkitProducts(model)
    steps_aihwkit = max(2, args.steps // 10)  # slow: time a tenth of the steps and scale
    t = timed(lambda: euler(lambda z: model.force(z, x_in), x_in, 0.1, steps_aihwkit), 1)
    model.hardware = None
    report["aihwkit_forward_s"] = t * args.steps / steps_aihwkit
    report["aihwkit_forward_ratio"] = report["aihwkit_forward_s"] / report["digital_s"]
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:>22}: {v:.3f}" if isinstance(v, float) else f"{k:>22}: {v}")
    return report


if __name__ == "__main__":
    main()
