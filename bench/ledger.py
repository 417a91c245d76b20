"""The pulse ledger's cost per round: recording and iterating 2,000 rounds of 128 x 128 signs at 1%
pulse density (the run of tests/test_ledger.py, which checks memory and compression).

    python bench/ledger.py [--rounds 2000] [--density 0.01]

Prints one JSON object: record_us and iterate_us per round, and raw/stored bytes.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from analog_ep.hardware.ledger import PulseLedger

ARRAYS = ("W_q", "W_k", "W_v", "W_o")


def signs(seed: int, rows: int, cols: int, density: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pulse = rng.random((rows, cols)) < density
    return np.where(pulse, np.where(rng.random((rows, cols)) < 0.5, 1, -1), 0).astype(np.int8)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--density", type=float, default=0.01)
    args = ap.parse_args(argv)
    rounds = [signs(i, 128, 128, args.density) for i in range(args.rounds)]  # drawn outside the timing
    ledger = PulseLedger()
    t0 = time.perf_counter()
    for i, s in enumerate(rounds):
        ledger.record(i // 4, ARRAYS[i % 4], (i % 3, 0), s)
    t_record = time.perf_counter() - t0
    t0 = time.perf_counter()
    count = sum(1 for _ in ledger.rounds())
    t_iter = time.perf_counter() - t0
    report = {"rounds": count, "record_us": t_record / count * 1e6, "iterate_us": t_iter / count * 1e6,
              "raw_bytes": ledger.raw_bytes, "stored_bytes": ledger.nbytes,
              "compression": ledger.raw_bytes / ledger.nbytes}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
