"""One sweep point in its own process: `analog-ep run` with the point's arguments.

Points run in fresh processes forked from a fork server that has already imported torch,
aihwkit and analog-ep (`multiprocessing`'s 'forkserver' start method; 'spawn' where there is
none): a point that raises, or that a signal kills (even SIGKILL), takes nothing else down, and
no point inherits another's state. Each point's stdout and stderr are appended to its log.

A job is a plain dict (it crosses process and Ray boundaries):
    argv      the `analog-ep` arguments (e.g. ['run', CHIP, '--set', ..., '--out', DIR, '--quiet'])
    log       file the point's output is appended to
    threads   torch intra-op threads of the point
    cwd       working directory of the point (relative paths in the chip file resolve from it)
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _stop_when_gone(pid: int | None) -> None:
    """SIGTERM this process once process `pid` (the sweep, or the Ray worker, that started it) has
    exited, so a sweep killed even by SIGKILL leaves no point running on; the point then stops
    as on any SIGTERM. (The fork server is no help: it lives as long as any of its children.)"""
    if not pid:
        return
    import threading
    import time

    def watch():
        try:
            fd = os.pidfd_open(pid)  # Linux >= 5.3: readable once the process has exited
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            import select

            select.select([fd], [], [])
        else:
            while True:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:  # alive, someone else's: only the former is possible here
                    pass
                time.sleep(2.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop when the sweep is gone", daemon=True).start()


def run_point(job: dict) -> int:
    """`analog-ep run` in this process, as the command line would: returns its exit code."""
    import torch

    from analog_ep.cli.main import main

    torch.set_num_threads(job["threads"])
    return main(job["argv"])


def _process_main(job: dict, target) -> None:
    """Body of a point's process: output to the log, threads set, then `target(job)`'s exit code."""
    _stop_when_gone(job.get("parent_pid"))
    fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for name in THREAD_VARIABLES:
        os.environ[name] = str(job["threads"])
    if job.get("cwd") and os.path.isdir(job["cwd"]):
        os.chdir(job["cwd"])
    try:
        code = target(job)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(code)


def context() -> multiprocessing.context.BaseContext:
    """The fork server (preloaded with torch, aihwkit and analog-ep), or 'spawn' without one."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["analog_ep.sweep.worker", "analog_ep.cli.main", "analog_ep.run.loop",
                                "analog_ep.train.analog"])
    return ctx


def start(job: dict, target=run_point) -> multiprocessing.process.BaseProcess:
    """Start a point's process; `target(job) -> exit code` must be importable (default `run_point`)."""
    job = {**job, "parent_pid": os.getpid()}
    process = context().Process(target=_process_main, args=(job, target), name=f"point {job['log']}")
    process.start()
    return process


def run_isolated(job: dict, target=run_point) -> int | None:
    """Run a point to its end in its own process; its exit code (negative: killed by that signal)."""
    process = start(job, target)
    process.join()
    return process.exitcode


def signal_name(exitcode: int | None) -> str:
    """'SIGKILL' for an exit code of -9."""
    try:
        return signal.Signals(-exitcode).name
    except (TypeError, ValueError):
        return f"signal {-exitcode}" if exitcode is not None else "an unknown cause"
