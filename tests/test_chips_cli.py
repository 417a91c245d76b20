"""`analog-ep run` end to end on every shipped chip (shortened), and the ideal chip's twins agree."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from analog_ep.cli.main import main
from analog_ep.config import library

ROOT = Path(__file__).resolve().parents[1]
CHIPS = sorted(library("chip"))
SHORT = ["--steps", "2", "--set", "train.eval_every=2", "--set", "train.batch_size=4",
         "--set", "model.width=16", "--set", "data.context=8", "--set", "train.eval_batches=1"]
#: The MLP chips' short run: a narrow hidden layer (the digits' held-out split is evaluated whole).
SHORT_MLP = ["--steps", "2", "--set", "train.eval_every=2", "--set", "train.batch_size=4",
             "--set", "model.hidden=[16]"]


def short(chip: str) -> list[str]:
    from analog_ep.config import load_config

    return SHORT_MLP if load_config(chip).model.kind == "mlp" else SHORT
#: What a run may print on stderr: tqdm's progress bar (redrawn after carriage returns) and, last,
#: the status line `analog-ep: status <status>[: reason]`.
PROGRESS = re.compile(r"^train:\s+\d+%\|[^|]*\|\s*\d+/\d+ \[[^\]]*\]$")
STATUS = re.compile(r"^analog-ep: status (completed|diverged|interrupted|failed)(: .+)?$")


def unexpected_stderr(text: str) -> list[str]:
    """The stderr lines of a run that are neither the progress bar nor the final status line."""
    lines = [part.strip() for part in re.split(r"[\r\n]", text) if part.strip()]
    if lines and STATUS.match(lines[-1]):
        lines.pop()
    return [line for line in lines if not PROGRESS.match(line)]


def test_all_five_chips_ship():
    assert {"rram_512", "pcm_256", "ecram_256", "optical_128", "ideal"} <= set(CHIPS)


def test_unexpected_stderr_keeps_anything_but_the_bar_and_the_status():
    bar = "train:   0%|          | 0/2 [00:00<?, ?step/s]\rtrain: 100%|##########| 2/2 [00:03<00:00, 1.5s/step, a=1]\n"
    assert unexpected_stderr(bar + "analog-ep: status completed\n") == []
    warning = "x.py:1: UserWarning: Detected call of `lr_scheduler.step()`\n  self.scheduler.step()\n"
    assert unexpected_stderr(bar + warning) == [warning.splitlines()[0], "self.scheduler.step()"]
    assert unexpected_stderr("analog-ep: status completed\n" + bar) == ["analog-ep: status completed"]  # not last
    assert unexpected_stderr("analog-ep: status completed\nanalog-ep: status completed\n") == [
        "analog-ep: status completed"]


@pytest.mark.parametrize("chip", CHIPS)
def test_run_every_shipped_chip_by_name_with_a_clean_stderr(chip, tmp_path):
    """The real command, from a folder outside the repository, with its progress bar: stderr holds
    the bar and the final status line and nothing else (no third-party warnings)."""
    script = Path(sys.executable).with_name("analog-ep")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "analog_ep.cli.main"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, "run", chip, *short(chip)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert unexpected_stderr(proc.stderr) == [], proc.stderr
    assert "train:" in proc.stderr  # the bar is there (not --quiet)
    out = tmp_path / "runs" / chip  # the default --out
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n{chip}: {summary['val_loss']} in {summary['wall_s']:.1f} s")
    with h5py.File(out / "run.h5", "r") as f:
        assert "analog" in f["twins"] and "digital" in f["twins"]
        a = f["twins/analog"]
        assert len(a["train/loss"]) == 2 and np.isfinite(a["train/loss"][:]).all()
        assert (a["settle_time"][:] > 0).all()
        if "mlp" in chip:  # classification: accuracy per step and per evaluation, for every twin
            for twin in ("analog", "digital"):
                g = f[f"twins/{twin}"]
                assert len(g["train/accuracy"]) == 2 and len(g["val/accuracy"]) == 2
                assert ((g["val/accuracy"][:] >= 0) & (g["val/accuracy"][:] <= 1)).all()
            assert f.attrs["version"] == 3
        # the ideal chip's circuit (circuits/euler.yaml) costs nothing; every other chip pays for reads,
        # sampling and writes; latency adds sampling and write rounds to the settles
        if chip in ("ideal", "ideal_mlp_digits"):
            assert (a["energy"][:] == 0).all()
        else:
            assert (a["energy"][:] > 0).all() and (a["latency_s"][:] > a["settle_time"][:]).all()
    assert (out / "curves.png").is_file() and (out / "state.pt").is_file()


@pytest.mark.parametrize("chip", CHIPS)
def test_validate_every_shipped_chip(chip, capsys):
    assert main(["validate", chip]) == 0
    assert capsys.readouterr().err.startswith(f"{chip}: ok (")


def test_list(capsys):
    for kind, expect in (("devices", "reram_sb"), ("circuits", "rc_crossbar"), ("chips", "rram_512")):
        assert main(["list", kind]) == 0
        assert expect in capsys.readouterr().out


def test_ideal_chip_twins_agree_to_rounding(tmp_path, capsys):
    out = tmp_path / "ideal"
    rc = main(["run", str(ROOT / "chips" / "ideal.yaml"), "--steps", "3", "--set", "train.eval_every=3",
               "--set", "train.batch_size=4", "--set", "model.width=16", "--set", "data.context=8",
               "--set", "train.eval_batches=1", "--quiet", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    with h5py.File(out / "run.h5", "r") as f:
        a, d = f["twins/analog/train/loss"][:], f["twins/digital/train/loss"][:]
        va, vd = f["twins/analog/val/loss"][:], f["twins/digital/val/loss"][:]
    diff = float(np.abs(a - d).max())
    print(f"\nideal chip: train losses analog {a} digital {d}, max difference {diff:.2e}; val {va} vs {vd}")
    # float64 twins; the tiles store conductances in float32, so weights agree to ~1e-7 relative
    assert diff < 1e-5 and float(np.abs(va - vd).max()) < 1e-5


BROKEN = {
    "unknown device": ("uses: {device: reram_bs, circuit: rc_crossbar}\n", "uses.device", "did you mean 'reram_sb'"),
    "unknown section key": ("uses: {device: ideal, circuit: euler}\nmodel: {widht: 32}\n", "model.widht",
                            "did you mean 'width'"),
    "wrong type": ("uses: {device: ideal, circuit: euler}\ntrain: {steps: many}\n", "train.steps",
                   "expected an integer"),
    "out of range": ("uses: {device: ideal, circuit: euler}\nchip: {tile_rows: 0}\n", "chip.tile_rows", "must be"),
    "bad uses key": ("uses: {devices: ideal}\n", "uses.devices", "did you mean 'device'"),
    "bad yaml": ("uses: {device: ideal\n", "yaml", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_chip_files_give_one_line_and_exit_2(case, tmp_path):
    text, key, phrase = BROKEN[case]
    chips = tmp_path / "chips"
    chips.mkdir()
    for lib in ("devices", "circuits"):
        (tmp_path / lib).symlink_to(ROOT / lib)
    bad = chips / "bad.yaml"
    bad.write_text(text)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "analog_ep.cli.main", "run", str(bad), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    print(f"\n{case}: {proc.stderr.strip()}")
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr
    assert "bad.yaml" in lines[0] and key in lines[0] and phrase in lines[0]
    assert not out.exists()  # nothing written for a rejected configuration
