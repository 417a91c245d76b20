"""Command line: `analog-ep run`, `analog-ep diagnose`.

Any `AnalogEPError` (bad config, bad file, failed convergence) prints one line and exits with 2;
existing results are never overwritten.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

from analog_ep import __version__
import yaml

from analog_ep.config import RunConfig, dump_yaml, load_config, merge, parse_override
from analog_ep.data.text import CharCorpus
from analog_ep.errors import AnalogEPError, ConfigError
from analog_ep.model.transformer import EquilibriumTransformer


def _build(cfg: RunConfig) -> tuple[CharCorpus, EquilibriumTransformer]:
    corpus = CharCorpus.from_config(cfg.data)
    cfg.model.vocab_size = corpus.vocab_size
    return corpus, EquilibriumTransformer(cfg.model)


def _twins(cfg: RunConfig, model: EquilibriumTransformer) -> dict:
    from analog_ep.train.twin import DigitalTwin

    def twin(m, gradient):
        return DigitalTwin(m, cfg.relax, cfg.ep, cfg.optim, cfg.schedule, cfg.stabilizers, gradient=gradient,
                           ema=cfg.train.ema, seed=cfg.train.seed)

    twins = {"digital": twin(model, cfg.train.gradient)}
    if cfg.train.bptt_twin:  # same initial weights, its own optimizer state
        twins["bptt"] = twin(copy.deepcopy(model), "bptt")
    return twins


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact


def cmd_run(args) -> int:
    from tqdm import tqdm

    overrides = list(args.set or [])
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    cfg = load_config(args.chip, overrides)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", str(out), "is a file, not a directory", "choose a directory path for the run")
    if out.exists() and any(out.iterdir()):
        raise ConfigError("--out", str(out), "directory exists and is not empty",
                          "choose a new --out so earlier results are kept")
    corpus, model = _build(cfg)
    twins = _twins(cfg, model)
    val = corpus.fixed_batches("val", cfg.train.batch_size, cfg.train.eval_batches, seed=cfg.train.seed + 1)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    metrics = open(out / "metrics.jsonl", "w")
    last_val: dict[str, float] = {}
    t0 = time.perf_counter()
    bar = tqdm(range(1, cfg.train.steps + 1), desc="train", unit="step", disable=args.quiet)
    for step in bar:
        x, y = corpus.batch("train", cfg.train.batch_size, gen)
        row = {"step": step}
        for name, tw in twins.items():
            rec = tw.step(x, y, step)
            row[name] = {"loss": rec.loss, "residual": rec.residual, "force_evals": rec.force_evals,
                         "jacreg": rec.jacreg, "skipped": rec.skipped}
        if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
            for name, tw in twins.items():
                last_val[name] = tw.evaluate(val)
                row[name]["val_loss"] = last_val[name]
            _atomic_save({"config": dump_yaml(cfg), "step": step,
                          "twins": {n: tw.state_dict() for n, tw in twins.items()}}, out / "checkpoint.pt")
        row["wall_s"] = time.perf_counter() - t0
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
        bar.set_postfix({**{f"{n}": f"{row[n]['loss']:.3f}" for n in twins},
                         **{f"val_{n}": f"{v:.3f}" for n, v in last_val.items()}})
    metrics.close()
    summary = {"steps": cfg.train.steps, "wall_s": time.perf_counter() - t0,
               "val_loss": last_val, "unigram_entropy": corpus.unigram_entropy("val"), "out": str(out)}
    print(json.dumps(summary))
    return 0


def _load_checkpoint(path: str) -> dict:
    """A run checkpoint, or a one-line error saying why the file is not one."""
    if not Path(path).is_file():
        raise ConfigError("--checkpoint", path, "file not found", "point it at a run directory's checkpoint.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several unrelated types for a non-checkpoint file
        raise ConfigError("--checkpoint", path, f"not a torch checkpoint ({type(err).__name__})",
                          "point it at a run directory's checkpoint.pt") from None
    if not isinstance(state, dict) or "config" not in state or "digital" not in state.get("twins", {}):
        raise ConfigError("--checkpoint", path, "not an analog-ep run checkpoint (no config/twins)",
                          "point it at a run directory's checkpoint.pt")
    return state


def cmd_diagnose(args) -> int:
    from analog_ep.diagnostics.fingerprint import fingerprint

    cfg = load_config(args.chip, list(args.set or []))
    if args.checkpoint:
        state = _load_checkpoint(args.checkpoint)
        # The checkpoint carries its resolved config; --set still applies on top.
        cfg = merge(load_config(None, []), yaml.safe_load(state["config"]), args.checkpoint)
        for text in args.set or []:
            cfg = merge(cfg, parse_override(text), "--set")
        cfg = cfg.resolve()
    corpus, model = _build(cfg)
    if args.checkpoint:
        model.load_state_dict(state["twins"]["digital"]["model"])
    x, y = corpus.fixed_batches("val", args.batch, 1, seed=cfg.train.seed)[0]
    report = fingerprint(model, x, y, cfg.relax, cfg.ep)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"residual at T1    {report['residual']:.3e}")
    print(f"cos(EP, BPTT)     {report['cos_ep_bptt']:+.4f}")
    for group, c in report["cos_groups"].items():
        print(f"  {group:<15} {c:+.4f}")
    lead = ", ".join(f"{re:+.4f}{im:+.4f}j" for re, im in zip(report["eig_re"], report["eig_im"]))
    print(f"leading mu        {lead}")
    state_word = "UNSTABLE (Re mu > 0)" if report["eig_re"][0] > 0 else "stable"
    print(f"fixed point       {state_word}; numerical abscissa {report['abscissa']:+.4f}")
    print(f"force evals       {report['force_evals']}")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="analog-ep", description="Equilibrium Propagation on simulated "
                                 "analog hardware, beside an exact digital twin.")
    ap.add_argument("--version", action="version", version=f"analog-ep {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train the twins side by side and write a run directory")
    run.add_argument("chip", nargs="?", help="YAML config (default: the built-in default model)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. train.steps=100")
    run.add_argument("--steps", type=int, help="shorthand for --set train.steps=N")
    run.add_argument("--out", default="runs/default", help="run directory (must not exist or be empty)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    diag = sub.add_parser("diagnose", help="residual, cos(EP, BPTT) per group, leading eigenvalues")
    diag.add_argument("chip", nargs="?", help="YAML config (default: the built-in default model)")
    diag.add_argument("--checkpoint", help="a run directory's checkpoint.pt to diagnose")
    diag.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. relax.steps=200")
    diag.add_argument("--batch", type=int, default=4, help="validation sequences probed (default 4)")
    diag.add_argument("--json", action="store_true", help="one JSON object")
    diag.set_defaults(func=cmd_diagnose)
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except AnalogEPError as err:
        print(f"analog-ep: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"analog-ep: error: {err.filename}: file not found", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
