"""`analog-ep sweep` and `analog-ep compare`: grids of ordinary runs, resumable, local and on Ray."""
import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from analog_ep.cli.main import main
from analog_ep.sweep import LocalBackend, Sweep, SweepDefinition
from analog_ep.sweep.table import read_sweep_h5

ROOT = Path(__file__).resolve().parents[1]
CHIP = str(ROOT / "chips" / "rram_512.yaml")
# A tiny job (seconds per point). Cycle-to-cycle noise off: aihwkit draws it from an unseeded
# generator, and the Ray test compares its results with the local backend's bit for bit.
TINY_SETS = ["train.steps=3", "train.eval_every=1", "train.batch_size=2", "model.width=8", "model.heads=2",
             "data.context=4", "train.eval_batches=1", "circuit.settle.time=5e-9", "circuit.settle.nudge_time=5e-9",
             "relax.steps=5", "ep.steps=5",
             "chip.device.overrides.dw_min_std=0"]
TINY = [arg for text in TINY_SETS for arg in ("--set", text)]
GRID = ["--grid", "chip.periphery.adc_bits=4,8", "--grid", "chip.periphery.read_noise=0,0.05", "--seeds", "2"]
SEED_KEYS = ("model.seed", "data.seed", "train.seed", "chip.seed")


def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # a malformed command line, refused by argparse
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def rows_by_point(path: Path) -> dict[str, dict]:
    return {row["point"]: row for row in read_sweep_h5(path)[1]}


def last_val(run_dir: Path, twin: str) -> float:
    with h5py.File(run_dir / "run.h5", "r") as f:
        return float(f[f"twins/{twin}/val/loss"][-1])


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "grid"
    code, stdout, stderr = cli("sweep", CHIP, "--out", out, *GRID, *TINY, "--workers", 2, "--quiet")
    assert code == 0, stderr + stdout
    return out, stdout


def test_local_sweep_2x2_two_seeds(local_sweep):
    out, stdout = local_sweep
    attrs, rows = read_sweep_h5(out / "sweep.h5")
    assert [r["status"] for r in rows] == ["completed"] * 8, [(r["point"], r["reason"]) for r in rows]
    assert [(r["chip.periphery.adc_bits"], r["chip.periphery.read_noise"], r["seed"]) for r in rows] == [
        (a, n, s) for a in (4, 8) for n in (0.0, 0.05) for s in (0, 1)]
    definition = yaml.safe_load(attrs["definition"])
    assert definition["grid"] == {"chip.periphery.adc_bits": [4, 8], "chip.periphery.read_noise": [0, 0.05]}
    assert definition["seeds"] == 2 and set(definition["seed_keys"]) == set(SEED_KEYS)
    assert attrs["torch_version"] and attrs["aihwkit_version"] and attrs["analog_ep_version"]
    for row in rows:
        run_dir = out / "points" / row["point"]
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        # an ordinary run directory, with the point's values and every seed offset by s
        assert cfg["chip"]["periphery"]["adc_bits"] == row["chip.periphery.adc_bits"]
        assert cfg["chip"]["periphery"]["read_noise"] == row["chip.periphery.read_noise"]
        assert [cfg[k.split(".")[0]]["seed"] for k in SEED_KEYS] == [row["seed"]] * 4
        assert cfg["train"]["steps"] == 3 and row["steps_done"] == 3
        analog, digital = last_val(run_dir, "analog"), last_val(run_dir, "digital")
        assert row["final_val_loss_analog"] == analog and row["final_val_loss_digital"] == digital
        assert row["gap"] == analog - digital
        assert row["best_val_loss_analog"] <= analog and row["pulses"] > 0
        assert row["energy_per_step_j"] > 0 and row["latency_per_step_s"] > 0 and row["wall_s"] > 0
        assert row["unigram_entropy"] == pytest.approx(3.134, abs=1e-3)
        assert row["learns_nothing"] == (analog >= row["unigram_entropy"])
        for f in ("run.h5", "state.pt", "curves.png"):
            assert (run_dir / f).is_file()
    # The digital twin does not see the periphery: equal across the grid for one seed, and the
    # seeds differ (model initialisation, data order).
    for s in (0, 1):
        digital = {r["final_val_loss_digital"] for r in rows if r["seed"] == s}
        assert len(digital) == 1, digital
    assert rows[0]["final_val_loss_digital"] != rows[1]["final_val_loss_digital"]
    import matplotlib.image

    assert matplotlib.image.imread(out / "tolerance.png").shape[0] > 200
    assert "8 points (8 completed), 8 run now" in stdout


def test_rerun_resumes_and_a_changed_definition_is_refused(local_sweep):
    out, _ = local_sweep
    code, stdout, stderr = cli("sweep", CHIP, "--out", out, *GRID, *TINY, "--workers", 2, "--quiet")
    assert code == 0 and "8 points (8 completed), 0 run now" in stdout, stderr + stdout
    before = (out / "sweep.h5").read_bytes()
    mtimes = {p: (p / "run.h5").stat().st_mtime_ns for p in (out / "points").iterdir()}
    code, stdout, stderr = cli("sweep", CHIP, "--out", out, *GRID[:-1], "3", *TINY, "--quiet")
    assert code == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "holds a different sweep (seeds: stored 2, now 3)" in lines[0], stderr
    code, _, stderr = cli("sweep", CHIP, "--out", out, *GRID, *TINY, "--set", "optim.lr=0.01", "--quiet")
    assert code == 2 and "optim.lr: stored 0.001, now 0.01" in stderr, stderr
    assert (out / "sweep.h5").read_bytes() == before
    assert {p: (p / "run.h5").stat().st_mtime_ns for p in (out / "points").iterdir()} == mtimes


def test_same_sweep_on_a_local_ray_cluster(local_sweep, tmp_path):
    """A Ray cluster started here; the CLI connects to it by address, as to a remote one."""
    import time

    import ray

    out, _ = local_sweep
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    started = time.perf_counter() - t0
    try:
        address = ray.get_runtime_context().gcs_address
        proc = subprocess.run([sys.executable, "-m", "analog_ep.cli.main", "sweep", CHIP, "--out",
                               str(tmp_path / "ray"), *GRID, *TINY, "--backend", "ray", "--address", address,
                               "--quiet"], capture_output=True, text=True, timeout=1500)
    finally:
        ray.shutdown()
    print(f"\nlocal Ray instance started in {started:.1f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    local, remote = rows_by_point(out / "sweep.h5"), rows_by_point(tmp_path / "ray" / "sweep.h5")
    assert set(local) == set(remote)
    attrs = read_sweep_h5(tmp_path / "ray" / "sweep.h5")[0]
    assert attrs["backend"] == "ray" and attrs["definition"] == read_sweep_h5(out / "sweep.h5")[0]["definition"]
    same = ("status", "final_val_loss_analog", "final_val_loss_digital", "best_val_loss_analog", "gap", "pulses",
            "energy_per_step_j", "steps_done")
    for name, row in local.items():
        assert {k: remote[name][k] for k in same} == {k: row[k] for k in same}, name


def small_sweep(out: Path, inject: dict[str, str]) -> Sweep:
    """adc_bits 4 and 8, one seed, with faults injected into the points named (see sweep_faults)."""
    from sweep_faults import faulty_point

    definition = SweepDefinition.build(CHIP, TINY_SETS, ["chip.periphery.adc_bits=4,8"])
    (out.parent / "inject").mkdir(parents=True, exist_ok=True)
    for name, kind in inject.items():
        (out.parent / "inject" / name).write_text(kind)
    return Sweep(definition, out, LocalBackend(2, 1, faulty_point), progress=False)


FAIL, OK = "adc_bits=4,seed=0", "adc_bits=8,seed=0"


def test_a_failing_point_is_recorded_the_others_complete_and_a_rerun_finishes_only_it(tmp_path):
    out = tmp_path / "fails"
    report = small_sweep(out, {FAIL: "raise"}).run()
    assert report.statuses == {FAIL: "failed", OK: "completed"} and report.exit_code == 1
    rows = rows_by_point(out / "sweep.h5")
    assert rows[FAIL]["status"] == "failed" and rows[FAIL]["attempts"] == 1
    assert rows[FAIL]["reason"] == "RuntimeError: injected fault at step 2", rows[FAIL]["reason"]
    assert rows[OK]["status"] == "completed" and rows[OK]["steps_done"] == 3
    done = (out / "points" / OK / "run.h5").stat().st_mtime_ns

    report = small_sweep(out, {}).run()
    assert report.ran == [FAIL] and report.exit_code == 0
    rows = rows_by_point(out / "sweep.h5")
    assert rows[FAIL]["status"] == "completed" and rows[FAIL]["attempts"] == 2 and rows[FAIL]["reason"] == ""
    assert rows[FAIL]["steps_done"] == 3 and rows[OK]["attempts"] == 1
    assert (out / "points" / OK / "run.h5").stat().st_mtime_ns == done
    log = (out / "logs" / f"{FAIL}.log").read_text()
    assert log.count("== attempt") == 2 and "analog-ep run --resume" in log  # it left a step-1 checkpoint


def test_a_point_killed_mid_run_is_recorded_killed_and_rerun(tmp_path):
    out = tmp_path / "kills"
    report = small_sweep(out, {FAIL: "kill"}).run()
    assert report.statuses == {FAIL: "killed", OK: "completed"}
    rows = rows_by_point(out / "sweep.h5")
    assert rows[FAIL]["reason"] == "killed by SIGKILL after step 1", rows[FAIL]["reason"]
    assert rows[FAIL]["steps_done"] == 1 and rows[OK]["status"] == "completed"

    report = small_sweep(out, {}).run()
    assert report.ran == [FAIL] and report.statuses == {FAIL: "completed", OK: "completed"}
    rows = rows_by_point(out / "sweep.h5")
    assert rows[FAIL]["steps_done"] == 3 and rows[FAIL]["attempts"] == 2
    with h5py.File(out / "points" / FAIL / "run.h5", "r") as f:  # resumed: one curve, steps 1..3
        assert list(f["twins/analog/train/step"][()]) == [1, 2, 3]


# ---- compare ---------------------------------------------------------------------------------

def test_compare_two_runs(local_sweep, tmp_path):
    out, _ = local_sweep
    a, b = out / "points" / "adc_bits=4,read_noise=0,seed=0", out / "points" / "adc_bits=8,read_noise=0,seed=0"
    figure = tmp_path / "two.png"
    code, stdout, stderr = cli("compare", a, b, "--out", figure, "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["differs"] == ["chip.periphery.adc_bits"]
    assert [r["label"] for r in summary["runs"]] == ["adc_bits=4", "adc_bits=8"]
    for run, path in zip(summary["runs"], (a, b)):
        assert run["status"] == "completed"
        assert run["twins"]["analog"]["final_val_loss"] == last_val(path, "analog")
        assert run["twins"]["digital"]["final_val_loss"] == last_val(path, "digital")
        assert run["gap"] == last_val(path, "analog") - last_val(path, "digital")
        with h5py.File(path / "run.h5", "r") as f:
            assert run["pulses"] == int(f["twins/analog/pulses"][()].sum()) > 0
            assert run["twins"]["analog"]["best_val_loss"] == float(np.min(f["twins/analog/val/loss"][()]))
    assert figure.is_file() and summary["figure"] == str(figure)
    code, stdout, _ = cli("compare", a, b, "--out", tmp_path / "t.png")
    header, first, second = stdout.splitlines()[:3]
    assert header.split()[:4] == ["run", "status", "analog", "final"] and "energy/step" in header
    assert first.startswith("adc_bits=4") and "completed" in first and f"{last_val(a, 'analog'):.4f}" in first


def test_compare_a_sweep_directory(local_sweep, tmp_path):
    out, _ = local_sweep
    code, stdout, stderr = cli("compare", out, "--out", tmp_path / "sweep.png", "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    # the four seed fields move together: one label key; derived keys (schedule.total_steps) fold away
    assert summary["differs"] == ["chip.periphery.adc_bits", "chip.periphery.read_noise", "model.seed"]
    labels = sorted(r["label"] for r in summary["runs"])
    assert len(labels) == 8 and "adc_bits=8, read_noise=0.05, seed=1" in labels
    assert all(r["status"] == "completed" for r in summary["runs"])


@pytest.mark.parametrize("dirs, needle", [
    (["nowhere"], "no such directory"),
    ([str(ROOT / "chips")], "neither a run directory"),
])
def test_compare_bad_input_is_one_line(dirs, needle, tmp_path):
    code, stdout, stderr = cli("compare", *dirs, "--out", tmp_path / "x.png")
    assert code == 2 and stdout == "" and len(stderr.strip().splitlines()) == 1 and needle in stderr, stderr
    assert not (tmp_path / "x.png").exists()


# ---- bad input -------------------------------------------------------------------------------

BAD = {
    "no equals sign": (["--grid", "chip.periphery.adc_bits"], "--grid='chip.periphery.adc_bits': expected KEY=V1"),
    "empty value": (["--grid", "chip.periphery.adc_bits=4,,8"], "empty value"),
    "bad yaml value": (["--grid", "chip.periphery.adc_bits=4,[8"], "is not valid YAML"),
    "repeated value": (["--grid", "chip.periphery.adc_bits=4,4"], "repeats the value 4"),
    "key swept twice": (["--grid", "chip.periphery.adc_bits=4", "--grid", "chip.periphery.adc_bits=8"],
                        "swept twice"),
    "unknown key": (["--grid", "chip.periphery.adc_bit=4,8"],
                    "--grid: chip.periphery.adc_bit=[4, 8]: unknown key (chip.periphery has no 'adc_bit') "
                    "(did you mean 'adc_bits'?)"),
    "unknown section": (["--grid", "chip.periferal.adc_bits=4,8"], "--grid: chip.periferal.adc_bits=[4, 8]: unknown "
                        "key (chip has no 'periferal') (did you mean 'periphery'?)"),
    "a section": (["--grid", "chip.periphery=4"], "is a section, not a value"),
    "unknown device parameter": (["--grid", "chip.device.overrides.dw_min_sdt=0,1"], "did you mean 'dw_min_std'"),
    "out of range": (["--grid", "chip.periphery.adc_bits=8,1"],
                     "--grid point chip.periphery.adc_bits=1, seed 0: chip.periphery.adc_bits=1: must be"),
    "negative sigma": (["--grid", "chip.periphery.read_noise=0,-0.1"], "read_noise=-0.1: must be >= 0"),
    "wrong type": (["--grid", "model.width=16,wide"], "model.width='wide': expected an integer"),
    "no grid": ([], "nothing to sweep"),
    "zero seeds": (["--grid", "chip.periphery.adc_bits=4", "--seeds", "0"], "--seeds='0': must be >= 1"),
    "zero workers": (["--grid", "chip.periphery.adc_bits=4", "--workers", "0"], "--workers='0': must be >= 1"),
    "address without ray": (["--grid", "chip.periphery.adc_bits=4", "--address", "auto"], "only used with"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sweep_input_is_one_line_and_starts_nothing(case, tmp_path):
    args, needle = BAD[case]
    out = tmp_path / "never"
    code, stdout, stderr = cli("sweep", CHIP, "--out", out, *args, "--quiet")
    lines = stderr.strip().splitlines()
    assert code == 2 and stdout == "" and len(lines) == 1, stderr
    assert lines[0].startswith("analog-ep: error: ") and needle in lines[0], lines[0]
    assert not out.exists()


GRID_FILES = {
    "not a list": ("chip.periphery.adc_bits: 4\n", "expected a list of values"),
    "empty list": ("chip.periphery.adc_bits: []\n", "no values to sweep"),
    "not a mapping": ("- 4\n- 8\n", "expected a mapping"),
    "yaml error": ("chip.periphery.adc_bits: [4, 8\n", "not valid YAML"),
    "also on the command line": ("chip.periphery.read_noise: [0, 0.1]\n", "also given by --grid"),
}


@pytest.mark.parametrize("case", sorted(GRID_FILES))
def test_bad_grid_file_is_one_line(case, tmp_path):
    text, needle = GRID_FILES[case]
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    out = tmp_path / "never"
    code, _, stderr = cli("sweep", CHIP, "--out", out, "--grid-file", grid, "--grid", "chip.periphery.read_noise=0",
                          "--quiet")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and needle in stderr, stderr
    assert not out.exists()


def test_grid_file_sweeps_like_grid_flags(tmp_path):
    flags = SweepDefinition.build(CHIP, TINY_SETS, ["chip.periphery.adc_bits=4,8", "train.twins=[analog, digital],"
                                                    "[digital]"], seeds=2)
    grid = tmp_path / "grid.yaml"
    grid.write_text("chip.periphery.adc_bits: [4, 8]\ntrain.twins: [[analog, digital], [digital]]\n")
    from_file = SweepDefinition.build(CHIP, TINY_SETS, [], str(grid), seeds=2)
    assert from_file.resolved() == flags.resolved() and from_file.difference(flags.to_yaml()) is None
    assert [p.name for p in flags.points] == [p.name for p in from_file.points]
    assert flags.points[1].name == "adc_bits=4,twins=_analog_digital,seed=1"
    cfg = flags.config(flags.points[3])
    assert cfg.train.twins == ("digital",) and cfg.chip.periphery.adc_bits == 4
    assert (cfg.model.seed, cfg.data.seed, cfg.train.seed, cfg.chip.seed) == (1, 1, 1, 1)


@pytest.mark.parametrize("setup, needle", [
    ("file", "is a file, not a directory"),
    ("foreign", "holds no sweep.h5"),
])
def test_sweep_out_that_is_not_a_sweep_is_refused(setup, needle, tmp_path):
    out = tmp_path / "out"
    if setup == "file":
        out.write_text("keep me")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    code, _, stderr = cli("sweep", CHIP, "--out", out, "--grid", "chip.periphery.adc_bits=4", *TINY, "--quiet")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and needle in stderr, stderr
    assert (out.read_text() if setup == "file" else (out / "notes.txt").read_text()) == "keep me"


def test_a_classifier_learns_nothing_at_chance_accuracy_not_by_its_loss():
    """For classification chips the tolerance map hatches a cell whose mean analog accuracy is at
    chance (exp(-H) of the class prior: 1/K balanced); a language model's cell, by its loss."""
    import math

    from analog_ep.results import learns_nothing
    from analog_ep.sweep.grid import SweepDefinition
    from analog_ep.sweep.plot import cells

    ln10 = math.log(10)
    assert not learns_nothing(2.4, 0.90, ln10)  # loss above ln 10 (overconfident), but it classifies
    assert learns_nothing(2.0, 0.10, ln10) and learns_nothing(2.0, 0.08, ln10)  # guessing
    assert learns_nothing(3.2, math.nan, 3.13) and not learns_nothing(3.0, math.nan, 3.13)  # text
    sweep = SweepDefinition.build("rram_mlp_digits", grid_args=["chip.periphery.adc_bits=4,8"], seeds=2)
    rows = []
    for point in sweep.points:
        bits = dict(point.values)["chip.periphery.adc_bits"]
        rows.append({"status": "completed", "gap": 0.1, "final_val_loss_analog": 2.5, "final_val_loss_digital": 2.4,
                     "final_val_accuracy_analog": 0.09 if bits == 4 else 0.85, "unigram_entropy": ln10})
    agg = cells(sweep, rows)
    assert agg[(0,)]["learns_nothing"] and not agg[(1,)]["learns_nothing"]
