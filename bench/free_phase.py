"""The free phase on a trained operator: force evaluations to residual 1e-4, Euler against Anderson.

The operator is a run's digital twin (`--run DIR`, a run directory or its state.pt). Without
`--run` it is the default job's: `analog-ep run rram_512 --set train.twins=[digital]` (200 steps,
~1.5 min at two threads), trained once into the bench cache (`$ANALOG_EP_CACHE`, default
~/.cache/analog-ep/bench) under a key of the resolved chip configuration and torch's version, and
reused (the report says which).

For each solver and each of `--batches` training batches, the free phase runs from the model's
initial state; after every step the residual ||eps F(z)|| / ||z|| is checked, both over the whole
batch (`global`, the number `relax` and the trainers report) and for every sample alone (`all`:
the worst sample must reach it too). A free phase that stops there has spent k steps and the
check's evaluation, k + 1 (as `bench/ep_step.py --levers` counts Euler; an Anderson step evaluates
F at its starting point, so the check is the next step's evaluation). Prints one JSON object: per
solver the median over batches of both counts (null: the median batch did not get there within
`--budget`) and the per-batch counts; `best_anderson_global` (and `_solver`) is the best median of
the Anderson variants that get there on every batch, and `goal_met` compares it with the goal, 25.

    python bench/free_phase.py --json
    python bench/free_phase.py --run runs/rram_512 --batches 5 --json

`--research` measures the research configuration's 300-step settled operator instead (C=128, T=64,
B=32 on the Shakespeare text, near its Hopf instability; `bench/settled.py` trains and caches it),
with the leak's exact step h = 0.5 and 0.7, damping 1 and 0.7, and restart thresholds 1 and 2 too
(`--grid`; 3 batches by default there).

    python bench/free_phase.py --research --grid --batches 3 --json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from analog_ep.config import RunConfig, load_config, merge, to_dict
from analog_ep.diagnostics.diagnose import load_checkpoint
from analog_ep.phase import Term
from analog_ep.relax.solvers import Anderson, Euler
from analog_ep.run.loop import build

sys.path.insert(0, str(Path(__file__).resolve().parent))
from settled import SHAKESPEARE, cache_dir, research_corpus, settled_model  # noqa: E402  (the bench cache)

#: The default job's digital twin (the operator the shipped default chip trains).
DEFAULT_JOB = ("rram_512", ["train.twins=[digital]"])

#: Solvers measured: Euler at the model's eps, and safeguarded Anderson (restart on residual growth)
#: of the Euler step and of the leak's exact step h = 1/leak, at memories 3, 5 and 10.
SOLVERS = ["euler"] + [f"anderson_m{m}_{h}" for m in (3, 5, 10) for h in ("euler_step", "leak_step")]


def default_operator(log) -> Path:
    """The default job's trained digital twin from the cache, training it first if absent."""
    chip, sets = DEFAULT_JOB
    cfg = load_config(chip, list(sets))
    text = yaml.safe_dump(to_dict(cfg), sort_keys=True)
    key = hashlib.sha256((text + torch.__version__).encode()).hexdigest()[:16]
    path = cache_dir() / f"trained_{chip}_digital_{key}"
    if (path / "state.pt").is_file():
        log(f"trained operator from the cache {path}")
        return path
    from analog_ep.cli.main import main as cli

    log(f"training the operator: analog-ep run {chip} {' '.join('--set ' + s for s in sets)} (once; cached at {path})")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".training-") as tmp:
        rc = cli(["run", chip, *[a for s in sets for a in ("--set", s)], "--out", str(Path(tmp) / "run"), "--quiet"])
        if rc != 0:
            raise SystemExit(f"training the operator failed (exit {rc})")
        shutil.move(str(Path(tmp) / "run"), str(path))  # the whole run appears at once
    return path


#: --grid: Anderson variants (memory, step h, damping, restart threshold) measured on top of `SOLVERS`.
GRID = [f"anderson_m{m}_h{h}_d{d}_r{r}" for h in (0.5, 0.7) for m in (3, 5, 10) for d in (1.0, 0.7) for r in (1.0, 2.0)]


def solver_for(name: str, eps: float, leak: float):
    """A fresh solver for a name of `SOLVERS` or `GRID` (Anderson: no tolerance of its own, the bench
    checks)."""
    if name == "euler":
        return Euler(eps)
    parts = name.split("_")  # anderson_m<memory>_<euler_step | leak_step | h<h>_d<damping>_r<restart>>
    memory = int(parts[1][1:])
    if parts[2].startswith("h"):
        return Anderson(eps, memory, 1e-12, float(parts[3][1:]), float(parts[2][1:]), float(parts[4][1:]))
    h = eps if name.endswith("euler_step") else 1.0 / leak
    return Anderson(eps, memory, 1e-12, 1.0, h, 1.0)


def evaluations_to(model, batches, name: str, eps: float, leak: float, target: float, budget: int) -> dict:
    counts = {"global": [], "all": []}
    for x, _ in batches:
        with torch.no_grad():
            x_in = model.drive(x)
            last = [None, None]  # the iterate last evaluated and its force: the check's F(z) is the step's

            def force(z, x_in=x_in, last=last):
                if last[0] is not z:
                    last[0], last[1] = z, model.force(z, x_in)
                return last[1]
            term = Term(force, model.leak)
            solver = solver_for(name, eps, leak)
            state = solver.init(term, model.initial_state(x_in))
            reached = {"global": math.inf, "all": math.inf}
            for k in range(budget):
                z, f = state.z, term(state.z)
                B = z.shape[0]
                each = eps * f.reshape(B, -1).norm(dim=1) / z.reshape(B, -1).norm(dim=1)  # (B,)
                if reached["global"] == math.inf and float(eps * f.norm() / z.norm()) <= target:
                    reached["global"] = k + 1
                if float(each.max()) <= target:
                    reached["all"] = k + 1
                    break
                state = solver.step(term, state)
        for kind in counts:
            counts[kind].append(reached[kind])
    out = {}
    for kind, values in counts.items():
        median = statistics.median(values)
        out[kind] = median if math.isfinite(median) else None
        out[f"{kind}_per_batch"] = [v if math.isfinite(v) else None for v in values]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a run directory (or its state.pt) whose digital twin is the operator "
                    "(default: the default job's, trained once and cached)")
    ap.add_argument("--research", action="store_true", help="the research configuration's settled operator "
                    "(bench/settled.py) instead of a run's")
    ap.add_argument("--grid", action="store_true", help="also the Anderson variants of GRID")
    ap.add_argument("--batches", type=int, help="training batches, the median is over them (default 5; 3 with "
                    "--research)")
    ap.add_argument("--target", type=float, default=1e-4, help="residual ||eps F|| / ||z|| to reach")
    ap.add_argument("--budget", type=int, default=400, help="evaluations at most per free phase")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda m: print(m, file=sys.stderr))
    if args.research:
        if args.run:
            raise SystemExit("--research and --run name two operators: give one")
        corpus = research_corpus(str(SHAKESPEARE))
        model, cache = settled_model(corpus, str(SHAKESPEARE), log=log)
        batches = [corpus.batch("train", 32, torch.Generator().manual_seed(s)) for s in range(args.batches or 3)]
        eps, leak = 0.1, float(model.leak)
        report = {"operator": cache["path"], "step": cache["steps"], "batch_size": 32}
    else:
        run = Path(args.run) if args.run else default_operator(log)
        state = load_checkpoint(str(run))
        if "digital" not in state["twins"]:
            raise SystemExit(f"{run}: the run has no digital twin (twins: {', '.join(state['twins'])})")
        cfg = merge(RunConfig(), yaml.safe_load(state["config"]), str(run)).resolve()
        corpus, model = build(cfg)
        model.load_state_dict(state["twins"]["digital"]["model"])
        eps, leak = cfg.relax.eps, float(model.leak)
        batches = [corpus.batch("train", cfg.train.batch_size, torch.Generator().manual_seed(s))
                   for s in range(args.batches or 5)]
        report = {"operator": str(run), "step": state["step"], "batch_size": cfg.train.batch_size}
    report.update({"target": args.target, "eps": eps, "leak": leak, "batches": len(batches), "budget": args.budget,
                   "threads": torch.get_num_threads(), "solvers": {}})
    for name in SOLVERS + (GRID if args.grid else []):
        report["solvers"][name] = evaluations_to(model, batches, name, eps, leak, args.target, args.budget)
        log(f"{name}: {report['solvers'][name]['global']} (global), {report['solvers'][name]['all']} (every sample)")
    # the best Anderson variant among those that reach the target on every batch: a median over batches
    # would otherwise credit a variant that never converges on some of them
    steady = {k: v["global"] for k, v in report["solvers"].items()
              if k != "euler" and None not in v["global_per_batch"]}
    best_name = min(steady, key=steady.get, default=None)
    best = steady.get(best_name)
    report["best_anderson_global"], report["best_anderson_solver"] = best, best_name
    report["goal_met"] = best is not None and best <= 25
    print(json.dumps(report) if args.json else json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
