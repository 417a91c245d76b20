"""Peak tensor memory of one EP step vs T1 and T2 on the research configuration, BPTT for contrast.

The research block (thick, C=128, H=4, T=64; batch `--batch`, default 8), fresh weights (memory
does not depend on how settled they are). Peak bytes of the tensor storages an `ep_gradient` call
allocates and holds at once (`analog_ep.diagnostics.memory.peak_bytes`: a lower bound on the
allocator's peak, blind to internal scratch space), for the research step (Euler T1, centred
frozen-AEP nudge of T2 steps) at T1 = 50..400 and T2 = 15..120, for our fast settings
(`bench/ep_step.py`: Anderson free phase, linear nudge) at their budgets x1 and x8, and BPTT through
T1 = 50 and 400 Euler steps. Prints one JSON object with the ratios (goal: EP within 1.1x from
T1=50 to 400).

    python bench/memory.py --json
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ep_step import FAST_EP, FAST_RELAX  # noqa: E402
from settled import SHAKESPEARE, research_configs, research_corpus, research_model  # noqa: E402

from analog_ep.diagnostics.memory import peak_bytes  # noqa: E402
from analog_ep.estimator.ep import ep_gradient  # noqa: E402
from analog_ep.estimator.exact import bptt_gradient  # noqa: E402


def mib(fn, *args) -> float:
    gc.collect()
    _, peak = peak_bytes(fn, *args)
    return peak / 2 ** 20


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8, help="batch size B (8: BPTT through 400 steps holds ~2 GB)")
    ap.add_argument("--data", default=str(SHAKESPEARE), help="text corpus (default: tiny Shakespeare)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    corpus = research_corpus(args.data)
    model = research_model(corpus.vocab_size)
    x, y = corpus.batch("train", args.batch, torch.Generator().manual_seed(0))
    relax_cfg, ep_cfg = research_configs()
    ep_t1 = {t1: mib(ep_gradient, model, x, y, replace(relax_cfg, steps=t1), ep_cfg) for t1 in (50, 100, 200, 400)}
    ep_t2 = {t2: mib(ep_gradient, model, x, y, relax_cfg, replace(ep_cfg, steps=t2)) for t2 in (15, 120)}
    # The fast settings with 8x the budgets and tolerances no solver reaches: every step is taken.
    fast = {k: mib(ep_gradient, model, x, y, replace(FAST_RELAX, steps=FAST_RELAX.steps * k, anderson_tol=1e-12),
                   replace(FAST_EP, steps=FAST_EP.steps * k, nudge_tol=1e-12)) for k in (1, 8)}
    bptt = {t1: mib(bptt_gradient, model, x, y, t1, relax_cfg.eps) for t1 in (50, 400)}
    report = {
        "batch": args.batch, "unit": "MiB",
        "ep_peak_by_t1": ep_t1, "ep_t1_ratio_400_50": ep_t1[400] / ep_t1[50],
        "ep_peak_by_t2": ep_t2, "ep_t2_ratio_120_15": ep_t2[120] / ep_t2[15],
        "fast_peak_by_budget_factor": fast, "fast_ratio_8x": fast[8] / fast[1],
        "bptt_peak_by_t1": bptt, "bptt_t1_ratio_400_50": bptt[400] / bptt[50],
        "bptt_over_ep_at_t1_400": bptt[400] / ep_t1[400],
    }
    report["goal_met"] = report["ep_t1_ratio_400_50"] <= 1.1 and report["ep_t2_ratio_120_15"] <= 1.1
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
