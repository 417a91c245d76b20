"""A diverged run says so, a killed run resumes bit for bit, evaluation never moves training.

* Determinism: every shipped chip, run twice with the same seed (and thread count), writes
  bit-identical run.h5 series, ledgers, weights, tiles and optimizer states.
* SIGKILL between checkpoints spaced several steps apart (steps trained after the last state.pt
  are lost and trained again), then `--resume`: bit-identical to the uninterrupted run, for every
  shipped chip.
* A training step is bit-identical across processes at two threads and the default job's sizes,
  where torch's multi-threaded kernels run (the rest of this module runs on one thread).
* SIGINT: status `interrupted`, exit 130, the status line last on stderr; resumes bit for bit.
* Evaluating every step or every third leaves training bit-identical.
* Divergence: the digital reference diverging ends the run `diverged` (exit 3) with best.pt and
  the diagnosis file; an analog twin diverging alone is a result (`completed`, per-twin status).

The runs are tiny (width 16, context 8, batch 4, 10 relaxation steps) so the whole module runs
in a few minutes on two cores; one thread everywhere, so float sums are reproducible.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from analog_ep.cli.main import main
from analog_ep.config import library, load_config
from analog_ep.run.status import read_status
from run_compare import differences, h5_contents, tensors

ROOT = Path(__file__).resolve().parents[1]
CHIPS = sorted(library("chip"))
STEPS = 5
TINY = ["--set", "model.width=16", "--set", "data.context=8", "--set", "train.batch_size=4",
        "--set", "train.eval_batches=1", "--set", "relax.steps=10",
        "--set", "train.eval_every=2", "--set", "train.checkpoint_every=1", "--quiet"]
#: The MLP chips' tiny run: a narrow hidden layer (the digits' held-out split is evaluated whole).
TINY_MLP = ["--set", "model.hidden=[16]", "--set", "train.batch_size=4", "--set", "train.eval_every=2",
            "--set", "train.checkpoint_every=1", "--quiet"]


def tiny(chip: str) -> list[str]:
    return TINY_MLP if load_config(chip).model.kind == "mlp" else TINY


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the in-process tests run on one thread


def call(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


#: The killed runs: checkpoints every third step and one evaluation at the end, so a kill lands
#: between checkpoints with trained steps behind the last state.pt.
STEPS_KILLED = 7
SPACED = ["--steps", str(STEPS_KILLED), "--set", "train.checkpoint_every=3", "--set", f"train.eval_every={STEPS_KILLED}"]


def run_chip(chip: str, out: Path, *extra: str) -> tuple[int, str]:
    rc, _, err = call(["run", str(ROOT / "chips" / f"{chip}.yaml"), "--steps", str(STEPS), *tiny(chip), *extra,
                       "--out", str(out)])
    return rc, err


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, one per chip (and extra arguments), made on first use."""
    root = tmp_path_factory.mktemp("reference")
    made = {}

    def get(chip: str, *extra: str) -> Path:
        key = (chip, *extra)
        if key not in made:
            out = root / f"{chip}{len(made)}"
            rc, err = run_chip(chip, out, *extra)
            assert rc == 0, err
            made[key] = out
        return made[key]
    return get


@pytest.mark.parametrize("chip", CHIPS)
def test_the_same_chip_and_seed_rerun_bit_identical(chip, reference, tmp_path):
    rc, err = run_chip(chip, tmp_path / "again")
    assert rc == 0, err
    diffs = differences(reference(chip), tmp_path / "again")
    with h5py.File(tmp_path / "again" / "run.h5") as f:
        losses = f["twins/analog/train/loss"][:]
    print(f"\n{chip}: re-run analog losses {losses}; {len(diffs)} differences")
    assert diffs == []


def _wait_for_step(out: Path, step: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the run ended before step {step}: {proc.stderr.read()}"
        try:
            with h5py.File(out / "run.h5", "r") as f:
                if int(f.attrs["steps_done"]) >= step:
                    return
        except (OSError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of step {step} within {timeout} s")


def _start(chip: str, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "analog_ep.cli.main", "run", str(ROOT / "chips" / f"{chip}.yaml"),
                             "--steps", str(STEPS), *tiny(chip), *extra, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _kill_between_checkpoints(chip: str, out: Path, fraction: float) -> tuple[int, float]:
    """Start a spaced run, SIGKILL it `fraction` of the time its first three steps took after the
    checkpoint of step 3 appeared (1/3 to 2/3: within steps 4 to 6, before the next checkpoint);
    returns the process's exit code and the delay slept."""
    proc = _start(chip, out, *SPACED)
    _wait_for_step(out, 0, proc)
    started = time.monotonic()
    _wait_for_step(out, 3, proc)
    delay = fraction * (time.monotonic() - started)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode, delay


@pytest.mark.parametrize("chip", CHIPS)
def test_sigkill_between_spaced_checkpoints_then_resume_is_bit_identical(chip, reference, tmp_path):
    rng = random.Random(f"kill {chip}")
    # A kill one to two steps after the checkpoint of step 3: those steps (pulses, noise draws,
    # optimizer moments) are lost with the process and trained again from state.pt. On a loaded
    # machine a step can take longer than the rest of the run, so a kill that came after the next
    # checkpoint (or the end) is retried at half the delay; the last try kills as soon as step 3
    # is seen.
    fraction = rng.uniform(1 / 3, 2 / 3)
    out = tmp_path / "killed"
    for attempt in range(4):
        shutil.rmtree(out, ignore_errors=True)
        returncode, delay = _kill_between_checkpoints(chip, out, fraction if attempt < 3 else 0.0)
        status, reason = read_status(out)
        saved = torch.load(out / "state.pt", weights_only=False)["step"]
        if status == "killed" and saved == 3:
            break
        print(f"\n{chip}: {status} with the state of step {saved} {delay:.2f} s after step 3: retrying")
        fraction /= 2
    print(f"\n{chip}: killed {delay:.2f} s after the checkpoint of step 3: {status}: {reason}")
    assert returncode == -signal.SIGKILL and status == "killed" and saved == 3
    rc, _, err = call(["run", "--resume", "--out", str(out), "--quiet"])
    assert rc == 0, err
    assert err.strip().splitlines()[-1] == "analog-ep: status completed"
    diffs = differences(reference(chip, *SPACED), out)
    print(f"{chip}: resumed from the state of step {saved}: {len(diffs)} differences {diffs[:5]}")
    assert diffs == []


#: Two processes take the default job's first steps (its sizes, two threads), one after allocating
#: and freeing memory of its own, and save what the steps left in each twin.
_TWO_THREADS = """
import sys, torch
torch.set_num_threads(2)
junk = [torch.ones(4099 * k + 17) for k in range(int(sys.argv[1]))]
del junk
from analog_ep.config import load_config
from analog_ep.run.loop import build, make_twins
cfg = load_config("rram_512", ["train.twins=[analog, digital]"])
corpus, model = build(cfg)
twins = make_twins(cfg, model)
generator = torch.Generator().manual_seed(0)
for step in (1, 2):
    x, y = corpus.batch("train", cfg.train.batch_size, generator)
    for twin in twins.values():
        twin.step(x, y, step)
torch.save({name: twin.state_dict()["optimizer"] | {"model": twin.model.state_dict()}
            for name, twin in twins.items()}, sys.argv[2])
"""


def test_a_step_is_bit_identical_across_processes_on_two_threads(tmp_path):
    """Sums that torch splits over threads (repeated tokens' gradients, above all) must not depend on
    how a process's memory happens to be laid out: a resumed run is a new process, and a last-bit
    difference in a momentum near zero flips Lion's sign and the pulse it sends."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    saved = []
    for allocations in (0, 7):
        path = tmp_path / f"after{allocations}.pt"
        subprocess.run([sys.executable, "-c", _TWO_THREADS, str(allocations), str(path)], check=True, env=env,
                       cwd=ROOT)
        saved.append(tensors(torch.load(path, weights_only=False)))
    differing = [key for key, value in saved[0].items()
                 if not (torch.equal(value, saved[1][key]) if isinstance(value, torch.Tensor) else value == saved[1][key])]
    print(f"\n{len(saved[0])} entries after two steps, {len(differing)} differ: {differing[:5]}")
    assert differing == []


def test_resume_when_run_h5_is_a_checkpoint_ahead_of_the_state(reference, tmp_path):
    """A kill between the two writes of a checkpoint leaves run.h5 (curves, ledger) one step ahead of
    state.pt: the resume cuts run.h5 back to the state and ends bit-identical."""
    chip, behind, ahead = "rram_512", tmp_path / "behind", tmp_path / "ahead"
    rc, _ = run_chip(chip, behind, "--stop-after", "2")
    assert rc == 130
    shutil.copytree(behind, ahead)
    rc, _, err = call(["run", "--resume", "--out", str(ahead), "--stop-after", "3", "--quiet"])
    assert rc == 130, err
    shutil.copy(ahead / "run.h5", behind / "run.h5")  # run.h5 of step 3 beside the state of step 2
    with h5py.File(behind / "run.h5") as f:
        assert f.attrs["steps_done"] == 3 and torch.load(behind / "state.pt", weights_only=False)["step"] == 2
    rc, _, err = call(["run", "--resume", "--out", str(behind), "--quiet"])
    assert rc == 0, err
    assert differences(reference(chip), behind) == []


def test_sigint_finishes_the_step_saves_exits_130_and_resumes(reference, tmp_path):
    chip = "ecram_256"
    out = tmp_path / "interrupted"
    proc = _start(chip, out)
    _wait_for_step(out, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=600)
    last = stderr.strip().splitlines()[-1]
    with h5py.File(out / "run.h5") as f:
        done, status = int(f.attrs["steps_done"]), f.attrs["status"]
    print(f"\nSIGINT: rc {proc.returncode}, last line {last!r}, run.h5 {status} at step {done}")
    assert proc.returncode == 130 and status == "interrupted" and 1 <= done < STEPS
    assert last == f"analog-ep: status interrupted: SIGINT after step {done}: resume with --resume"
    assert read_status(out) == ("interrupted", f"SIGINT after step {done}: resume with --resume")
    assert "Traceback" not in stderr
    rc, _, err = call(["run", "--resume", "--out", str(out), "--quiet"])
    assert rc == 0, err
    assert differences(reference(chip), out) == []


def test_evaluating_more_often_leaves_training_bit_identical(tmp_path):
    chip = str(ROOT / "chips" / "rram_512.yaml")  # noisy reads, noisy circuit, cycle noise: all must stay put
    runs = {}
    for every in (1, 3):
        out = tmp_path / f"every{every}"
        rc, _, err = call(["run", chip, "--steps", "3", *tiny(chip), "--set", f"train.eval_every={every}", "--out", str(out)])
        assert rc == 0, err
        runs[every] = out
    a, b = h5_contents(runs[1] / "run.h5"), h5_contents(runs[3] / "run.h5")
    training = [k for k in a if k.startswith("twins/") and "/val/" not in k and "@" not in k] + ["pulses/chunks"]
    for key in training:
        assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), key
    sa = torch.load(runs[1] / "state.pt", weights_only=False)["twins"]
    sb = torch.load(runs[3] / "state.pt", weights_only=False)["twins"]
    for key, x in tensors(sa).items():
        y = tensors(sb)[key]
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, key
    print(f"\nval steps {list(a['twins/analog/val/step'])} vs {list(b['twins/analog/val/step'])}; "
          f"{len(training)} training series identical")
    assert list(a["twins/analog/val/step"]) == [0, 1, 2, 3] and list(b["twins/analog/val/step"]) == [0, 3]
    assert a["twins/analog/val/loss"][[0, 3]].tolist() == b["twins/analog/val/loss"].tolist()


UNSTABLE = ["--set", "model.width=16", "--set", "data.context=8", "--set", "train.batch_size=4",
            "--set", "train.eval_batches=1", "--set", "relax.steps=10",
            "--set", "train.eval_every=5", "--quiet"]


def test_a_diverging_reference_ends_the_run_diverged_exit_3(tmp_path):
    out = tmp_path / "diverged"
    rc, stdout, stderr = call(["run", "--steps", "12", *UNSTABLE, "--set", "optim.lr=5", "--set",
                               "stabilizers.diverge_patience=3", "--set", "train.twins=[digital]", "--out", str(out)])
    last = stderr.strip().splitlines()[-1]
    print(f"\nrc {rc}: {last}")
    assert rc == 3 and json.loads(stdout)["status"] == "diverged"
    assert last.startswith("analog-ep: status diverged: digital twin: step ")
    assert "x initial" in last and "for 3 steps" in last
    with h5py.File(out / "run.h5") as f:
        assert f.attrs["status"] == "diverged" and f.attrs["status_reason"] == last.split("diverged: ", 1)[1]
        twin = f["twins/digital"]
        stopped = int(twin["train/step"][-1])
        assert twin.attrs["status"] == "diverged" and stopped < 12 and f.attrs["steps_done"] == stopped
        best_step, best_loss = int(twin.attrs["best_step"]), float(twin.attrs["best_val_loss"])
        val = dict(zip(twin["val/step"][:].tolist(), twin["val/loss"][:].tolist()))
    assert val[best_step] == best_loss == min(val.values())
    report = json.loads((out / "diagnosis_digital.json").read_text())
    print(f"diagnosis: {report['diagnosis']}")
    assert report["step"] == stopped and report["best_step"] == best_step
    assert report["at_best"]["eig_re"][0] < 0 and report["at_best"]["residual"] < 0.1  # the initial block is stable
    lead = report["at_divergence"]["eig_re"][0]
    expected = ("real eigenvalue crossed", "complex pair crossed") if lead > 0 else ("fixed point stable",)
    assert report["diagnosis"].startswith(expected) and f"Re mu {report['at_best']['eig_re'][0]:+.3g} at best step" \
        in report["diagnosis"]
    best = torch.load(out / "best.pt", weights_only=False)
    assert best["digital"]["step"] == best_step and best["digital"]["val_loss"] == best_loss
    assert read_status(out) == ("diverged", last.split("diverged: ", 1)[1])


def test_an_analog_twin_diverging_alone_is_a_result(tmp_path):
    out = tmp_path / "analog_diverged"
    # One pulse moves a weight by half the devices' range: the chip scrambles its weights.
    rc, stdout, stderr = call(["run", "--steps", "8", *UNSTABLE, "--set", "chip.device.overrides.dw_min=0.5",
                               "--set", "stabilizers.diverge_loss_factor=1.5", "--set", "stabilizers.diverge_patience=3",
                               "--out", str(out)])
    summary = json.loads(stdout)
    last = stderr.strip().splitlines()[-1]
    print(f"\nrc {rc}: {last}")
    assert rc == 0 and summary["status"] == "completed"
    assert summary["twins"] == {"analog": "diverged", "digital": "completed"}
    assert last.startswith("analog-ep: status completed: analog twin diverged: step ")
    with h5py.File(out / "run.h5") as f:
        assert f.attrs["status"] == "completed" and f.attrs["steps_done"] == 8
        assert f["twins/analog"].attrs["status"] == "diverged" and f["twins/digital"].attrs["status"] == "completed"
        # the analog twin stopped where it diverged (step 6 since the circuit's nudges settle T2, issue 11)
        assert len(f["twins/digital/train/loss"]) == 8 > len(f["twins/analog/train/loss"])
    assert (out / "diagnosis_analog.json").is_file() and not (out / "diagnosis_digital.json").exists()
    assert set(torch.load(out / "best.pt", weights_only=False)) == {"analog", "digital"}


def test_an_unexpected_error_ends_the_run_failed_exit_1_and_the_run_resumes(tmp_path, monkeypatch):
    from analog_ep.train.twin import DigitalTwin

    real_step = DigitalTwin.step

    def failing_step(self, x, y, step):
        if step == 3:
            raise RuntimeError("boom at step 3")
        return real_step(self, x, y, step)

    monkeypatch.setattr(DigitalTwin, "step", failing_step)
    out = tmp_path / "failed"
    argv = ["run", "--steps", "5", *UNSTABLE, "--set", "train.twins=[digital]", "--set", "train.checkpoint_every=1",
            "--out", str(out)]
    rc, stdout, stderr = call(argv)
    lines = stderr.strip().splitlines()
    print(f"\nrc {rc}: {lines[-1]}")
    assert rc == 1 and stdout == "" and lines[-1] == "analog-ep: status failed: RuntimeError: boom at step 3"
    assert "Traceback" in stderr  # a bug keeps its traceback, printed before the status line
    assert read_status(out) == ("failed", "RuntimeError: boom at step 3")
    assert torch.load(out / "state.pt", weights_only=False)["step"] == 2  # the last whole step
    monkeypatch.setattr(DigitalTwin, "step", real_step)
    rc, _, err = call(["run", "--resume", "--out", str(out), "--quiet"])
    assert rc == 0, err
    with h5py.File(out / "run.h5") as f:
        assert list(f["twins/digital/train/step"]) == [1, 2, 3, 4, 5] and f.attrs["status"] == "completed"
