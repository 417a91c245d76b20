"""One training step of the analog twin vs the digital twin, for every shipped chip.

For each chip (`chips/*.yaml`, or `--chips`), both twins are built exactly as `analog-ep run`
builds them (`analog_ep.run.loop.make_twins`): the analog twin with its chip, circuit (settles,
sampling, reads and pulse writes) and estimator, the digital twin with ideal weights. One warm-up
step each, then `--repeats` steps alternating analog, digital, analog, ... on the same batches, so
drifting machine load hits both alike. Prints one JSON object: per chip the median seconds per
step of each twin and `analog_over_digital`, their ratio (goal on rram_512: <= 1.5).

    python bench/twin_step.py --json
    python bench/twin_step.py --chips rram_512 --repeats 5 --threads 1 --json

With `--baseline KEY=VALUE ...` each chip's analog twin is also built at those overrides (e.g. the
settings a change replaced) and stepped in the same alternation; the report adds its seconds per
step, its `analog_over_digital` and `job_step_ratio`, (analog + digital) / (baseline analog +
digital): what the change does to a job that trains both twins, free of the load drift that
separates two runs one after the other.

    python bench/twin_step.py --chips rram_512 --repeats 5 --threads 1 --json \
        --baseline circuit.dynamics.dt=1e-9 circuit.settle.nudge_time=0
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from analog_ep.config import library, load_config
from analog_ep.run.loop import build, make_twins


def measure(chip: str, repeats: int, baseline: list[str] | None = None) -> dict:
    cfg = load_config(chip)
    corpus, model = build(cfg)
    twins = make_twins(cfg, model)
    check = sorted(twins) == ["analog", "digital"]
    if not check:
        raise SystemExit(f"{chip}: train.twins is {sorted(twins)}; this benchmark compares analog with digital")
    if baseline:  # the same model, the analog twin at the baseline's settings
        twins["baseline_analog"] = make_twins(load_config(chip, baseline), model)["analog"]
    gen = torch.Generator().manual_seed(0)
    batches = [corpus.batch("train", cfg.train.batch_size, gen) for _ in range(repeats + 1)]
    times = {name: [] for name in twins}
    for step, (x, y) in enumerate(batches):
        for name in times:
            t0 = time.perf_counter()
            twins[name].step(x, y, step)
            if step:  # step 0 warms caches and allocators
                times[name].append(time.perf_counter() - t0)
    analog, digital = statistics.median(times["analog"]), statistics.median(times["digital"])
    out = {"analog_s": analog, "digital_s": digital, "analog_over_digital": analog / digital,
           "circuit": cfg.circuit.dynamics.kind if hasattr(cfg.circuit.dynamics, "kind") else None}
    if baseline:
        before = statistics.median(times["baseline_analog"])
        out.update(baseline=baseline, baseline_analog_s=before, baseline_analog_over_digital=before / digital,
                   job_step_ratio=(analog + digital) / (before + digital))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chips", nargs="*", help="chip names or files (default: every shipped chip)")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per twin (median)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--baseline", nargs="+", metavar="KEY=VALUE",
                    help="also time the analog twin at these overrides, alternating (job_step_ratio)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    chips = args.chips or sorted(library("chip"))
    report = {"threads": torch.get_num_threads(), "repeats": args.repeats, "chips": {}}
    for chip in chips:
        print(f"{chip} ...", file=sys.stderr)
        report["chips"][chip] = measure(chip, args.repeats, args.baseline)
    ratio = report["chips"].get("rram_512", {}).get("analog_over_digital")
    report["analog_over_digital"] = ratio
    report["goal_met"] = None if ratio is None else ratio <= 1.5
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
