"""`analog-ep export` and `analog-ep replay`: device-programming schedules that reproduce the chip."""
import contextlib
import io
import json
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from analog_ep.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "3", "--set", "train.eval_every=3", "--set", "train.batch_size=2", "--set", "model.width=8",
        "--set", "model.heads=2", "--set", "data.context=4", "--set", "train.eval_batches=1",
        "--set", "circuit.settle.time=5e-9", "--set", "circuit.settle.nudge_time=5e-9", "--set", "relax.steps=5",
        "--set", "ep.steps=5", "--quiet"]
NO_CYCLE_NOISE = ["--set", "chip.device.overrides.dw_min_std=0"]


def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def trained(tmp_path_factory, name: str, chip: str | None, *sets) -> Path:
    out = tmp_path_factory.mktemp("schedule") / name
    code, _, err = cli("run", *([str(ROOT / "chips" / f"{chip}.yaml")] if chip else []), *TINY, *sets, "--out", out)
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def rram(tmp_path_factory):
    """ReRAM with its device-to-device variation (preset: 30% step spread), no cycle noise."""
    run = trained(tmp_path_factory, "rram", "rram_512", *NO_CYCLE_NOISE)
    code, out, err = cli("export", run)
    assert code == 0, err
    return run, run / "schedule.h5", out


@pytest.fixture(scope="module")
def pcm(tmp_path_factory):
    """Differential PCM pairs, programmed by program-and-verify pulses, no cycle noise."""
    run = trained(tmp_path_factory, "pcm", "pcm_256", *NO_CYCLE_NOISE, "--set", "chip.program=verify")
    code, _, err = cli("export", run)
    assert code == 0, err
    return run, run / "schedule.h5"


def replay(*args) -> dict:
    code, out, err = cli("replay", *args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("which", ["rram", "pcm"])
def test_export_then_replay_is_exact(which, rram, pcm):
    run, schedule = (rram if which == "rram" else pcm)[:2]
    report = replay(schedule)
    with h5py.File(schedule, "r") as f:
        total = int(f["summary"].attrs["total_pulses"])
        assert f.attrs["cycle_noise"] == False  # noqa: E712 (numpy bool)
        dtod = json.loads(f.attrs["device_parameters"])["dw_min_dtod"]
    assert dtod > 0  # device-to-device variation is on, and rebuilt from the chip seed
    assert report["exact"] and report["max_abs_weight_error"] == 0 and report["max_abs_conductance_error"] == 0
    assert report["pulses_applied"] == report["pulses_in_schedule"] == total > 0
    assert not report["cycle_noise"] and "error_distribution" not in report


def test_replay_on_another_chip_instance_differs(rram, tmp_path):
    """The same pulses on another chip seed (another device-to-device draw) miss the end state."""
    _, schedule, _ = rram
    other = tmp_path / "other.yaml"
    text = (ROOT / "chips" / "rram_512.yaml").read_text().replace("seed: 0 ", "seed: 1 ")
    other.write_text(text.replace("dw_min_std: 0.3", "dw_min_std: 0.0"))
    assert "seed: 1 " in other.read_text()
    report = replay(schedule, "--chip", other)
    assert report["chip_seed"] == 1 and not report["exact"]
    assert report["max_abs_weight_error"] > 1e-4
    assert report["error_distribution"]["expected_rms_pulse_steps"] == 0.0  # no noise: all of it is the draw


def _held_weights(array_state: dict, shape: tuple[int, int], run) -> np.ndarray:
    """The visible weights (tile units, (in, out)) the run's state holds for one array, assembled
    from its tiles' saved aihwkit weights ((out, in) blocks; a pair's G+ - G-)."""
    chip = yaml.safe_load((run / "config.yaml").read_text())["chip"]
    out = np.zeros(shape, np.float32)
    for (r, c), tile in array_state["tiles"].items():
        block = tile["weights"].t().numpy()
        r0, c0 = r * chip["tile_rows"], c * chip["tile_cols"]
        out[r0:r0 + block.shape[0], c0:c0 + block.shape[1]] = block
    return out


def test_schedule_holds_chip_programming_pulses_and_end_state(pcm):
    run, schedule = pcm
    state = torch.load(run / "state.pt", weights_only=False)["twins"]["analog"]
    with h5py.File(schedule, "r") as f:
        assert f.attrs["format"] == "analog-ep device-programming schedule" and f.attrs["format_version"] == 1
        assert f.attrs["devices_per_cell"] == 2 and f.attrs["differential"] and f.attrs["programming"] == "verify"
        assert "G_plus" in f.attrs["description"]
        ledger_total, program_total = 0, 0
        for name, g in f["arrays"].items():
            shape = tuple(g.attrs["shape"])
            final, target = g["final_conductance"][()], g["target_weight"][()]
            assert final.shape == (2, *shape) and g["programmed_conductance"].shape == (2, *shape)
            assert (final >= 0).all() and (final[0] > 0).any() and (final[1] > 0).any()  # both of each pair
            # the pair holds the weight the run ended with
            np.testing.assert_allclose(g.attrs["scale"] * (final[0] - final[1]),
                                       g.attrs["scale"] * _held_weights(state["chip"]["arrays"][name], shape, run),
                                       rtol=1e-6, atol=1e-7)
            np.testing.assert_array_equal(g["final_weight"][()], (g.attrs["scale"] * (final[0] - final[1]))
                                          .astype(np.float32))
            np.testing.assert_allclose(g["target_conductance"][()] * g.attrs["scale"], target, rtol=1e-6)
            pulses = g["pulses"][()]
            assert pulses.shape == (2, *shape) and (g["program_pulses"][()] <= pulses.sum(axis=0)).all()
            ledger_total += int(pulses.sum())
            program_total += int(g["program_pulses"][()].sum())
            assert g["construction_seed"].shape == tuple(g.attrs["grid"])
        s = f["summary"].attrs
        assert s["total_pulses"] == ledger_total and s["program_pulses"] == program_total > 0
        assert s["train_pulses"] == ledger_total - program_total > 0
        worst = f["arrays"][s["max_pulses_array"]]["pulses"][()]  # + pulses hit G_plus, - pulses G_minus
        assert s["max_pulses_per_device"] == worst.max() == worst[(slice(None), *s["max_pulses_at"])].max()
        n_index = len(f["pulses/index"])
    with h5py.File(run / "run.h5", "r") as f:
        assert len(f["pulses/index"]) == n_index


def test_csv_is_one_line_per_pulse(rram, tmp_path):
    run, schedule, _ = rram
    path = tmp_path / "pulses.csv"
    code, out, err = cli("export", run, "--format", "csv", "--out", path)
    assert code == 0, err
    lines = path.read_text().splitlines()
    with h5py.File(schedule, "r") as f:
        assert len(lines) - 1 == f["summary"].attrs["total_pulses"]
        up_down = {name: g["pulses"][()] for name, g in f["arrays"].items()}
    assert lines[0] == "step,phase,array,tile_row,tile_col,row,col,sign"
    signs: dict[str, int] = {}
    for line in lines[1:]:
        step, phase, array, *_, sign = line.split(",")
        signs[array] = signs.get(array, 0) + int(sign)
    assert signs == {n: int(c[0].sum() - c[1].sum()) for n, c in up_down.items()}


def test_readme_decoder_runs_with_h5py_and_numpy_alone(rram, tmp_path, monkeypatch, capsys):
    _, schedule, _ = rram
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("#### Decoding a schedule without analog-ep"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 16
    assert not re.search(r"^\s*(import|from)\s+analog_ep", code, re.M)
    (tmp_path / "runs" / "rram_exact").mkdir(parents=True)
    os.link(schedule, tmp_path / "runs" / "rram_exact" / "schedule.h5")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README decoder", "exec"), {})
    with h5py.File(schedule, "r") as f:
        total = int(f["summary"].attrs["total_pulses"])
        worst = int(f["summary"].attrs["max_pulses_per_device"])
    assert capsys.readouterr().out == f"{total} pulses decoded, {total} in the summary; most on one device: {worst}\n"


def test_noisy_replay_error_is_the_cycle_noise_random_walk(tmp_path_factory):
    """ConstantStep cells (the default chip) with 30% cycle-to-cycle step noise: two draws of the
    same pulses differ per device by dw_min_std x sqrt(2 n) steps, as the README says."""
    run = trained(tmp_path_factory, "noisy", None)
    code, _, err = cli("export", run)
    assert code == 0, err
    report = replay(run / "schedule.h5")
    assert report["cycle_noise"] and not report["exact"]
    dist = report["error_distribution"]
    ratio = dist["pulse_steps"]["rms"] / dist["expected_rms_pulse_steps"]
    print(f"\nnoisy replay: rms {dist['pulse_steps']['rms']:.3f} steps, predicted "
          f"{dist['expected_rms_pulse_steps']:.3f} (ratio {ratio:.3f})")
    assert 0.9 < ratio < 1.1


def test_export_of_ideal_writes_is_refused(tmp_path_factory):
    run = trained(tmp_path_factory, "ideal", "ideal")
    code, out, err = cli("export", run)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert "chip.write='ideal'" in lines[0] and "no schedule to export" in lines[0]
    assert not (run / "schedule.h5").exists()


@pytest.mark.parametrize("case", ["exists", "not a run", "bad format", "replay a run.h5", "replay nothing"])
def test_bad_export_and_replay_input_is_one_line(case, rram, tmp_path):
    run, schedule, _ = rram
    before = schedule.read_bytes()
    command, needle = {
        "exists": (["export", run], "already exists"),
        "not a run": (["export", tmp_path], "not a run directory"),
        "bad format": (["export", run, "--format", "h5", "--out", tmp_path / "missing" / "s.h5"], "does not exist"),
        "replay a run.h5": (["replay", run / "run.h5"], "not a device-programming schedule"),
        "replay nothing": (["replay", tmp_path / "none.h5"], "no such file"),
    }[case]
    code, out, err = cli(*command)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and needle in err, err
    assert schedule.read_bytes() == before
