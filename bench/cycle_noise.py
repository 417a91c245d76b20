"""Cost of seeded cycle-to-cycle noise: one pulse round with aihwkit's own noise vs the seeded route.

A round sends one pulse to every device of a tile (dense signs: Lion's sign update), as
`CrossbarArray.pulse` does. 'aihwkit' draws the noise inside aihwkit's C++ update (unseeded);
'seeded' builds the tile noiseless and sets each round's per-device factors on its hidden step
sizes first (`analog_ep.hardware.cycle.CycleNoise.before_round`: read the hidden parameters,
draw, compute, write them back). Both measured side by side, alternating, median of --repeats.
Prints one JSON object: per device and tile shape, ms per round and the ratio seeded/aihwkit.

    python bench/cycle_noise.py [--repeats 7] [--shapes 64x64,64x256,256x256,512x512]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from aihwkit.simulator.tiles import AnalogTile

from analog_ep.hardware.cycle import CycleNoise
from analog_ep.hardware.device import DeviceConfig

DEVICES = {"ConstantStep": False, "ReRamSB": False, "PCM": True}  # scale law; state-dependent laws (pair too)


def round_ms(config: DeviceConfig, differential: bool, rows: int, cols: int, seeded: bool, repeats: int) -> list[float]:
    tile = AnalogTile(cols, rows, config.rpu_config(99, seeded_noise=seeded))
    tile.set_learning_rate(1e6)
    tile.set_weights(torch.zeros(cols, rows))
    noise = CycleNoise(config.device(0), differential, torch.Generator().manual_seed(0)) if seeded else None
    nominal = tile.tile.get_hidden_parameters().clone()
    signs = torch.sign(torch.randn(rows, cols, generator=torch.Generator().manual_seed(1)))
    eye = torch.eye(rows)
    times = []
    for k in range(repeats):
        t0 = time.perf_counter()
        if noise is not None:
            noise.before_round(tile, nominal)
        tile.update(eye, -(signs * (-1) ** k))
        times.append(1e3 * (time.perf_counter() - t0))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--shapes", default="64x64,64x256,256x256,512x512")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report = {"repeats": args.repeats, "threads": args.threads, "rounds": {}}
    for model, differential in DEVICES.items():
        config = DeviceConfig(model=model, differential=differential)
        for shape in args.shapes.split(","):
            rows, cols = (int(v) for v in shape.split("x"))
            native, seeded = [], []
            for _ in range(2):  # alternate the two so load drifts hit both
                native += round_ms(config, differential, rows, cols, False, args.repeats)
                seeded += round_ms(config, differential, rows, cols, True, args.repeats)
            a, s = statistics.median(native), statistics.median(seeded)
            report["rounds"][f"{model} {shape}"] = {"aihwkit_ms": round(a, 3), "seeded_ms": round(s, 3),
                                                    "ratio": round(s / a, 3)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
