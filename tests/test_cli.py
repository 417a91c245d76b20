"""The command line: a tiny `run`, `diagnose`, and one-line errors for every kind of bad input.

The CLI runs in-process (`analog_ep.cli.main.main`) except for one subprocess call that checks the
real exit code and that stderr carries no traceback.
"""
import contextlib
import copy
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from analog_ep.cli.main import main
from analog_ep.config import RunConfig, load_config
from analog_ep.data.text import CharCorpus

TINY = ["model.width=16", "data.context=8", "train.batch_size=4", "relax.steps=10", "ep.steps=5",
        "circuit.settle.cap=2e-7", "circuit.settle.check_every=2e-8"]
RUN_SETS = ["train.eval_every=2", *TINY, "train.twins=[analog, digital, bptt]", "train.update_cos=true"]


def set_args(items):
    return [a for item in items for a in ("--set", item)]




def call(argv):
    """main(argv) in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    rc, stdout, stderr = call(["run", "--steps", "4", *set_args(RUN_SETS), "--quiet", "--out", str(out)])
    print(f"\nrun: rc={rc}; stdout {stdout.strip()}")
    assert rc == 0, stderr
    return out, stdout, stderr


def test_run_writes_config_h5_curves_and_state(run_dir):
    import h5py

    out, stdout, stderr = run_dir
    assert "Traceback" not in stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4 and set(summary["val_loss"]) == {"analog", "digital", "bptt"}
    assert sorted(p.name for p in out.iterdir()) == [".lock", "best.pt", "config.yaml", "curves.png", "run.h5",
                                                     "state.pt"]

    # config.yaml loads back, equals the run's resolved configuration, and is a fixed point of resolve.
    loaded = load_config(str(out / "config.yaml"))
    expected = load_config(None, [*RUN_SETS, "train.steps=4"])
    expected.model.vocab_size = CharCorpus.from_config(expected.data).vocab_size
    assert isinstance(loaded, RunConfig)
    assert loaded == expected
    assert copy.deepcopy(loaded).resolve() == loaded

    with h5py.File(out / "run.h5", "r") as f:
        assert f.attrs["config"] == (out / "config.yaml").read_text() and f.attrs["version"] == 2
        assert f.attrs["status"] == "completed" and f.attrs["status_reason"] == ""
        for twin in ("analog", "digital", "bptt"):
            g = f[f"twins/{twin}"]
            assert list(g["train/step"][:]) == [1, 2, 3, 4] and list(g["val/step"][:]) == [0, 2, 4]
            assert g.attrs["status"] == "completed"
            assert all(math.isfinite(v) for v in g["train/loss"][:]) and len(g["residual"]) == 4
        a = f["twins/analog"]
        assert len(a["settle_time"]) == len(a["energy"]) == len(a["update_cos"]) == 4
        assert (a["settle_time"][:] > 0).all() and (a["energy"][:] > 0).all()
        assert all(-1 <= c <= 1 for c in a["update_cos"][:])
        assert "pulses" in f and int(a["pulses"][:].sum()) > 0
        print(f"\nanalog: settle {a['settle_time'][:]}, energy {a['energy'][:]}, update cos {a['update_cos'][:]}")
    state = torch.load(out / "state.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 4 and set(state["twins"]) == {"analog", "digital", "bptt"}
    assert state["config"] == (out / "config.yaml").read_text()
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp"))


def test_resume_continues_exactly_where_the_run_stopped(run_dir, tmp_path):
    """Every twin (analog with update_cos, digital, BPTT) continues bit for bit: curves, weights, the
    tiles' devices, optimizer and schedule states, generators, the ledger and best.pt."""
    import h5py

    from run_compare import differences

    resumed = tmp_path / "resumed"
    rc, _, stderr = call(["run", "--steps", "6", *set_args(RUN_SETS), "--stop-after", "3", "--quiet",
                          "--out", str(resumed)])
    assert rc == 130 and stderr.strip().splitlines()[-1].startswith("analog-ep: status interrupted: --stop-after 3")
    with h5py.File(resumed / "run.h5", "r") as f:
        assert f.attrs["steps_done"] == 3 and f.attrs["status"] == "interrupted"
    rc, _, stderr = call(["run", "--resume", "--quiet", "--out", str(resumed)])
    assert rc == 0, stderr
    whole = tmp_path / "whole"
    rc, _, stderr = call(["run", "--steps", "6", *set_args(RUN_SETS), "--quiet", "--out", str(whole)])
    assert rc == 0, stderr
    diffs = differences(whole, resumed)
    print(f"\nresumed at step 3 vs uninterrupted: {len(diffs)} differences {diffs[:5]}")
    assert diffs == []


def test_run_refuses_non_empty_out(run_dir):
    out, _, _ = run_dir
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rc, stdout, stderr = call(["run", "--steps", "4", *set_args(RUN_SETS), "--quiet", "--out", str(out)])
    print(f"\nrerun: rc={rc}; stderr {stderr.strip()}")
    assert rc == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr
    assert "--out" in lines[0] and str(out) in lines[0] and "not empty" in lines[0]
    assert stdout == ""
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_diagnose_json(capsys):
    rc = main(["diagnose", "--json", *set_args(TINY)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)  # exactly one JSON object on stdout
    print(f"\ndiagnose: residual {report['residual']:.3e}, cos {report['cos_ep_bptt']:+.4f}, "
          f"groups {report['cos_groups']}, leading mu {report['eig_re'][0]:+.4f}{report['eig_im'][0]:+.4f}j")
    assert isinstance(report, dict)
    assert {"residual", "cos_ep_bptt", "cos_groups", "eig_re", "eig_im", "force_evals"} <= set(report)
    assert len(report["eig_re"]) == len(report["eig_im"]) >= 1
    assert report["eig_re"] == sorted(report["eig_re"], reverse=True)
    assert -1 <= report["cos_ep_bptt"] <= 1 and report["residual"] > 0
    assert {"attention", "ffn", "embeddings", "readout"} <= set(report["cos_groups"])
    assert isinstance(report["force_evals"], int) and report["force_evals"] > 10


def test_diagnose_checkpoint(run_dir, capsys):
    out, _, _ = run_dir
    rc = main(["diagnose", "--checkpoint", str(out), "--twin", "analog", *set_args(TINY)])
    captured = capsys.readouterr()
    print(f"\n{captured.out}")
    assert rc == 0, captured.err
    text = captured.out
    for label in ("residual at T1", "cos(EP, BPTT)", "leading mu", "fixed point", "force evals"):
        assert label in text
    assert "Traceback" not in captured.err


# ---- broken inputs: one line on stderr, exit code 2 ------------------------------------------------

BROKEN = {
    "unknown_key": ("model:\n  widht: 16\n", [], ["model.widht", "unknown key", "did you mean 'width'"]),
    "unknown_section": ("modle:\n  width: 16\n", [], ["modle", "did you mean 'model'"]),
    "wrong_type": ("model:\n  width: \"3x\"\n", [], ["model.width", "3x", "integer"]),
    "heads_not_dividing": ("model:\n  width: 16\n  heads: 3\n", [], ["model.heads", "must divide width=16"]),
    "negative_eps": ("relax:\n  eps: -1\n", [], ["relax.eps", "-1"]),
    "negative_ep_eps": ("ep:\n  eps: -1\n", [], ["ep.eps", "-1"]),
    "invalid_yaml": ("model:\n  width: [16\n  heads: 2\n", [], ["not valid YAML"]),
    "not_a_mapping": ("model: 16\n", [], ["model", "mapping"]),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
@pytest.mark.parametrize("command", ["run", "diagnose"])
def test_broken_config_file(case, command, tmp_path, capsys):
    text, extra, needles = BROKEN[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    argv = [command, str(path), *extra] + (["--out", str(tmp_path / "out"), "--quiet"] if command == "run" else [])
    rc = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    print(f"\n{command} {case}: rc={rc}: {captured.err.strip()}")
    assert rc == 2
    assert len(lines) == 1 and lines[0].startswith("analog-ep: error: ")
    assert "Traceback" not in captured.err and captured.out == ""
    assert path.name in lines[0]
    for needle in needles:
        assert needle in lines[0]
    assert not (tmp_path / "out").exists()


def test_missing_config_file(tmp_path, capsys):
    path = tmp_path / "nowhere.yaml"
    rc = main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    captured = capsys.readouterr()
    print(f"\nmissing file: rc={rc}: {captured.err.strip()}")
    assert rc == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "nowhere.yaml" in lines[0] and "not found" in lines[0]
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("override, needles", [
    ("train.steps", ["--set", "train.steps", "key=value"]),
    ("model.widht=16", ["model.widht", "did you mean 'width'"]),
    ("model.width=3x", ["model.width", "3x", "integer"]),
    ("relax.eps=-1", ["relax.eps", "-1"]),
])
def test_bad_set_override(override, needles, tmp_path, capsys):
    rc = main(["run", "--set", override, "--out", str(tmp_path / "out"), "--quiet"])
    captured = capsys.readouterr()
    print(f"\n--set {override}: rc={rc}: {captured.err.strip()}")
    assert rc == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err
    for needle in needles:
        assert needle in lines[0]
    assert not (tmp_path / "out").exists()


def test_real_exit_code_in_subprocess(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  stpes: 3\n")
    script = Path(sys.executable).with_name("analog-ep")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "analog_ep.cli.main"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, "run", str(path), "--out", str(tmp_path / "out"), "--quiet"],
                          capture_output=True, text=True, timeout=120, env=env)
    print(f"\nsubprocess: rc={proc.returncode}; stderr {proc.stderr.strip()!r}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "typo.yaml" in lines[0] and "train.stpes" in lines[0] and "did you mean 'steps'" in lines[0]
    assert proc.stdout == ""
    assert not (tmp_path / "out").exists()


# ---- known gaps: these inputs still end in a traceback (reported; remove the marks once fixed) -----

def test_non_utf8_config_file_is_one_line_error(tmp_path, capsys):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"model:\n  width: \xff\xfe16\n")
    rc = main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "binary.yaml" in err


def test_out_is_a_file_is_one_line_error(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("keep me")
    rc = main(["run", "--steps", "1", *set_args(TINY), "--out", str(target), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "afile" in err
    assert target.read_text() == "keep me"


def test_diagnose_bad_checkpoint_is_one_line_error(tmp_path, capsys):
    path = tmp_path / "notckpt.pt"
    path.write_text("hello\n")
    rc = main(["diagnose", "--checkpoint", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "notckpt.pt" in err
