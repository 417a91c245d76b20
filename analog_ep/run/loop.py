"""`analog-ep run`: the twins side by side, from the same initial weights, on the same batches.

Step 0 evaluates every twin (the curves start at the initial weights); then every step each
running twin takes the same training batch; every `train.eval_every` steps and at the last step
each is evaluated on the same fixed validation batches (with evaluation noise of its own, so
evaluating more or less often leaves training bit-identical); every `train.checkpoint_every`
steps, at every evaluation and at the end, run.h5, curves.png, state.pt and best.pt are
rewritten atomically (`analog_ep.run.store`).

A twin whose `DivergenceMonitor` fires stops; its fingerprint and a one-line diagnosis go to
`diagnosis_<twin>.json`. If the reference twin (digital; bptt when there is no digital twin)
diverges, the run stops with status `diverged`; any other twin that diverges (the analog twin
above all) is a result: the run goes on and completes. SIGINT/SIGTERM finish the current step, save and end the run `interrupted`
(resumable; a second signal stops at once, leaving the last checkpoint). A directory is run by
one process at a time (`RunLock`). Statuses and exit codes: `analog_ep.run.status`.

Resume (`resume=True`) continues from state.pt bit for bit: every twin's state (weights,
optimizer, schedule, stabiliser controllers, generators, the chip's devices and noise
generators), the data generator, the history and the ledger (truncated to what the state had
seen) are restored.
"""
from __future__ import annotations

import copy
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import torch
import yaml

from analog_ep.atomic import atomic_write
from analog_ep.config import RunConfig, dump_yaml, load_config, merge, parse_override, to_dict
from analog_ep.diagnostics.fingerprint import cosine
from analog_ep.errors import AnalogEPError, ConfigError
from analog_ep.estimator.ep import ep_gradient
from analog_ep.model.base import EquilibriumModel
from analog_ep.run.diagnosis import diagnosis_line, fingerprint_at, write_diagnosis
from analog_ep.run.status import LOCK, RunLock, one_line
from analog_ep.run.store import STATE_VERSION, History, save_state, write_h5
from analog_ep.train.stabilizers import DivergenceMonitor
from analog_ep.train.twin import DigitalTwin

STATE, BEST, CONFIG, RUN = "state.pt", "best.pt", "config.yaml", "run.h5"
#: The run's reference is the first of these it trains: its divergence makes the run `diverged`
#: (any other twin diverging, the analog one above all, is a result).
REFERENCE_ORDER = ("digital", "bptt")


def reference_twin(twins) -> str | None:
    """The twin whose divergence is the run's: digital, else bptt, else none (an analog-only run)."""
    return next((name for name in REFERENCE_ORDER if name in twins), None)


#: Keys `--resume` may change: they extend or re-pace the run without changing what it trains.
RESUMABLE_KEYS = ("train.steps", "train.eval_every", "train.checkpoint_every")
#: What torch.load raises for a truncated or corrupt file: it has no exception of its own, and
#: unpickling arbitrary bytes raises almost any type (OverflowError, struct.error, MemoryError, ...).
_UNREADABLE = (Exception,)


def load_data(cfg: RunConfig):
    """The run's data (`data.kind`): a `CharCorpus` (text) or `DigitsData` (digits); both serve
    `batch`, `fixed_batches` and `unigram_entropy`, and `classification` says whether accuracy is
    recorded. Text fills in the model's vocab_size."""
    if cfg.data.kind == "digits":
        from analog_ep.data.digits import DigitsData

        return DigitsData.from_config(cfg.data)
    from analog_ep.data.text import CharCorpus

    corpus = CharCorpus.from_config(cfg.data)
    cfg.model.vocab_size = corpus.vocab_size
    return corpus


def make_model(cfg: RunConfig) -> EquilibriumModel:
    """A fresh model of `model.kind` from its config (its initial weights follow `model.seed`)."""
    if cfg.model.kind == "mlp":
        from analog_ep.model.mlp import EquilibriumMLP

        return EquilibriumMLP(cfg.model)
    from analog_ep.model.transformer import EquilibriumTransformer

    return EquilibriumTransformer(cfg.model)


def build(cfg: RunConfig):
    """(data, model) of a run."""
    corpus = load_data(cfg)
    return corpus, make_model(cfg)


def make_twins(cfg: RunConfig, model: EquilibriumModel) -> dict:
    """Each twin owns a copy of the same initial weights."""
    from analog_ep.train.backend import check_backend

    check_backend(cfg)
    twins = {}
    common = (cfg.relax, cfg.ep, cfg.optim, cfg.schedule, cfg.stabilizers)
    for name in cfg.train.twins:
        if name == "analog":
            from analog_ep.train.analog import AnalogTwin

            circuit = cfg.circuit
            twins[name] = AnalogTwin(model, cfg.chip, *common, gradient="ep", seed=cfg.train.seed,
                                     circuit=circuit.dynamics, settle=circuit.settle, energy=circuit.energy)
        else:
            gradient = "bptt" if name == "bptt" else cfg.train.gradient
            twins[name] = DigitalTwin(copy.deepcopy(model), *common, gradient=gradient, ema=cfg.train.ema,
                                      seed=cfg.train.seed)
    return twins


def update_cosine(analog, probe: EquilibriumModel, before: dict, x, y, cfg: RunConfig) -> float:
    """cos(-(realised change of the analog weights), digital EP gradient at the pre-step weights)."""
    probe.load_state_dict(before)
    grads = ep_gradient(probe, x, y, cfg.relax, cfg.ep).grads
    after = dict(analog.model.named_parameters())
    change = torch.cat([(after[n].detach() - before[n]).reshape(-1) for n in grads])
    return cosine(-change, torch.cat([grads[n].reshape(-1) for n in grads]))


# ---- the run directory ---------------------------------------------------------------------------------
def check_out_dir(out: Path, resume: bool) -> None:
    """A new run needs an empty or missing directory; --resume needs a run's state."""
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", str(out), "is a file, not a directory", "choose a directory path for the run")
    if resume:
        if not (out / STATE).is_file():
            raise ConfigError("--resume", str(out), f"no {STATE} to resume from",
                              "point --out at an interrupted run directory")
        return
    if out.exists() and any(p.name != LOCK for p in out.iterdir()):
        raise ConfigError("--out", str(out), "directory exists and is not empty",
                          "choose a new --out so earlier results are kept, or add --resume to continue it")
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not parent.is_dir() or not _writable(parent):
        raise ConfigError("--out", str(out), f"{parent} is not a writable directory",
                          "choose a --out in a folder you can write to")


def _writable(path: Path) -> bool:
    import os

    return os.access(path, os.W_OK | os.X_OK)


def run_config(run_dir: Path) -> RunConfig:
    """The resolved configuration a run directory was started with (its config.yaml)."""
    path = Path(run_dir) / CONFIG
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(str(path), "", f"cannot be read ({err.strerror})", "pass a run directory") from None
    return merge(RunConfig(), yaml.safe_load(text), str(path)).resolve()


def read_state(out: Path) -> dict:
    """state.pt of a run directory, or a one-line ConfigError saying why it cannot be resumed."""
    path = out / STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise ConfigError("--resume", str(out), f"no {STATE} to resume from",
                          "point --out at an interrupted run directory") from None
    except _UNREADABLE as err:
        raise ConfigError("--resume", str(path), f"cannot be read ({type(err).__name__}: truncated or corrupt)",
                          "start a new run in another --out; run.h5 keeps this run's curves") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        version = state.get("version", 1) if isinstance(state, dict) else "none"
        raise ConfigError("--resume", str(path), f"state format version {version}, this analog-ep reads "
                          f"{STATE_VERSION}", "start a new run with this version of analog-ep")
    return state


def resume_config(out: Path, overrides: list[str] = (), chip: str | None = None) -> RunConfig:
    """The configuration a run directory resumes with: its own, with `RESUMABLE_KEYS` overridden.

    `chip`, when given, must resolve (with the same overrides) to the run's own configuration.
    """
    state = read_state(out)
    cfg = merge(RunConfig(), yaml.safe_load(state["config"]), str(out / STATE))
    for text in overrides:
        data = parse_override(text)
        key = _dotted_key(data)
        if key not in RESUMABLE_KEYS:
            raise ConfigError("--set", text, f"{key} cannot change on --resume (the run was trained with its value)",
                              f"only {', '.join(RESUMABLE_KEYS)} can; start a new run to change {key}",
                              "command line")
        cfg = merge(cfg, data, "--set")
    cfg = cfg.resolve()
    if chip is not None:
        given = to_dict(load_config(chip, list(overrides)))
        run = to_dict(cfg)
        if "vocab_size" in run["model"] and "vocab_size" in given["model"]:
            given["model"]["vocab_size"] = run["model"]["vocab_size"]  # filled in from the corpus at the start
        diff = _first_difference(run, given)
        if diff is not None:
            key, theirs, ours = diff
            raise ConfigError("--resume", chip, f"differs from the run in {out}: {key} is {ours!r} here, "
                              f"{theirs!r} in the run", "drop CHIP to resume with the run's own configuration")
    check_resumable(state, cfg, out)
    return cfg


def check_resumable(state: dict, cfg: RunConfig, out: Path) -> None:
    """Refuse a resume that would repeat a divergence or has no step left to run."""
    reference = reference_twin(state["runs"])
    if reference is not None and state["runs"][reference]["status"] == "diverged":
        reason = state["runs"][reference]["reason"]
        raise ConfigError("--resume", str(out), f"the run diverged ({reference} twin: {reason})",
                          "start a new run (e.g. with a smaller optim.lr); best.pt holds each twin's best state")
    if state["step"] >= cfg.train.steps:
        raise ConfigError("--steps", cfg.train.steps, f"the run in {out} has already done {state['step']} steps",
                          f"pass --steps greater than {state['step']} to extend it")


def _dotted_key(data: dict, prefix: str = "") -> str:
    (key, value), = data.items()
    return _dotted_key(value, f"{prefix}{key}.") if isinstance(value, dict) and value else f"{prefix}{key}"


def _first_difference(a, b, prefix: str = ""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            diff = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if diff is not None:
                return diff
        return None
    return None if a == b else (prefix.rstrip("."), a, b)


def _read_ledger(out: Path, rounds: int):
    """The pulse ledger in run.h5, cut to the `rounds` the state had seen."""
    from analog_ep.hardware.ledger import PulseLedger

    path = out / RUN
    try:
        with h5py.File(path, "r") as f:
            ledger = PulseLedger.from_hdf5(f["pulses"])
    except (OSError, KeyError, AnalogEPError) as err:
        raise ConfigError("--resume", str(path), f"cannot be read ({one_line(err)})",
                          "start a new run in another --out") from None
    if len(ledger) < rounds:
        raise ConfigError("--resume", str(path), f"its ledger has {len(ledger)} rounds, the state {rounds}",
                          "start a new run in another --out (run.h5 is older than state.pt)")
    ledger.truncate(rounds)
    return ledger


# ---- signals -------------------------------------------------------------------------------------------
class _Signals:
    """SIGINT/SIGTERM set `caught` (the run finishes its step, saves and stops); a second one stops
    at once. Only the main thread can install handlers: elsewhere this does nothing."""

    def __init__(self):
        self.caught: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame) -> None:
        if self.caught is not None:
            raise KeyboardInterrupt  # the last checkpoint stays on disk; run.h5 reads 'killed'
        self.caught = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


# ---- per-twin bookkeeping ------------------------------------------------------------------------------
@dataclass
class TwinRun:
    """A twin's status in the run, its divergence monitor and its best state so far."""

    monitor: DivergenceMonitor
    status: str = "running"
    reason: str = ""
    diagnosis: str = ""
    best_step: int = -1
    best_val_loss: float = math.inf
    best_state: dict | None = field(default=None, repr=False)

    def observe(self, step: int, val_loss: float, twin) -> bool:
        """Keep the twin's state if this is its lowest validation loss; True when it is."""
        if not (math.isfinite(val_loss) and val_loss < self.best_val_loss):
            return False
        self.best_step, self.best_val_loss = step, val_loss
        self.best_state = copy.deepcopy(twin.state_dict())
        return True

    def attrs(self) -> dict:
        return {"status": self.status, "status_reason": self.reason, "diagnosis": self.diagnosis,
                "best_step": self.best_step, "best_val_loss": self.best_val_loss if self.best_step >= 0 else math.nan}

    def state_dict(self) -> dict:
        return {"status": self.status, "reason": self.reason, "diagnosis": self.diagnosis,
                "monitor": self.monitor.state_dict(), "best_step": self.best_step,
                "best_val_loss": self.best_val_loss, "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.status, self.reason, self.diagnosis = state["status"], state["reason"], state["diagnosis"]
        self.monitor.load_state_dict(state["monitor"])
        self.best_step, self.best_val_loss, self.best_state = state["best_step"], state["best_val_loss"], \
            state["best_state"]


# ---- the job -------------------------------------------------------------------------------------------
def run_job(cfg: RunConfig, out: Path, resume: bool = False, progress: bool = True, stop_after: int | None = None
            ) -> dict:
    """Train the configured twins; write and refresh the run directory. Returns a summary with the
    run's `status` and `reason`, each twin's status, its last validation loss and the wall time.

    Bad input (a bad configuration, a directory another process runs, a state that cannot be
    resumed) raises `ConfigError` before anything is written. After the start, an
    `AnalogEPError` ends the run `failed` (recorded in run.h5, returned); any other exception is
    recorded as `failed` and re-raised. `stop_after` ends the run after that step (saved,
    status `interrupted`), to be resumed later.
    """
    out = Path(out)
    check_out_dir(out, resume)
    if not resume:
        corpus, model = build(cfg)  # configuration errors surface before the directory exists
        twins = make_twins(cfg, model)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError("--out", str(out), f"cannot be created ({err.strerror})",
                              "choose a --out in a folder you can write to") from None
    lock = RunLock(out).acquire()
    try:
        state = None
        if resume:
            state = read_state(out)
            check_resumable(state, cfg, out)
            corpus, model = build(cfg)
            twins = make_twins(cfg, model)
        elif any(p.name != LOCK for p in out.iterdir()):  # another process filled it meanwhile
            raise ConfigError("--out", str(out), "directory exists and is not empty",
                              "choose a new --out so earlier results are kept")
        return _Job(cfg, out, corpus, twins, state, progress, stop_after).run()
    finally:
        lock.release()


class _Job:
    """One execution of a run (fresh or resumed) in a locked directory."""

    def __init__(self, cfg, out, corpus, twins, state, progress, stop_after):
        self.cfg, self.out, self.corpus, self.twins, self.progress = cfg, out, corpus, twins, progress
        self.config_text = dump_yaml(cfg)
        self.history = History(twins)
        self.runs = {name: TwinRun(DivergenceMonitor(cfg.stabilizers)) for name in twins}
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.val = corpus.fixed_batches("val", cfg.train.batch_size, cfg.train.eval_batches, seed=cfg.train.seed + 1)
        self.entropy = corpus.unigram_entropy("val")
        self.last = cfg.train.steps if stop_after is None else max(0, min(stop_after, cfg.train.steps))
        self.step, self.start = 0, 1
        self.wall_before, self.t0 = 0.0, time.perf_counter()  # training wall time of earlier invocations
        self.best_dirty = False
        self.ledger = twins["analog"].chip.ledger if "analog" in twins else None
        self.fresh = state is None
        if state is not None:
            self._restore(state)
        self.probe = make_model(cfg) if cfg.train.update_cos and "analog" in twins else None
        self.classification = getattr(corpus, "classification", False)

    def _restore(self, state: dict) -> None:
        for name, twin in self.twins.items():
            twin.load_state_dict(state["twins"][name])
            self.runs[name].load_state_dict(state["runs"][name])
        self.history.load_state_dict(state["history"])
        self.generator.set_state(state["generator"])
        self.step = state["step"]
        self.start = self.step + 1
        self.wall_before = state.get("wall_s", 0.0)
        if self.ledger is not None:  # run.h5 may be a checkpoint ahead of the state: cut it back
            ledger = _read_ledger(self.out, state["twins"]["analog"]["chip"]["ledger_rounds"])
            chip = self.twins["analog"].chip
            chip.ledger = self.ledger = ledger
            for arr in chip.arrays.values():
                arr.ledger = ledger

    # ---- the loop ------------------------------------------------------------------------------------
    def run(self) -> dict:
        from tqdm import tqdm

        t0 = self.t0 = time.perf_counter()
        started = False
        try:
            with _Signals() as signals:
                atomic_write(self.out / CONFIG, lambda tmp: Path(tmp).write_text(self.config_text, encoding="utf-8"))
                started = True
                if self.fresh:  # evaluate the initial weights (a resume from step 0 has done so)
                    self._evaluate(0)
                    for name, run in self.runs.items():
                        run.monitor.start(self.history.last(name, "val.loss"))
                self._checkpoint("running", "")
                bar = tqdm(initial=self.start - 1, total=self.cfg.train.steps, desc="train", unit="step",
                           disable=not self.progress, dynamic_ncols=True)
                self._postfix(bar)
                for step in range(self.start, self.last + 1):
                    if signals.caught:
                        break
                    self._train_step(step)
                    self.step = step
                    bar.update(1)
                    ending = step == self.last or signals.caught or self._stopping()
                    # the run's last step, not an interruption's: a resumed run's curves equal an uninterrupted one's
                    evaluate = step % self.cfg.train.eval_every == 0 or step == self.cfg.train.steps
                    if evaluate:
                        self._evaluate(step)
                    if not ending and (evaluate or step % self.cfg.train.checkpoint_every == 0):
                        self._checkpoint("running", "", plot=evaluate)
                    self._postfix(bar)
                    if ending:
                        break
                bar.close()
                status, reason = self._final(signals.caught)
                self._checkpoint(status, reason)
        except AnalogEPError as err:
            if not started:
                raise
            status, reason = "failed", one_line(f"{type(err).__name__}: {err}")
            self._record_failure(reason)
        except Exception as err:
            if started:
                self._record_failure(one_line(f"{type(err).__name__}: {err}"))
            raise
        return {"status": status, "reason": reason, "steps": self.step, "wall_s": time.perf_counter() - t0,
                "out": str(self.out), "twins": {n: r.status for n, r in self.runs.items()},
                "val_loss": {n: self.history.last(n, "val.loss") for n in self.twins},
                **({"val_accuracy": {n: self.history.last(n, "val.accuracy") for n in self.twins}}
                   if self.classification else {}),
                "unigram_entropy": self.entropy}

    def _stopping(self) -> bool:
        """No twin left to train, or a reference twin diverged."""
        reference = reference_twin(self.runs)
        return all(r.status != "running" for r in self.runs.values()) or (
            reference is not None and self.runs[reference].status == "diverged")

    def _train_step(self, step: int) -> None:
        cfg, history = self.cfg, self.history
        x, y = self.corpus.batch("train", cfg.train.batch_size, self.generator)
        for name, twin in self.twins.items():
            run = self.runs[name]
            if run.status != "running":
                continue
            before = {n: p.detach().clone() for n, p in twin.model.state_dict().items()} if (
                self.probe is not None and name == "analog") else None
            rec = twin.step(x, y, step)
            history.add(name, "train.step", step)
            history.add(name, "train.loss", rec.loss)
            if self.classification:
                history.add(name, "train.accuracy", rec.accuracy)
            history.add(name, "residual", rec.residual)
            if name == "analog":
                history.add(name, "settle_time", rec.settle_time)
                history.add(name, "energy", rec.energy)
                history.add(name, "pulses", rec.pulses)
                history.add(name, "latency_s", twin.last_cost.latency_s if twin.last_cost is not None else 0.0)
                if before is not None:
                    history.add(name, "update_cos", update_cosine(twin, self.probe, before, x, y, cfg))
            reason = run.monitor.update(rec.loss, rec.residual, rec.grad_norm, step)
            if reason is not None:
                self._diverged(name, step, reason)

    def _evaluate(self, step: int) -> None:
        for name, twin in self.twins.items():
            run = self.runs[name]
            if run.status != "running":
                continue
            loss, accuracy = twin.evaluate_metrics(self.val)
            self.history.add(name, "val.step", step)
            self.history.add(name, "val.loss", loss)
            if self.classification:
                self.history.add(name, "val.accuracy", accuracy)
            self.best_dirty |= run.observe(step, loss, twin)

    def _diverged(self, name: str, step: int, reason: str) -> None:
        """Stop the twin; write its fingerprint at divergence and at its best state, with a diagnosis."""
        cfg, run, twin = self.cfg, self.runs[name], self.twins[name]
        run.status, run.reason = "diverged", reason
        probe = make_model(cfg)
        x, y = self.corpus.fixed_batches("val", 4, 1, seed=cfg.train.seed)[0]
        now = fingerprint_at(probe, twin.model.state_dict(), x, y, cfg.relax, cfg.ep)
        best = None if run.best_state is None else fingerprint_at(probe, run.best_state["model"], x, y, cfg.relax,
                                                                  cfg.ep)
        run.diagnosis = diagnosis_line(now, best, run.best_step, cfg.stabilizers.abort_residual)
        write_diagnosis(self.out / f"diagnosis_{name}.json", {
            "twin": name, "step": step, "reason": reason, "diagnosis": run.diagnosis,
            "best_step": run.best_step, "best_val_loss": run.best_val_loss, "at_divergence": now, "at_best": best})

    def _final(self, caught: str | None) -> tuple[str, str]:
        reference = reference_twin(self.runs)
        if reference is not None and self.runs[reference].status == "diverged":
            return "diverged", f"{reference} twin: {self.runs[reference].reason}"
        if caught:
            return "interrupted", f"{caught} after step {self.step}: resume with --resume"
        if self.step < self.cfg.train.steps and any(r.status == "running" for r in self.runs.values()):
            return "interrupted", f"--stop-after {self.last}: stopped after step {self.step}; resume with --resume"
        for run in self.runs.values():
            if run.status == "running":
                run.status = "completed"
        diverged = [f"{n} twin diverged: {r.reason}" for n, r in self.runs.items() if r.status == "diverged"]
        return "completed", "; ".join(diverged)

    # ---- files -----------------------------------------------------------------------------------------
    def _checkpoint(self, status: str, reason: str, plot: bool = True) -> None:
        """run.h5 first, then the state: a kill between them leaves run.h5 ahead, which a resume cuts
        back to the state; best.pt last (the state holds the best states too). curves.png is redrawn
        where `plot` (the loop's evaluations and the run's end: on the default job a drawing takes
        ~0.5 s, the checkpoint's files ~0.1 s, and the curves' validation points change only there)."""
        attrs = {n: r.attrs() for n, r in self.runs.items()}
        wall = self._wall()
        write_h5(self.out / RUN, self.config_text, self.history, self.ledger, self.step, status, reason, attrs,
                 {"wall_s": wall, "unigram_entropy": self.entropy})
        if plot:
            from analog_ep.run.plot import plot_curves

            plot_curves(self.out / "curves.png", self.history, f"{self.out.name}: cross-entropy", self.entropy,
                        prior="class-prior" if self.classification else "unigram")
        save_state(self.out / STATE, {
            "version": STATE_VERSION, "config": self.config_text, "step": self.step,
            "history": self.history.state_dict(), "generator": self.generator.get_state(), "wall_s": wall,
            "twins": {n: t.state_dict() for n, t in self.twins.items()},
            "runs": {n: r.state_dict() for n, r in self.runs.items()}})
        if self.best_dirty or not (self.out / BEST).exists():
            save_state(self.out / BEST, {n: {"step": r.best_step, "val_loss": r.best_val_loss, "state": r.best_state}
                                         for n, r in self.runs.items() if r.best_state is not None})
            self.best_dirty = False

    def _record_failure(self, reason: str) -> None:
        """Mark run.h5 failed; the state is left as last saved (a failed step may be half done)."""
        try:
            attrs = {n: r.attrs() for n, r in self.runs.items()}
            write_h5(self.out / RUN, self.config_text, self.history, self.ledger, self.step, "failed", reason, attrs,
                     {"wall_s": self._wall(), "unigram_entropy": self.entropy})
        except Exception:  # noqa: BLE001 -- the original error is the one to report
            pass

    def _wall(self) -> float:
        """Training wall time over every invocation of this run (s)."""
        return self.wall_before + time.perf_counter() - self.t0

    def _postfix(self, bar) -> None:
        h = self.history
        bar.set_postfix({n: f"{h.last(n, 'train.loss', math.nan):.3f}" for n in self.twins} |
                        {f"val_{n}": f"{h.last(n, 'val.loss', math.nan):.3f}" for n in self.twins})
