"""Run status as a sweep reads it, the directory lock, provenance, atomic checkpoints."""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from analog_ep.errors import ConfigError
from analog_ep.run.status import EXIT_CODES, RunLock, lock_is_held, read_status, status_line
from analog_ep.run.store import History, save_state, write_h5

ROOT = Path(__file__).resolve().parents[1]


def make_run(folder: Path, status: str, reason: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    history = History(["digital"])
    history.add("digital", "train.step", 1)
    history.add("digital", "train.loss", 4.2)
    write_h5(folder / "run.h5", "config: text\n", history, None, 1, status, reason,
             {"digital": {"status": "running"}})
    return folder


def test_read_status_tells_killed_from_running_and_reads_the_others(tmp_path):
    assert read_status(tmp_path / "never")[0] == "missing"
    run = make_run(tmp_path / "run", "running")
    assert read_status(run) == ("killed", "run.h5 says running at step 1 but no process holds .lock")
    with RunLock(run):
        assert lock_is_held(run) and read_status(run) == ("running", "")
    assert not lock_is_held(run)  # released with the holder
    for status, reason in (("completed", ""), ("diverged", "digital twin: step 9: loss 3e+03 > 10 x initial 4.8"),
                           ("interrupted", "SIGTERM after step 4: resume with --resume"), ("failed", "boom")):
        assert read_status(make_run(tmp_path / status, status, reason)) == (status, reason)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.h5").write_bytes(b"not hdf5")
    assert read_status(tmp_path / "broken")[0] == "unreadable"


def test_exit_codes_and_status_line():
    assert EXIT_CODES == {"completed": 0, "failed": 1, "diverged": 3, "interrupted": 130}
    assert status_line("completed") == "analog-ep: status completed"
    assert status_line("diverged", "digital twin: x") == "analog-ep: status diverged: digital twin: x"


def test_the_lock_refuses_a_second_process_and_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from analog_ep.run.status import RunLock; "
        f"RunLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"another analog-ep process \\(pid {holder.pid}\\) is running"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):  # the OS released the dead holder's lock
        pass


def test_run_h5_records_provenance(tmp_path):
    run = make_run(tmp_path / "run", "completed")
    with h5py.File(run / "run.h5") as f:
        attrs = dict(f.attrs)
    print({k: attrs[k] for k in attrs if k != "config"})
    assert attrs["version"] == 3  # run.h5 layout v3: accuracy series for classification runs
    assert attrs["torch_version"] == importlib.metadata.version("torch")
    assert attrs["numpy_version"] == np.__version__ and attrs["h5py_version"] == h5py.__version__
    assert attrs["aihwkit_version"] == importlib.metadata.version("aihwkit")
    assert attrs["threads"] == torch.get_num_threads()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert attrs["git_commit"] == head.stdout.strip() and attrs["git_dirty"] in ("yes", "no")
    assert attrs["python_version"] == ".".join(map(str, sys.version_info[:3]))


def test_a_crash_during_a_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    save_state(path, {"step": 1})
    real_save = torch.save

    def half_then_crash(obj, target):
        Path(target).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt  # the kill arrives mid-write

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        save_state(path, {"step": 2})
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=False) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary left behind
