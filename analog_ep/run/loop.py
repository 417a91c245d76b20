"""`analog-ep run`: the twins side by side, from the same initial weights, on the same batches.

Every step each twin takes the same training batch; every `eval_every` steps (and at the end)
each is evaluated on the same fixed validation batches; then run.h5, curves.png and the
resumable state are rewritten atomically.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import yaml

from analog_ep.config import RunConfig, dump_yaml, merge
from analog_ep.data.text import CharCorpus
from analog_ep.diagnostics.fingerprint import cosine
from analog_ep.errors import ConfigError
from analog_ep.estimator.ep import ep_gradient
from analog_ep.model.transformer import EquilibriumTransformer
from analog_ep.run.plot import plot_curves
from analog_ep.run.store import History, save_state, write_h5
from analog_ep.train.twin import DigitalTwin

STATE = "state.pt"


def build(cfg: RunConfig) -> tuple[CharCorpus, EquilibriumTransformer]:
    corpus = CharCorpus.from_config(cfg.data)
    cfg.model.vocab_size = corpus.vocab_size
    return corpus, EquilibriumTransformer(cfg.model)


def make_twins(cfg: RunConfig, model: EquilibriumTransformer) -> dict:
    """Each twin owns a copy of the same initial weights."""
    import copy

    twins = {}
    common = (cfg.relax, cfg.ep, cfg.optim, cfg.schedule, cfg.stabilizers)
    for name in cfg.train.twins:
        if name == "analog":
            from analog_ep.train.analog import AnalogTwin

            circuit = cfg.circuit
            twins[name] = AnalogTwin(model, cfg.chip, *common, gradient="ep", seed=cfg.train.seed,
                                     circuit=circuit.circuit, settle=circuit.settle, energy=circuit.energy)
        else:
            gradient = "bptt" if name == "bptt" else cfg.train.gradient
            twins[name] = DigitalTwin(copy.deepcopy(model), *common, gradient=gradient, ema=cfg.train.ema,
                                      seed=cfg.train.seed)
    return twins


def config_from_state(path: Path) -> RunConfig:
    """The resolved config a run directory was started with."""
    text = (path / "config.yaml").read_text(encoding="utf-8")
    return merge(RunConfig(), yaml.safe_load(text), str(path / "config.yaml")).resolve()


def update_cosine(analog, probe: EquilibriumTransformer, before: dict, x, y, cfg: RunConfig) -> float:
    """cos(-(realised change of the analog weights), digital EP gradient at the pre-step weights)."""
    probe.load_state_dict(before)
    grads = ep_gradient(probe, x, y, cfg.relax, cfg.ep).grads
    after = dict(analog.model.named_parameters())
    change = torch.cat([(after[n].detach() - before[n]).reshape(-1) for n in grads])
    return cosine(-change, torch.cat([grads[n].reshape(-1) for n in grads]))


def run_job(cfg: RunConfig, out: Path, resume: bool = False, progress: bool = True, stop_after: int | None = None
            ) -> dict:
    """Train the configured twins; write and refresh the run directory. Returns a summary.

    `stop_after` ends the job cleanly after that step (evaluated and saved), to be resumed later.
    """
    from tqdm import tqdm

    corpus, model = build(cfg)
    twins = make_twins(cfg, model)
    val = corpus.fixed_batches("val", cfg.train.batch_size, cfg.train.eval_batches, seed=cfg.train.seed + 1)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    history = History(twins)
    start = 1
    if resume:
        state = torch.load(out / STATE, map_location="cpu", weights_only=False)
        for name, twin in twins.items():
            twin.load_state_dict(state["twins"][name])
        history.load_state_dict(state["history"])
        gen.set_state(state["generator"])
        start = state["step"] + 1
        if "analog" in twins:  # run.h5 was written together with the state: its ledger matches
            import h5py

            from analog_ep.hardware.ledger import PulseLedger

            with h5py.File(out / "run.h5", "r") as f:
                ledger = PulseLedger.from_hdf5(f["pulses"])
            twins["analog"].chip.ledger = ledger
            for arr in twins["analog"].chip.arrays.values():
                arr.ledger = ledger
    config_text = dump_yaml(cfg)
    (out / "config.yaml").write_text(config_text, encoding="utf-8")
    probe = EquilibriumTransformer(cfg.model) if cfg.train.update_cos and "analog" in twins else None
    ledger = twins["analog"].chip.ledger if "analog" in twins else None
    entropy = corpus.unigram_entropy("val")
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.train.steps + 1), initial=start - 1, total=cfg.train.steps, desc="train",
               unit="step", disable=not progress, dynamic_ncols=True)
    last = cfg.train.steps if stop_after is None else min(stop_after, cfg.train.steps)
    for step in bar:
        if step > last:
            break
        x, y = corpus.batch("train", cfg.train.batch_size, gen)
        for name, twin in twins.items():
            before = {n: p.detach().clone() for n, p in twin.model.state_dict().items()} if (
                probe is not None and name == "analog") else None
            rec = twin.step(x, y, step)
            history.add(name, "train.step", step)
            history.add(name, "train.loss", rec.loss)
            history.add(name, "residual", rec.residual)
            if name == "analog":
                history.add(name, "settle_time", rec.settle_time)
                history.add(name, "energy", rec.energy)
                history.add(name, "pulses", rec.pulses)
                if before is not None:
                    history.add(name, "update_cos", update_cosine(twin, probe, before, x, y, cfg))
        if step % cfg.train.eval_every == 0 or step == last:
            for name, twin in twins.items():
                history.add(name, "val.step", step)
                history.add(name, "val.loss", twin.evaluate(val))
            write_h5(out / "run.h5", config_text, history, ledger, step)
            plot_curves(out / "curves.png", history, f"{Path(str(out)).name}: cross-entropy", entropy)
            save_state(out / STATE, {"config": config_text, "step": step, "history": history.state_dict(),
                                     "generator": gen.get_state(),
                                     "twins": {n: t.state_dict() for n, t in twins.items()}})
        bar.set_postfix({n: f"{history.last(n, 'train.loss'):.3f}" for n in twins} |
                        {f"val_{n}": f"{history.last(n, 'val.loss', math.nan):.3f}" for n in twins})
    bar.close()
    return {"steps": last, "wall_s": time.perf_counter() - t0, "out": str(out),
            "val_loss": {n: history.last(n, "val.loss") for n in twins}, "unigram_entropy": entropy}


def check_out_dir(out: Path, resume: bool) -> None:
    """A new run needs an empty or missing directory; --resume needs a run's state."""
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", str(out), "is a file, not a directory", "choose a directory path for the run")
    if resume:
        if not (out / STATE).is_file():
            raise ConfigError("--resume", str(out), f"no {STATE} to resume from",
                              "point --out at an interrupted run directory")
        return
    if out.exists() and any(out.iterdir()):
        raise ConfigError("--out", str(out), "directory exists and is not empty",
                          "choose a new --out so earlier results are kept, or add --resume to continue it")
