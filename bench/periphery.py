"""Cost of one read through the vectorised periphery against a plain matmul of the same size.

(2048 x 128) @ (128 x 384) float32, as one tile grid of 512 or of 128: converters alone, plus read
noise, and everything on (converters, read and optical noise, 6-bit levels, 5% mismatch), best of
`--repeats` calls each; and one Gaussian draw of the output's size, the cost that noise adds.

    python bench/periphery.py [--repeats 15] [--threads 1]

Prints one JSON object: plain_ms, and per "<tiles>/<preset>" the time (ms) and its ratio to plain.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from analog_ep.hardware.periphery import (PeripheryConfig, analog_matmul, effective_conductances, mismatch_gains,
                                          to_tiles)

PRESETS = {"converters": PeripheryConfig(dac_bits=7, adc_bits=9),
           "read_noise": PeripheryConfig(dac_bits=7, adc_bits=9, read_noise=0.06),
           "everything": PeripheryConfig(dac_bits=7, adc_bits=9, read_noise=0.06, optical_noise=0.05)}


def best_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(14)
    x = torch.randn(2048, 128, generator=g)
    W = torch.randn(128, 384, generator=g) * 0.1
    plain = best_time(lambda: x @ W, args.repeats)
    report = {"threads": args.threads, "plain_ms": plain * 1e3}
    for tiles in (512, 128):
        G = effective_conductances(to_tiles(W, tiles, tiles), PeripheryConfig(weight_bits=6),
                                   mismatch_gains(to_tiles(W, tiles, tiles).shape, 0.05, generator=g))
        for name, cfg in PRESETS.items():
            t = best_time(lambda: analog_matmul(x, G, 1.0, cfg, 384, g), args.repeats)
            report[f"{tiles}/{name}"] = {"ms": t * 1e3, "ratio": t / plain}
    noise = best_time(lambda: torch.empty(2048, 384).normal_(generator=g), args.repeats)
    report["gaussian_draw"] = {"ms": noise * 1e3, "ratio": noise / plain}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
