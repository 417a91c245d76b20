"""Where the time of a relaxation goes, and what fraction of this machine's fp32 matmul peak it reaches.

On the research block (thick, C=128, H=4, T=64, B=32, fresh weights): the machine's fp32 matmul
peak is measured first (the best of a few 1024^3 products, at the same thread count), then the
free phase (80 Euler steps) and our fast EP step (`bench/ep_step.py`: Anderson free phase, linear
nudge) run under `torch.profiler`. The FLOPs of one force evaluation are counted from the block's
matmuls (Q/K/V, scores, probabilities x values, W_o, the two FFN arrays); the relaxation's
achieved rate is those FLOPs x evaluations / wall time. Prints one JSON object: `peak_gflops`,
`relax_gflops`, `fraction_of_peak`, and per profiled phase the share of self CPU time of the
leading ops (the rest summed as 'other').

    python bench/profile_relax.py --json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ep_step import FAST_EP, FAST_RELAX  # noqa: E402
from settled import SHAKESPEARE, research_configs, research_corpus, research_model  # noqa: E402

from analog_ep.estimator.ep import ep_gradient  # noqa: E402
from analog_ep.phase import Term  # noqa: E402
from analog_ep.relax.solvers import relax  # noqa: E402


def matmul_peak(n: int = 1024, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n x n product."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def force_flops(B: int, T: int, C: int, H: int, ffn_mult: int) -> int:
    """Multiply-add FLOPs (2 per MAC) of one thick-block force evaluation on B sequences."""
    tokens, dh = B * T, C // H
    qkv, out = 2 * tokens * C * 3 * C, 2 * tokens * C * C
    attention = 2 * (2 * B * H * T * T * dh)  # scores and probabilities x values (full square)
    ffn = 2 * (2 * tokens * C * ffn_mult * C)
    return qkv + out + attention + ffn


def shares(prof, top: int = 8) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        totals[ev.key] += ev.self_cpu_time_total
    whole = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    out = {k: round(v / whole, 4) for k, v in ranked[:top]}
    out["other"] = round(1 - sum(out.values()), 4)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHAKESPEARE), help="text corpus (default: tiny Shakespeare)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = research_corpus(args.data)
    model = research_model(corpus.vocab_size)
    cfg = model.config
    x, y = corpus.batch("train", 32, torch.Generator().manual_seed(0))
    relax_cfg, _ = research_configs()
    peak = matmul_peak()
    with torch.no_grad():
        x_in = model.drive(x)
        term = Term(lambda z: model.force(z, x_in), model.leak)
        relax(term, model.initial_state(x_in), relax_cfg)  # warm-up
        t0 = time.perf_counter()
        free = relax(term, model.initial_state(x_in), relax_cfg)
        wall = time.perf_counter() - t0
        with profile(activities=[ProfilerActivity.CPU]) as prof_relax:
            relax(term, model.initial_state(x_in), relax_cfg)
    with profile(activities=[ProfilerActivity.CPU]) as prof_fast:
        ep_gradient(model, x, y, FAST_RELAX, FAST_EP)
    flops = force_flops(x.shape[0], x.shape[1], cfg.width, cfg.heads, cfg.ffn_mult) * free.force_evals
    report = {"threads": torch.get_num_threads(), "peak_gflops": peak, "force_gflop": flops / free.force_evals / 1e9,
              "relax_s": wall, "relax_evals": free.force_evals, "relax_gflops": flops / wall / 1e9,
              "fraction_of_peak": flops / wall / 1e9 / peak,
              "relax_time_shares": shares(prof_relax), "fast_step_time_shares": shares(prof_fast)}
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
