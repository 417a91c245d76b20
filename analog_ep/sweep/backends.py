"""Where sweep points run: worker processes on this machine, or tasks on a Ray cluster.

Both run every point the same way (`worker.run_isolated`: `analog-ep run` in a fresh process)
and write into the same sweep directory, so they give the same run directories and sweep.h5.
A backend has `slots` points in flight at most; `submit` starts one, `wait` returns the ones
that ended as (job, exit code, note): the exit code is negative for a signal, None when the
backend lost the point (the note says how).
"""
from __future__ import annotations

import multiprocessing.connection
import os
import signal

from analog_ep.errors import ConfigError
from analog_ep.sweep import worker


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


class LocalBackend:
    """`workers` point processes at a time on this machine, `threads` torch threads each."""

    name = "local"

    def __init__(self, workers: int, threads: int, target=worker.run_point):
        self.slots, self.threads, self.target = workers, threads, target
        self.running: dict[str, tuple] = {}  # job name -> (process, job)

    def submit(self, job: dict) -> None:
        self.running[job["name"]] = (worker.start(job, self.target), job)

    def wait(self, timeout: float) -> list[tuple[dict, int | None, str]]:
        by_sentinel = {p.sentinel: name for name, (p, _) in self.running.items()}
        done = multiprocessing.connection.wait(list(by_sentinel), timeout)
        finished = []
        for sentinel in done:
            process, job = self.running.pop(by_sentinel[sentinel])
            process.join()
            finished.append((job, process.exitcode, ""))
        return finished

    def signal(self, sig: int) -> None:
        for process, _ in self.running.values():
            if process.exitcode is None:
                try:
                    os.kill(process.pid, sig)
                except ProcessLookupError:
                    pass

    def close(self) -> None:
        pass


def _ray_point(job: dict) -> int | None:
    """A Ray task: the point in its own process on whichever node Ray chose."""
    process = worker.start(job)
    try:
        process.join()
    except KeyboardInterrupt:  # ray.cancel: let the point stop as on SIGTERM
        process.terminate()
        process.join()
    return process.exitcode


class RayBackend:
    """One Ray task per point on an existing cluster (`ray.init(address=...)`).

    Every node must see the sweep directory at the same path (a shared filesystem) and have
    analog-ep installed. `address` 'auto' finds a cluster started on this machine with
    `ray start --head`; an address 'host:port' connects to a remote head node.
    """

    name = "ray"

    def __init__(self, address: str | None, workers: int | None, threads: int):
        try:
            import ray
        except ImportError:
            raise ConfigError("--backend", "ray", "Ray is not installed",
                              "pip install 'analog-ep[ray]', or use --backend local") from None
        self.ray, self.threads = ray, threads
        if not ray.is_initialized():
            try:
                ray.init(address=address or "auto", log_to_driver=False, logging_level="error")
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise ConfigError("--address", address or "auto", f"no Ray cluster to connect to "
                                  f"({str(err).splitlines()[0] if str(err) else type(err).__name__})",
                                  "start one with `ray start --head` (or give its address)") from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.slots = workers or max(1, cpus // threads)
        self.task = ray.remote(num_cpus=threads, max_retries=0)(_ray_point)
        self.refs: dict = {}  # ObjectRef -> job

    def submit(self, job: dict) -> None:
        self.refs[self.task.remote(job)] = job

    def wait(self, timeout: float) -> list[tuple[dict, int | None, str]]:
        if not self.refs:
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
        finished = []
        for ref in ready:
            job = self.refs.pop(ref)
            try:
                finished.append((job, self.ray.get(ref), ""))
            except self.ray.exceptions.RayError as err:  # the task's worker or node died
                lines = str(err).strip().splitlines()
                finished.append((job, None, f"ray: {type(err).__name__}: {lines[0] if lines else ''}"))
        return finished

    def signal(self, sig: int) -> None:
        for ref in list(self.refs):
            self.ray.cancel(ref, force=sig == signal.SIGKILL)

    def close(self) -> None:
        pass


def make_backend(name: str, workers: int | None, threads: int | None, address: str | None, target=None):
    """The backend of `--backend`; default threads: this machine's cores split over the workers
    (local), 1 (Ray)."""
    if workers is not None and workers < 1:
        raise ConfigError("--workers", workers, "must be >= 1", "e.g. --workers 2")
    if threads is not None and threads < 1:
        raise ConfigError("--threads", threads, "must be >= 1", "e.g. --threads 1")
    if name == "ray":
        if target is not None:
            raise ConfigError("--backend", name, "a custom point target runs on the local backend only")
        return RayBackend(address, workers, threads or 1)
    if address is not None:
        raise ConfigError("--address", address, "only used with --backend ray", "drop it, or add --backend ray")
    workers = workers or usable_cores()
    threads = threads or max(1, usable_cores() // workers)
    return LocalBackend(workers, threads, **({"target": target} if target is not None else {}))
