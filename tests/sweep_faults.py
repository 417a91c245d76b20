"""Fault injection for sweep tests: a point target that fails or dies once, on request.

A sweep test writes DIR/../inject/<point name> holding 'raise' or 'kill'; the point's first run then
raises (or SIGKILLs itself) at training step 2, after its step-1 checkpoint, and removes the
marker, so the next attempt runs normally. Imported by the sweep's fork server (tests/ is on
sys.path under pytest).
"""
import os
import signal
from pathlib import Path

from analog_ep.sweep.worker import run_point

FAULT_STEP = 2


def faulty_point(job: dict) -> int:
    marker = Path(job["log"]).parent.parent.parent / "inject" / job["name"]
    if marker.is_file():
        kind = marker.read_text().strip()
        marker.unlink()
        from analog_ep.train.twin import DigitalTwin

        step = DigitalTwin.step

        def failing_step(self, x, y, n):
            if n == FAULT_STEP:
                if kind == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"injected fault at step {n}")
            return step(self, x, y, n)

        DigitalTwin.step = failing_step  # this process only: it is the point's own
    return run_point(job)
