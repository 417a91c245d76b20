"""torch.compile of the force against eager, on the research configuration (a lever of issue 11).

The research block (C=128, H=4, T=64, B=32, fp32) at its fresh initialisation after 20 Euler steps;
the force compiled with torch.compile (inductor, static shapes) and eager, 7 alternating rounds of
10 evaluations each. Prints one JSON object: compile time, the two medians per evaluation, their
ratio (`speedup`) and the compiled force's relative difference from eager.

    python bench/compile_force.py --threads 1 --json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from settled import SHAKESPEARE, research_corpus, research_model  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = research_corpus(str(SHAKESPEARE))
    model = research_model(corpus.vocab_size)
    x, _ = corpus.batch("train", 32, torch.Generator().manual_seed(0))
    with torch.no_grad():
        x_in = model.drive(x)
        z = model.initial_state(x_in)
        for _ in range(20):
            z = z + 0.1 * model.force(z, x_in)

    def eager(u):
        return model.force(u, x_in)

    t0 = time.perf_counter()
    compiled = torch.compile(eager, dynamic=False)
    with torch.no_grad():
        compiled(z)  # the compilation happens at the first call
        compile_s = time.perf_counter() - t0
        a, b = eager(z), compiled(z)
        times = {"eager": [], "compiled": []}
        for _ in range(7):  # alternating rounds: drifting load hits both alike
            for name, fn in (("eager", eager), ("compiled", compiled)):
                t = time.perf_counter()
                for _ in range(10):
                    fn(z)
                times[name].append((time.perf_counter() - t) / 10)
    eager_s, compiled_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    report = {"compile_s": compile_s, "eager_s": eager_s, "compiled_s": compiled_s, "speedup": eager_s / compiled_s,
              "relative_difference": float((a - b).norm() / a.norm()), "threads": torch.get_num_threads()}
    print(json.dumps(report) if args.json else json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
