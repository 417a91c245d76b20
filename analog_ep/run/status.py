"""The status of a run directory, as `sweep` and `compare` read it.

TEMPORARY minimal version (lane i08): the reliability lane (i10) writes the real one with the same
name and signature; the lead keeps theirs at merge. The contract it reads:

* run.h5's root attribute `status` in {running, completed, diverged, interrupted, failed} and
  `status_reason` (one line, may be empty);
* `<run>/.lock`, an OS lock (fcntl.flock) held while a process runs the directory: a run whose
  run.h5 says `running` while the lock is free was killed;
* a directory without run.h5 never got to its first checkpoint: `missing`.

run.h5 files written before run statuses existed carry no `status`: they count as `completed`
when `steps_done` reached the configured `train.steps`, else as `killed`.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import yaml

LOCK = ".lock"


def _lock_free(run_dir: Path) -> bool:
    """True when no process holds `<run_dir>/.lock` (or there is none)."""
    import fcntl

    path = run_dir / LOCK
    if not path.is_file():
        return True
    with open(path, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
    return True


def read_status(run_dir) -> tuple[str, str]:
    """(status, one-line reason) of a run directory: running, completed, diverged, interrupted,
    failed, killed or missing."""
    run_dir = Path(run_dir)
    path = run_dir / "run.h5"
    if not path.is_file():
        return "missing", "no run.h5: the run never reached its first checkpoint"
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except OSError as err:
        return "failed", f"run.h5 unreadable ({err})"
    status = str(attrs.get("status", ""))
    reason = str(attrs.get("status_reason", ""))
    if not status:
        steps = (yaml.safe_load(str(attrs.get("config", ""))) or {}).get("train", {}).get("steps")
        done = int(attrs.get("steps_done", 0))
        if steps is not None and done >= int(steps):
            return "completed", ""
        return "killed", f"stopped at step {done} of {steps} (no run status recorded)"
    if status == "running" and _lock_free(run_dir):
        return "killed", reason or f"run.h5 says running at step {int(attrs.get('steps_done', 0))}, no process holds it"
    return status, reason
