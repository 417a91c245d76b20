"""Does a sweep parallelise? The same 4 points, three ways, side by side in one run.

The 4 points are rram_512 (`chips/rram_512.yaml`, `--steps` each) over
`chip.periphery.adc_bits=6,8` x `chip.periphery.read_noise=0.005,0.02`, run by `analog-ep sweep`'s
own machinery (`Sweep` on a `LocalBackend`, points in fresh processes):

* serial, default threads: 1 worker with torch's default thread count (all cores);
* parallel: 2 workers with 1 thread each (the sweep's default on a 2-core machine);
* serial, one thread: 1 worker with 1 thread.

    python bench/sweep.py [--steps 40] [--repeats 1]

Prints one JSON object: wall times (median over repeats, the three ways alternating) and
`ratio_vs_serial_default` = parallel / serial-default (goal: <= 0.85) and `ratio_vs_serial_1thread`
= parallel / serial-one-thread (ideal: 0.5, two cores).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from analog_ep.sweep import LocalBackend, Sweep, SweepDefinition
from analog_ep.sweep.backends import usable_cores
from analog_ep.sweep.worker import run_isolated

ROOT = Path(__file__).resolve().parents[1]
GRID = ["chip.periphery.adc_bits=6,8", "chip.periphery.read_noise=0.005,0.02"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="training steps per point (default 40)")
    ap.add_argument("--repeats", type=int, default=1, help="repeats of the three ways (median; default 1)")
    args = ap.parse_args()

    definition = SweepDefinition.build(str(ROOT / "chips" / "rram_512.yaml"), [f"train.steps={args.steps}"], GRID)
    cores, default_threads = usable_cores(), torch.get_num_threads()
    ways = {"serial_default_threads": (1, default_threads), "parallel_2_workers_1_thread": (2, 1),
            "serial_1_thread": (1, 1)}
    times: dict[str, list[float]] = {name: [] for name in ways}
    with tempfile.TemporaryDirectory() as tmp:
        # Start the fork server (it imports torch and aihwkit once) before anything is timed.
        warm = Path(tmp) / "warm.log"
        run_isolated({"argv": ["list", "chips"], "log": str(warm), "threads": 1, "cwd": tmp})
        for r in range(args.repeats):
            for name, (workers, threads) in ways.items():
                out = Path(tmp) / f"{name}-{r}"
                t0 = time.perf_counter()
                report = Sweep(definition, out, LocalBackend(workers, threads), progress=False).run()
                times[name].append(time.perf_counter() - t0)
                if report.exit_code != 0:
                    sys.exit(f"bench/sweep.py: {name}: points ended {report.statuses}; see {out}/logs")
                print(f"{name}: {times[name][-1]:.1f} s", file=sys.stderr)
    wall = {name: statistics.median(t) for name, t in times.items()}
    parallel = wall["parallel_2_workers_1_thread"]
    ratio = parallel / wall["serial_default_threads"]
    print(json.dumps({
        "points": len(definition.points), "steps": args.steps, "cores": cores,
        "default_threads": default_threads, "repeats": args.repeats,
        "wall_s": {name: round(v, 2) for name, v in wall.items()},
        "ratio_vs_serial_default": round(ratio, 3), "goal": "ratio_vs_serial_default <= 0.85",
        "met": ratio <= 0.85, "ratio_vs_serial_1thread": round(parallel / wall["serial_1_thread"], 3),
        "ideal_vs_serial_1thread": round(1 / min(2, cores), 3),
    }))


if __name__ == "__main__":
    main()
