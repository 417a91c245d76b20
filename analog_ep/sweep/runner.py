"""Run a sweep: every point once, resumably, in worker processes or on Ray.

The sweep directory:

    DIR/sweep.h5          the table of points and the resolved definition (see `sweep.table`)
    DIR/tolerance.png     the tolerance map, refreshed as points finish (see `sweep.plot`)
    DIR/points/<name>/    one ordinary run directory per point (compare, diagnose, export work on it)
    DIR/logs/<name>.log   each point's output, every attempt appended
    DIR/attempts/         a point's earlier directory that held no resumable state, kept aside
    DIR/.lock             held (flock) while a sweep runs here: a second one is refused

Re-running the same command resumes: completed and diverged points are kept, any other point
runs again (`analog-ep run --resume` when it left a resumable state, else afresh). A different
resolved definition is refused. A point's status is what its run directory says
(`analog_ep.run.status.read_status`), refined by how its process ended: a point killed by a
signal is `killed`, one that raised is `failed` with the last line it printed as the reason.
"""
from __future__ import annotations

import math
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from analog_ep.errors import ConfigError
from analog_ep.results import RunSummary, summarize_run
from analog_ep.run.status import read_status
from analog_ep.sweep.grid import Point, SweepDefinition
from analog_ep.sweep.plot import FINISHED, plot_tolerance
from analog_ep.run.provenance import provenance
from analog_ep.sweep.table import point_rows, read_sweep_h5, write_sweep_h5
from analog_ep.sweep.worker import signal_name

INTERRUPT_GRACE_S = 120.0  # how long interrupted points get to save before they are killed


@dataclass
class PointState:
    """What the sweep knows of one point."""

    status: str = "pending"
    reason: str = ""
    attempts: int = 0
    process_s: float = 0.0
    summary: RunSummary | None = None


@dataclass
class SweepReport:
    """The outcome of one invocation."""

    out: Path
    statuses: dict[str, str]
    ran: list[str]
    """Points this invocation ran (skipped finished ones are not listed)."""
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if all(s in FINISHED for s in self.statuses.values()) else 1


class SweepLock:
    """An OS lock on DIR/.lock for the life of a sweep (released by the OS if the sweep dies)."""

    def __init__(self, out: Path):
        self.path = out / ".lock"

    def __enter__(self):
        import fcntl

        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.close()
            raise ConfigError("--out", str(self.path.parent), "another sweep is running in this directory",
                              "wait for it to finish, or choose another --out") from None
        return self

    def __exit__(self, *exc):
        self.file.close()


def _last_line(log: Path, offset: int) -> str:
    """The reason a point's process gave: its last `analog-ep:` line, else its last line."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            lines = [line.strip() for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return ""
    tagged = [line for line in lines if line.startswith("analog-ep:")]
    line = tagged[-1] if tagged else (lines[-1] if lines else "")
    for prefix in ("analog-ep: status ", "analog-ep: "):
        line = line.removeprefix(prefix)
    return line[:300]


def _summary(run_dir: Path) -> RunSummary | None:
    """The run's summary, or None without a readable run.h5 (its status says why)."""
    try:
        return summarize_run(run_dir)
    except ConfigError:
        return None


def point_outcome(run_dir: Path, exitcode: int | None, note: str, log: Path, offset: int) -> tuple[str, str]:
    """(status, reason) of a point whose process just ended."""
    status, reason = read_status(run_dir)
    if exitcode is None:  # the backend lost the process
        return ("killed" if status in ("running", "killed", "missing", "unreadable") else status), note or reason
    if exitcode < 0:
        if status in ("running", "killed", "missing", "unreadable"):
            summary = _summary(run_dir)
            steps = f" after step {summary.steps_done}" if summary is not None else ""
            return "killed", f"killed by {signal_name(exitcode)}{steps}"
        return status, reason
    if exitcode == 0:
        return status, reason
    if status in ("completed", "running", "killed", "missing", "unreadable"):  # the run did not record why it stopped
        return "failed", _last_line(log, offset) or f"exit code {exitcode}"
    return status, reason or _last_line(log, offset)


class Sweep:
    """One invocation of a sweep definition on a directory with a backend."""

    def __init__(self, definition: SweepDefinition, out: Path, backend, progress: bool = True,
                 command: str = ""):
        self.definition, self.out, self.backend = definition, Path(out), backend
        self.progress, self.command = progress, command or shlex.join(["analog-ep", *sys.argv[1:]])
        self.states = {p.name: PointState() for p in definition.points}
        self.versions = provenance()

    # ---- the directory ---------------------------------------------------------------------
    def check_out(self) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise ConfigError("--out", str(out), "is a file, not a directory", "choose a directory for the sweep")
        if out.is_dir() and any(out.iterdir()) and not (out / "sweep.h5").is_file():
            raise ConfigError("--out", str(out), "exists, is not empty and holds no sweep.h5",
                              "choose a new --out (an existing sweep directory resumes)")

    def load_previous(self) -> None:
        """Check the stored definition; carry over attempts, process time and reasons."""
        path = self.out / "sweep.h5"
        if not path.is_file():
            return
        try:
            attrs, rows = read_sweep_h5(path)
        except (OSError, KeyError) as err:
            raise ConfigError("--out", str(path), f"unreadable sweep.h5 ({err})",
                              "move it away to start this sweep afresh in the same directory") from None
        difference = self.definition.difference(str(attrs.get("definition", "")))
        if difference is not None:
            raise ConfigError("--out", str(self.out), f"holds a different sweep ({difference})",
                              f"choose a new --out, or resume it with its own command: {attrs.get('command', '?')}")
        for row in rows:
            state = self.states.get(row.get("point"))
            if state is not None:
                state.attempts, state.process_s = int(row.get("attempts", 0)), float(row.get("process_s", 0.0))
                state.reason = str(row.get("reason", ""))

    def scan(self) -> None:
        """Each point's status from its run directory."""
        for point in self.definition.points:
            state, run_dir = self.states[point.name], self.run_dir(point)
            if not run_dir.exists():
                state.status = "pending" if state.attempts == 0 else "missing"
                continue
            status, reason = read_status(run_dir)
            state.status = status
            state.reason = reason or (state.reason if status not in FINISHED else "")
            state.summary = _summary(run_dir)

    def run_dir(self, point: Point) -> Path:
        return self.out / "points" / point.name

    def write(self) -> None:
        rows = point_rows(self.definition, self.states)
        write_sweep_h5(self.out / "sweep.h5", self.definition, rows,
                       {"command": self.command, "backend": self.backend.name, **self.versions})
        d = self.definition
        chip = Path(d.chip).stem if d.chip else "defaults"
        plot_tolerance(self.out / "tolerance.png", d, rows,
                       f"{chip}: analog − digital gap after {d.base.train.steps} steps")

    # ---- running ---------------------------------------------------------------------------
    def job(self, point: Point) -> dict:
        """Prepare a point's directory and its `analog-ep run` arguments."""
        run_dir, state = self.run_dir(point), self.states[point.name]
        (self.out / "points").mkdir(exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        if (run_dir / "state.pt").is_file():
            argv = ["run", "--resume", "--out", str(run_dir), "--quiet"]
        else:
            if run_dir.exists():  # nothing to resume from: keep what is there, start afresh
                aside = self.out / "attempts" / f"{point.name}.{state.attempts}"
                aside.parent.mkdir(exist_ok=True)
                os.replace(run_dir, aside)
            argv = self.definition.run_args(point, run_dir)
        state.attempts += 1
        log = self.out / "logs" / f"{point.name}.log"
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"== attempt {state.attempts}, {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                    f"{shlex.join(['analog-ep', *argv])}\n")
            offset = f.tell()
        return {"name": point.name, "argv": argv, "log": str(log), "offset": offset,
                "threads": self.backend.threads, "cwd": os.getcwd(), "started": time.perf_counter()}

    def finish(self, job: dict, exitcode: int | None, note: str) -> str:
        point = next(p for p in self.definition.points if p.name == job["name"])
        state, run_dir = self.states[point.name], self.run_dir(point)
        state.process_s += time.perf_counter() - job["started"]
        state.status, state.reason = point_outcome(run_dir, exitcode, note, Path(job["log"]), job["offset"])
        state.summary = _summary(run_dir)
        return state.status

    def run(self) -> SweepReport:
        from tqdm import tqdm

        self.check_out()
        self.out.mkdir(parents=True, exist_ok=True)
        with SweepLock(self.out):
            self.load_previous()
            self.scan()
            # Seed 0 of every grid point first: a coarse map appears early.
            todo = sorted((p for p in self.definition.points if self.states[p.name].status not in FINISHED),
                          key=lambda p: (p.seed, p.index))
            self.write()
            total = len(self.definition.points)
            bar = tqdm(total=total, initial=total - len(todo), unit="point", desc="sweep", disable=not self.progress,
                       dynamic_ncols=True)
            ran, running, failed = [], 0, 0
            interrupted = False
            previous = signal.signal(signal.SIGTERM, _raise_interrupt)
            try:
                queue = list(todo)
                while queue or running:
                    while queue and running < self.backend.slots:
                        point = queue.pop(0)
                        self.backend.submit(self.job(point))
                        self.states[point.name].status = "running"
                        ran.append(point.name)
                        running += 1
                    # a terminal sees the clock tick; a log file gets a line per finished point only
                    bar.set_postfix_str(f"running {running}, failed {failed}", refresh=sys.stderr.isatty())
                    for job, code, note in self.backend.wait(timeout=1.0):
                        running -= 1
                        if self.finish(job, code, note) not in FINISHED:
                            failed += 1
                        bar.set_postfix_str(f"running {running}, failed {failed}", refresh=False)
                        bar.update(1)
                        self.write()
            except KeyboardInterrupt:
                interrupted = True
                self._stop(running)
            finally:
                signal.signal(signal.SIGTERM, previous)
                bar.close()
            self.write()
        return SweepReport(self.out, {n: s.status for n, s in self.states.items()}, ran, interrupted)

    def _stop(self, running: int) -> None:
        """Ask running points to stop (SIGTERM: they save and exit), kill them after a grace time."""
        print(f"analog-ep: sweep interrupted: stopping {running} running point(s)", file=sys.stderr)
        self.backend.signal(signal.SIGTERM)
        deadline = time.perf_counter() + INTERRUPT_GRACE_S
        while running and time.perf_counter() < deadline:
            try:
                for job, code, note in self.backend.wait(timeout=1.0):
                    running -= 1
                    self.finish(job, code, note)
            except KeyboardInterrupt:  # a second Ctrl-C: do not wait
                break
        if running:
            self.backend.signal(signal.SIGKILL)
            for job, code, note in self.backend.wait(timeout=10.0):
                self.finish(job, code, note)
        for state in self.states.values():
            if state.status == "running":
                state.status, state.reason = "interrupted", "the sweep was interrupted"


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def summary_lines(sweep: SweepDefinition, states: dict[str, PointState]) -> list[str]:
    """A plain-text table: one line per grid point, aggregated over seeds."""
    from analog_ep.sweep.grid import value_text
    from analog_ep.sweep.plot import cells

    rows = point_rows(sweep, states)
    agg = cells(sweep, rows)
    keys = list(sweep.grid)
    widths = [max(len(k), *(len(value_text(v)) for v in sweep.grid[k])) for k in keys]
    head = "  ".join(k.rjust(w) for k, w in zip(keys, widths))
    lines = [f"{head}  seeds  analog  digital  gap (mean ± std)  note"]
    for combo, c in agg.items():
        values = "  ".join(value_text(sweep.grid[k][i]).rjust(w) for k, i, w in zip(keys, combo, widths))
        spread = f" ± {c['spread']:.3f}" if math.isfinite(c["spread"]) else ""
        notes = [f"{n} {s}" for s, n in c["statuses"].items() if s not in FINISHED]
        if c["learns_nothing"]:
            notes.append("learns nothing")
        gap = f"{c['gap']:+.3f}{spread}" if c["n"] else "-"
        analog, digital = (f"{c[k]:.3f}" if c["n"] else "-" for k in ("analog", "digital"))
        lines.append(f"{values}  {c['n']:>2}/{c['seeds']:<2}  {analog:>6}  {digital:>7}  {gap:<16}  {', '.join(notes)}")
    return lines
