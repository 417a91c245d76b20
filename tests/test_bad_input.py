"""Bad input never costs work: malformed chip files, values, run states, command lines and outputs.

Every case runs `analog-ep` in-process and must give exactly one stderr line
`analog-ep: error: <file or flag>...: <problem> (<fix>)` naming the file or flag, the key and
the value, exit code 2, no traceback and nothing on stdout; nothing is created for a new run,
and an existing run directory stays byte for byte as it was. `test_real_exit_code_in_subprocess`
(tests/test_cli.py) checks the same through a real process.

The sweep cases (`--grid` syntax, unknown grid key, out-of-range grid value, bad grid files, an
`--out` that is not a sweep) and compare's are in tests/test_sweep.py, in the same form.
"""
from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from analog_ep.cli.main import main
from analog_ep.run.status import RunLock

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.width=16", "--set", "data.context=8", "--set", "train.batch_size=4",
        "--set", "train.eval_batches=1", "--set", "relax.steps=10", "--quiet"]


@dataclass
class Case:
    """One bad input: a chip file (`text`), extra command-line arguments, what the line must name."""

    kind: str
    """'file' (a chip file), 'value' (a chip file with one bad value), 'state' (a resume of a run
    directory prepared by `prepare`), 'cli', 'output'."""
    argv: list[str]
    """Arguments after `analog-ep`; {chip} is the chip file, {out} a new run directory, {run} a copy
    of a finished run, {file} a plain file, {corpus} a corpus file."""
    needles: list[str]
    """Substrings the error line must contain (file or flag, key, value, fix)."""
    text: str | bytes | None = None
    """Content of {chip}."""
    corpus: str | None = None
    """Content of {corpus}."""
    prepare: str = ""
    """For 'state' cases: how {run} is damaged first (corrupt_h5, truncate_h5, corrupt_state,
    truncate_state, no_state)."""
    marks: list = field(default_factory=list)


def chip(text, *needles, extra=()):
    return Case("file", ["run", "{chip}", "--out", "{out}", *extra, "--quiet"], ["bad.yaml", *needles], text)


def value(text, *needles):
    return Case("value", ["run", "{chip}", "--out", "{out}", "--quiet"], ["bad.yaml", *needles], text)


def resume(prepare, extra, *needles):
    return Case("state", ["run", "--resume", "--out", "{run}", *extra, "--quiet"], list(needles), prepare=prepare)


def cli(argv, *needles):
    return Case("cli", argv, list(needles))


CASES = {
    # ---- files -----------------------------------------------------------------------------------
    "empty file": chip("", "<root>", "empty", "uses:"),
    "only comments": chip("# a chip, some day\n\n", "<root>", "empty"),
    "binary file": chip(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "encoding", "not UTF-8", "save it as UTF-8"),
    "NUL byte": chip("model:\n  width: 16\x00\n", "yaml", "not valid YAML at line 2", "fix the syntax"),
    "list at the top": chip("- model\n- chip\n", "<root>", "'list'", "expected a mapping", "section:"),
    "scalar at the top": chip("42\n", "<root>", "'int'", "expected a mapping"),
    "unclosed bracket": chip("model: {width: 16\n", "yaml", "not valid YAML at line 2"),
    "bad indentation": chip("model:\n  width: 16\n   heads: 2\n", "yaml", "not valid YAML at line 3"),
    "tab indentation": chip("model:\n\twidth: 16\n", "yaml", "not valid YAML at line 2"),
    "duplicate key": chip("model:\n  width: 16\n  width: 32\n", "width", "line 3", "given twice", "keep one"),
    "unknown section": chip("modle: {width: 16}\n", "modle", "unknown key", "did you mean 'model'"),
    "section not a mapping": chip("model: 16\n", "model=16", "expected a mapping"),
    "unknown uses device": chip("uses: {device: reram_bs, circuit: rc_crossbar}\n", "uses.device", "reram_bs",
                                "did you mean 'reram_sb'"),
    # ---- values ----------------------------------------------------------------------------------
    "width not a number": value("model: {width: 3x}\n", "model.width='3x'", "expected an integer"),
    "steps a fraction": value("train: {steps: 1.5}\n", "train.steps=1.5", "expected an integer"),
    "batch size a boolean": value("train: {batch_size: true}\n", "train.batch_size=True", "expected an integer"),
    "lr a word": value("optim: {lr: fast}\n", "optim.lr='fast'", "expected a number"),
    "eps a list": value("relax: {eps: [0.1]}\n", "relax.eps=[0.1]", "expected a number"),
    "negative read noise": value("chip: {periphery: {read_noise: -0.01}}\n", "chip.periphery.read_noise=-0.01",
                                 "must be >= 0"),
    "negative optical noise": value("chip: {periphery: {optical_noise: -1}}\n",
                                    "chip.periphery.optical_noise=-1", "must be >= 0"),
    "negative mismatch": value("chip: {periphery: {mismatch: -0.1}}\n", "chip.periphery.mismatch=-0.1",
                               "must be >= 0"),
    "negative cycle noise": value("chip: {device: {model: ReRamSB, overrides: {dw_min_std: -0.3}}}\n",
                                  "chip.device.overrides.dw_min_std=-0.3", "must be >= 0", "use 0"),
    "negative thermal noise": value("circuit: {dynamics: {noise: -0.002}}\n", "circuit.dynamics.noise=-0.002",
                                    "must be >= 0"),
    "negative ADC noise": value("circuit: {settle: {adc_noise: -1}}\n", "circuit.settle.adc_noise=-1",
                                "must be >= 0"),
    "zero tile rows": value("chip: {tile_rows: 0}\n", "chip.tile_rows", "must be >= 1"),
    "negative tile columns": value("chip: {tile_cols: -5}\n", "chip.tile_", "-5", "must be >= 1"),
    "zero width": value("model: {width: 0}\n", "model.width=0", "must be"),
    "zero heads": value("model: {heads: 0}\n", "model.heads=0", "must be"),
    "zero context": value("data: {context: 0}\n", "data.context=0", "positive integer"),
    "zero batch size": value("train: {batch_size: 0}\n", "train.batch_size=0", "must be >= 1"),
    "zero checkpoint interval": value("train: {checkpoint_every: 0}\n", "train.checkpoint_every=0", "must be >= 1"),
    "1-bit DAC": value("chip: {periphery: {dac_bits: 1}}\n", "chip.periphery.dac_bits=1", "[2, 32]"),
    "33-bit ADC": value("chip: {periphery: {adc_bits: 33}}\n", "chip.periphery.adc_bits=33", "[2, 32]"),
    "64-bit ADC": value("chip: {periphery: {adc_bits: 64}}\n", "chip.periphery.adc_bits=64", "[2, 32]"),
    "1-bit node ADC": value("circuit: {settle: {adc_bits: 1}}\n", "circuit.settle.adc_bits=1", "0 or"),
    "33 weight bits": value("chip: {periphery: {weight_bits: 33}}\n", "chip.periphery.weight_bits=33", "[2, 32]"),
    "unknown preset": value("chip: {device: {model: ReRamXB}}\n", "chip.device.model='ReRamXB'",
                            "unknown device", "did you mean 'ReRamSB'"),
    "unknown base class": value("chip: {device: {model: SoftBound}}\n", "chip.device.model='SoftBound'",
                                "did you mean 'SoftBounds'"),
    "unknown device parameter": value("chip: {device: {model: ReRamSB, overrides: {dw_mn: 0.001}}}\n",
                                      "chip.device.overrides.dw_mn", "did you mean 'dw_min'"),
    "unknown cycle-noise source": value("chip: {cycle_noise: clock}\n", "chip.cycle_noise='clock'",
                                        "use one of seeded, aihwkit"),
    "linear nudge on the analog twin": Case("value", ["run", "--set", "ep.nudge=linear", "--out", "{out}", "--quiet"],
                                            ["ep.nudge='linear'", "nonlinear nudged dynamics",
                                             "train.twins: [digital]"]),
    "unknown nudge": value("ep: {nudge: adjoint}\n", "ep.nudge='adjoint'", "use one of nonlinear, linear"),
    "missing corpus": Case("value", ["run", "--set", "data.path=/nonexistent/corpus.txt", "--out", "{out}", "--quiet"],
                           ["data.path='/nonexistent/corpus.txt'", "file not found", "null for the built-in corpus"]),
    "empty corpus": Case("value", ["run", "--set", "data.path={corpus}", "--out", "{out}", "--quiet"],
                         ["data.path=", "corpus.txt", "file is empty", "null for the built-in corpus"], corpus=""),
    "corpus shorter than the context": Case("value", ["run", "--set", "data.path={corpus}", "--out", "{out}",
                                                      "--quiet"],
                                            ["data.path=", "corpus.txt", "fewer than context+2=34",
                                             "a smaller data.context"], corpus="abcdefgh" * 4),
    # ---- run state (a copy of a finished 2-step run) --------------------------------------------------
    "corrupt run.h5": resume("corrupt_h5", ["--steps", "3"], "--resume", "run.h5", "cannot be read",
                             "start a new run"),
    "truncated run.h5": resume("truncate_h5", ["--steps", "3"], "--resume", "run.h5", "cannot be read"),
    "corrupt state.pt": resume("corrupt_state", ["--steps", "3"], "--resume", "state.pt",
                               "truncated or corrupt", "start a new run"),
    "truncated state.pt": resume("truncate_state", ["--steps", "3"], "--resume", "state.pt", "truncated or corrupt"),
    "no state.pt": resume("no_state", ["--steps", "3"], "--resume", "no state.pt", "interrupted run directory"),
    "resume a finished run": resume("", [], "--steps=2", "already done 2 steps", "greater than 2"),
    "resume with fewer steps": resume("", ["--steps", "1"], "--steps=1", "already done 2 steps"),
    "resume with another chip": Case("state", ["run", str(ROOT / "chips" / "pcm_256.yaml"), "--resume", "--out",
                                               "{run}", "--steps", "3", "--quiet"],
                                     ["--resume", "pcm_256.yaml", "differs from the run", "drop CHIP"]),
    "resume changing the model": resume("", ["--steps", "3", "--set", "model.width=32"], "--set",
                                        "model.width=32", "cannot change on --resume", "start a new run"),
    # ---- command line ----------------------------------------------------------------------------
    "--set without =": cli(["run", "--set", "train.steps", "--out", "{out}"], "--set", "train.steps",
                           "expected key=value", "e.g. --set train.steps=100"),
    "--set unknown key": cli(["run", "--set", "model.widht=16", "--out", "{out}"], "--set", "model.widht=16",
                             "did you mean 'width'"),
    "--set unknown section": cli(["run", "--set", "modle.width=16", "--out", "{out}"], "modle", "did you mean 'model'"),
    "--set empty key": cli(["run", "--set", "=3", "--out", "{out}"], "--set", "unknown key"),
    "--steps not a number": cli(["run", "--steps", "abc", "--out", "{out}"], "--steps='abc'", "whole number",
                                "e.g. --steps 100"),
    "--steps a fraction": cli(["run", "--steps", "1.5", "--out", "{out}"], "--steps='1.5'", "whole number"),
    "--steps zero": cli(["run", "--steps", "0", "--out", "{out}"], "--steps='0'", "must be >= 1"),
    "--stop-after not a number": cli(["run", "--stop-after", "x", "--out", "{out}"], "--stop-after='x'",
                                     "whole number"),
    "unknown flag": cli(["run", "--sett", "a=b", "--out", "{out}"], "unrecognized arguments: --sett",
                        "see analog-ep run --help"),
    "diagnose --batch not a number": cli(["diagnose", "--batch", "four"], "--batch='four'", "e.g. --batch 4"),
    # ---- output ----------------------------------------------------------------------------------
    "--out is a file": Case("output", ["run", "--steps", "1", "--out", "{file}", *TINY], ["--out", "afile",
                                                                                         "is a file",
                                                                                         "choose a directory"]),
    "--out not empty": Case("output", ["run", "--steps", "2", "--out", "{run}", *TINY],
                            ["--out", "directory exists and is not empty", "add --resume"]),
    "--out cannot be created": Case("output", ["run", "--steps", "1", "--out", "{unwritable}", *TINY],
                                    ["--out", "out", "writ"]),
    "--out run by another process": Case("output", ["run", "--resume", "--steps", "3", "--out", "{locked}",
                                                    "--quiet"],
                                         ["--out", "another analog-ep process (pid", "wait for it"]),
}


def call(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-step run of the ECRAM chip (both twins)."""
    out = tmp_path_factory.mktemp("bad_input") / "run"
    rc, _, err = call(["run", str(ROOT / "chips" / "ecram_256.yaml"), "--steps", "2", *TINY, "--out", str(out)])
    assert rc == 0, err
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def damage(run: Path, how: str) -> None:
    if how == "corrupt_h5":
        (run / "run.h5").write_bytes(b"this is not an HDF5 file\n" * 40)
    elif how == "truncate_h5":
        data = (run / "run.h5").read_bytes()
        (run / "run.h5").write_bytes(data[: len(data) // 2])
    elif how == "corrupt_state":
        (run / "state.pt").write_bytes(random.Random(0).randbytes(4096))
    elif how == "truncate_state":
        data = (run / "state.pt").read_bytes()
        (run / "state.pt").write_bytes(data[: len(data) // 3])
    elif how == "no_state":
        (run / "state.pt").unlink()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_costs_nothing(name, finished_run, tmp_path):
    case = CASES[name]
    paths = {"chip": tmp_path / "chips" / "bad.yaml", "out": tmp_path / "new_run", "file": tmp_path / "afile",
             "corpus": tmp_path / "corpus.txt", "run": tmp_path / "run", "unwritable": tmp_path / "ro" / "out",
             "locked": tmp_path / "run"}
    paths["chip"].parent.mkdir()
    if isinstance(case.text, bytes):
        paths["chip"].write_bytes(case.text)
    elif case.text is not None:
        paths["chip"].write_text(case.text, encoding="utf-8")
    if case.corpus is not None:
        paths["corpus"].write_text(case.corpus, encoding="utf-8")
    paths["file"].write_text("keep me")
    shutil.copytree(finished_run, paths["run"])
    damage(paths["run"], case.prepare)
    (tmp_path / "ro").mkdir()
    if os.geteuid() == 0:  # root writes anywhere: use a path no one can create
        paths["unwritable"] = Path("/proc/self/analog-ep-out")
    else:
        (tmp_path / "ro").chmod(0o500)
    before = snapshot(paths["run"])
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in case.argv]
    with contextlib.ExitStack() as stack:
        if "{locked}" in case.argv:
            stack.enter_context(RunLock(paths["locked"]))  # another process's lock: a second descriptor
        rc, stdout, stderr = call(argv)
    (tmp_path / "ro").chmod(0o700)
    lines = stderr.strip().splitlines()
    print(f"\n{name}: rc={rc}: {stderr.strip()}")
    assert rc == 2, (name, rc, stderr)
    assert len(lines) == 1 and lines[0].startswith("analog-ep: error: "), stderr
    assert "Traceback" not in stderr and stdout == ""
    line = lines[0]
    for needle in case.needles:
        assert needle in line, (name, needle, line)
    assert line.endswith(")"), f"{name}: no fix given: {line}"  # every message ends with '(how to fix)'
    assert not paths["out"].exists(), "a rejected new run created its directory"
    assert snapshot(paths["run"]) == before, "an existing run directory was modified"
    assert paths["file"].read_text() == "keep me"


def test_any_corrupt_state_is_a_config_error(tmp_path):
    """Unpickling arbitrary bytes raises almost any exception type (OverflowError, struct.error, ...):
    every one of 300 seeded random state files is refused as a ConfigError saying it is corrupt."""
    from analog_ep.errors import ConfigError
    from analog_ep.run.loop import read_state

    for seed in range(300):
        (tmp_path / "state.pt").write_bytes(random.Random(seed).randbytes(4096))
        with pytest.raises(ConfigError, match="truncated or corrupt"):
            read_state(tmp_path)
