"""One EP training step on the research trainer's configuration, ours vs the reference trainer.

Configuration: thick block, C=128, H=4, T=64, B=32, T1=80, T2=15, eps=0.1, beta=0.02, centred EP
with the frozen AEP correction clipped as in the research trainer, Euler free phase of T1 steps.

    python bench/ep_step.py                                   # our step alone
    python bench/ep_step.py --reference ../shared/reference/seed_lt_ep_train.py --json

With --reference, the research trainer is imported, identical weights are copied into its EQBlock,
and both `ep_step`s run on the same batch, alternating, `--repeats` times each; the medians are
compared (fp32, torch's default threads). Prints ours_s, reference_s, speed_ratio (reference_s /
ours_s); cos_to_reference, the cosine between the two full gradient vectors with both
implementations in float64 (the algorithm's fidelity); cos_to_reference_fp32 and fp32_noise_floor
(the reference against itself after 1e-7 relative weight jitter: in fp32 the nudge displacement
beta*a is ~1e-5 of |z|, so rounding alone scatters the estimate by about a percent); cos_ep_bptt
(our EP vs BPTT through the T1 unroll, fp32) and force_evals (force evaluations of B samples).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from analog_ep.data.text import CharCorpus, TextDataConfig
from analog_ep.diagnostics.fingerprint import cosine
from analog_ep.estimator.ep import EPConfig, ep_gradient
from analog_ep.estimator.exact import bptt_gradient
from analog_ep.model.transformer import EquilibriumTransformer, TransformerConfig
from analog_ep.relax.solvers import RelaxConfig

# Our parameter name -> the research trainer's attribute name.
REFERENCE_NAMES = {
    "tok": "tok", "pos": "pos", "W_q": "WQ", "W_k": "WK", "W_v": "WV", "W_o": "WO",
    "ln1_w": "ln1g", "ln1_b": "ln1b", "ln2_w": "ln2g", "ln2_b": "ln2b",
    "W_fc": "fc", "b_fc": "fcb", "W_proj": "pj", "b_proj": "pjb", "W_head": "Wh",
}
SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


def flat(grads: dict[str, torch.Tensor], names) -> torch.Tensor:
    return torch.cat([grads[n].reshape(-1) for n in names])


def load_reference(path: str):
    spec = importlib.util.spec_from_file_location("research_trainer", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(Path(path).parent))
    spec.loader.exec_module(module)
    return module


def reference_twin(ref, model: EquilibriumTransformer):
    """The research trainer's EQBlock holding `model`'s weights, and its EP step as name -> grad."""
    cfg = model.config
    torch.manual_seed(0)
    blk = ref.EQBlock(cfg.width, cfg.heads, cfg.memory, cfg.context, c=cfg.damping, attn_mode="thick")
    with torch.no_grad():
        for ours, theirs in REFERENCE_NAMES.items():
            getattr(blk, theirs).copy_(getattr(model, ours))
    by_id = {id(getattr(blk, theirs)): ours for ours, theirs in REFERENCE_NAMES.items()}

    def step(x, y):
        grads, _ = ref.ep_step(blk, x, y, 80, 15, 0.1, 0.02)
        return {by_id[k]: g for k, g in grads.items() if k in by_id and g is not None}

    return blk, step


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", help="path of the research trainer (seed_lt_ep_train.py)")
    ap.add_argument("--data", default=str(SHAKESPEARE), help="text corpus (default: tiny Shakespeare)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per implementation (median)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    # The research configuration, every value it relies on pinned (the package's defaults are the
    # small CPU block and may move): the research trainer's embeddings are initialised at 0.02.
    corpus = CharCorpus.from_config(TextDataConfig(path=args.data, context=64, val_fraction=0.1))
    model = EquilibriumTransformer(TransformerConfig(vocab_size=corpus.vocab_size, context=64, width=128,
                                                     heads=4, mode="thick", damping=1.0, ffn_mult=4, qk_norm=False,
                                                     embed_scale=0.02, out_scale=1.0, dtype="float32", seed=0))
    x, y = corpus.batch("train", 32, torch.Generator().manual_seed(0))
    relax_cfg = RelaxConfig(method="euler", eps=0.1, steps=80, refine_to=0)
    ep_cfg = EPConfig(beta=0.02, steps=15, eps=0.1, centered=True, aep="frozen", aep_clip=1.0, nudge_clip=2.0,
                      holomorphic=0, select_cap=0, restarts=1)

    ours_s, result = timed(lambda: ep_gradient(model, x, y, relax_cfg, ep_cfg), args.repeats)
    names = [n for n, _ in model.named_parameters()]
    bptt, _ = bptt_gradient(model, x, y, relax_cfg.steps, relax_cfg.eps)
    report = {"ours_s": ours_s, "reference_s": None, "speed_ratio": None, "cos_to_reference": None,
              "cos_to_reference_fp32": None, "fp32_noise_floor": None,
              "cos_ep_bptt": cosine(flat(result.grads, names), flat(bptt, names)),
              "force_evals": result.force_evals, "residual": result.free.residual}

    if args.reference:
        ref = load_reference(args.reference)
        if ref.vocab != corpus.vocab_size:
            raise SystemExit(f"reference vocabulary {ref.vocab} != corpus vocabulary {corpus.vocab_size}; "
                             "use the corpus the reference's meta.pkl was made from")
        blk, reference_step = reference_twin(ref, model)
        # Alternate the two implementations so drifting machine load hits both alike.
        ours_t, ref_t = [], []
        for _ in range(args.repeats):
            t, result = timed(lambda: ep_gradient(model, x, y, relax_cfg, ep_cfg), 1)
            ours_t.append(t)
            t, ref_grads = timed(lambda: reference_step(x, y), 1)
            ref_t.append(t)
        report["ours_s"], report["reference_s"] = statistics.median(ours_t), statistics.median(ref_t)
        report["speed_ratio"] = report["reference_s"] / report["ours_s"]
        report["cos_to_reference_fp32"] = cosine(flat(result.grads, names), flat(ref_grads, names))
        # fp32 rounding alone moves the estimate: the nudge displacement beta*a is ~1e-5 of |z|, so
        # the reference against itself with 1e-7 relative weight jitter shows the same scatter.
        with torch.no_grad():
            for p in (getattr(blk, t) for t in REFERENCE_NAMES.values()):
                p.mul_(1 + 1e-7 * torch.randn_like(p))
        report["fp32_noise_floor"] = cosine(flat(reference_step(x, y), names), flat(ref_grads, names))
        # Fidelity of the algorithm: both implementations in float64 on the same weights and batch.
        torch.set_default_dtype(torch.float64)
        try:
            model64 = EquilibriumTransformer(model.config).double()
            model64.load_state_dict(model.state_dict())
            _, step64 = reference_twin(ref, model64)
            ours64 = ep_gradient(model64, x, y, relax_cfg, ep_cfg).grads
            report["cos_to_reference"] = cosine(flat(ours64, names), flat(step64(x, y), names))
        finally:
            torch.set_default_dtype(torch.float32)
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:>17}: {v}")
    return report


if __name__ == "__main__":
    main()
