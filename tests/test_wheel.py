"""The wheel ships devices/, circuits/ and chips/: installed without the source tree it lists the
library and trains a shipped chip.

Built once per session from a copy of the project's files (so the checkout gets no build/ or
egg-info), installed with `pip install --no-deps --target` into a temporary folder (never into the
environment running the tests), and run from a folder outside the repository with only that
folder on PYTHONPATH; torch, aihwkit and the other dependencies come from the running environment.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "analog_ep", "devices", "circuits", "chips",
           "data")
LIBRARY = ("devices", "circuits", "chips")
#: data/: the shipped measurements (`analog-ep fit-device NAME` from any folder) and their README.
DATA = ("*.csv", "README.md")


@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    """(the install folder, the wheel) of a wheel built from this checkout."""
    base = tmp_path_factory.mktemp("wheel")
    src, dist, target = base / "src", base / "dist", base / "site"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "library"))
        else:
            shutil.copy2(path, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    # no build isolation: the running environment's setuptools builds it (nothing is downloaded)
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)], check=True,
                   capture_output=True, timeout=600)
    wheel = next(dist.glob("analog_ep-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, timeout=600)
    return target, wheel


def run(installed, *args, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """The installed `analog-ep` script, from `cwd`, with only the install on PYTHONPATH."""
    target, _ = installed
    env = {**os.environ, "PYTHONPATH": str(target)}
    return subprocess.run([str(target / "bin" / "analog-ep"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_wheel_holds_every_library_file(installed):
    _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in LIBRARY:
        for path in (ROOT / kind).glob("*.yaml"):
            assert f"analog_ep/library/{kind}/{path.name}" in names, path
    shipped = [path for pattern in DATA for path in (ROOT / "data").glob(pattern)]
    assert len(shipped) >= 2
    for path in shipped:
        assert f"analog_ep/library/data/{path.name}" in names, path


def test_installed_wheel_lists_its_library_outside_the_repository(installed, tmp_path):
    target, _ = installed
    where = run(installed, "list", "chips", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert {line.split()[0] for line in where.stdout.splitlines()} == {p.stem for p in (ROOT / "chips").glob("*.yaml")}
    probe = subprocess.run([sys.executable, "-c", "import analog_ep.config as c; print(c.__file__); "
                            "print(c.shipped_root())"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)},
                           capture_output=True, text=True, timeout=120)
    module, root = probe.stdout.split()
    assert Path(module).is_relative_to(target) and Path(root) == target / "analog_ep" / "library"
    devices = run(installed, "list", "devices", cwd=tmp_path)
    assert "reram_sb" in devices.stdout and "aihwkit preset" in devices.stdout


@pytest.mark.parametrize("given", ["name", "path"])
def test_installed_wheel_runs_the_ideal_chip(installed, tmp_path, given):
    """`analog-ep run ideal --steps 2`, the chip named from the shipped library (into the default
    out, runs/ideal under the working folder) or given as the installed file's path. The block is
    shrunk with --set (the full-size float64 job takes minutes: the command, not the model, is
    under test)."""
    target, _ = installed
    chip = "ideal" if given == "name" else str(target / "analog_ep" / "library" / "chips" / "ideal.yaml")
    out = tmp_path / "runs" / "ideal"  # the default out of `run ideal`
    where = ["--out", str(tmp_path / "run")] if given == "path" else []
    short = ["--set", "train.batch_size=4", "--set", "model.width=16", "--set", "data.context=8",
             "--set", "train.eval_every=2", "--set", "train.eval_batches=1"]
    done = run(installed, "run", chip, "--steps", "2", *short, *where, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and set(summary["val_loss"]) == {"analog", "digital"}
    assert summary["status"] == "completed" and summary["twins"] == {"analog": "completed", "digital": "completed"}
    # the ideal chip's analog twin tracks the digital one (chips/ideal.yaml: to ~1e-5)
    assert abs(summary["val_loss"]["analog"] - summary["val_loss"]["digital"]) < 1e-4
    written = out if given == "name" else tmp_path / "run"
    assert (written / "run.h5").is_file() and (written / "config.yaml").is_file()
    assert (out.exists()) == (given == "name")
