"""A run's status: what run.h5 records, the exit code of `analog-ep run`, and the directory lock.

| status        | exit code | meaning                                                                  |
|---------------|-----------|--------------------------------------------------------------------------|
| `completed`   | 0         | every step ran (a twin other than the digital reference may have diverged) |
| (bad input)   | 2         | nothing was started: one `analog-ep: error:` line                         |
| `diverged`    | 3         | the digital reference twin diverged                                      |
| `interrupted` | 130       | SIGINT/SIGTERM or `--stop-after`: the step finished, the state was saved; resumable |
| `failed`      | 1         | an unexpected error, with a one-line reason                              |

`running` is written when a run starts. A run directory holds an OS lock (`fcntl.flock` on
`<run>/.lock`) while a process runs it; the OS releases it when the holder dies, so a run.h5 that
still says `running` with a free lock was killed (`read_status` reports `killed`), and
`--resume` continues it from its last checkpoint.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from analog_ep.errors import ConfigError

STATUSES = ("running", "completed", "diverged", "interrupted", "failed")
"""Values of run.h5's root attribute `status`."""
TWIN_STATUSES = ("running", "completed", "diverged")
"""Values of the attribute `status` of `/twins/<twin>`."""
EXIT_CODES = {"completed": 0, "failed": 1, "diverged": 3, "interrupted": 130}
"""`analog-ep run`'s exit code per final status (bad input: 2)."""
BAD_INPUT = 2
LOCK = ".lock"
RUN_FILE = "run.h5"


def status_line(status: str, reason: str = "") -> str:
    """The last line `analog-ep run` prints on stderr."""
    return f"analog-ep: status {status}" + (f": {reason}" if reason else "")


def one_line(text: str, limit: int = 400) -> str:
    """`text` on one line (reasons are recorded as attributes and printed as the last line)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class RunLock:
    """An exclusive `flock` on `<run_dir>/.lock`, held while a process runs the directory.

    `acquire()` refuses (a one-line `ConfigError`) when another process holds it. The lock file
    holds the holder's pid, for that message; the lock itself is the kernel's, released when the
    holder exits or dies, so a killed run never blocks its own resume.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise ConfigError("--out", str(self.path.parent), f"cannot create its lock file ({err.strerror})",
                              "choose a writable --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError("--out", str(self.path.parent),
                              f"another analog-ep process (pid {holder}) is running this directory",
                              "wait for it to finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_is_held(run_dir: Path) -> bool:
    """Whether a live process holds `<run_dir>/.lock` (tested without keeping it)."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing the descriptor also releases a lock taken here
    return False


def read_status(run_dir: str | Path) -> tuple[str, str]:
    """(status, reason) of a run directory, as a sweep records it.

    One of `STATUSES`, or `killed` (run.h5 says `running` and no process holds the lock),
    `missing` (no run.h5) or `unreadable` (run.h5 exists but cannot be read).
    """
    import h5py

    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return "missing", f"no {RUN_FILE} in {run_dir}"
    try:
        with h5py.File(path, "r") as f:
            status = str(f.attrs.get("status", ""))
            reason = str(f.attrs.get("status_reason", ""))
            steps = int(f.attrs.get("steps_done", 0))
    except (OSError, KeyError, ValueError) as err:
        return "unreadable", one_line(f"{path}: {err}")
    if status not in STATUSES:  # a run.h5 written before statuses existed (format version 1)
        return "unreadable", f"{path}: no status attribute (written by an older analog-ep)"
    if status == "running" and not lock_is_held(run_dir):
        return "killed", f"run.h5 says running at step {steps} but no process holds {LOCK}"
    return status, reason
