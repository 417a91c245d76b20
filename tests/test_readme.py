"""README.md and the docs/*.md pages run as written: every fenced block is marked with how it is
tested, and is run.

Each fenced block is preceded by a marker line:

* `<!-- test: skip -->`  not run (installs, long benches, layouts that are not commands);
* `<!-- test: short -->` run, exit code 0 required; `analog-ep run` commands get `SHORT_RUN`
  appended so they take seconds;
* `<!-- test: exact -->` a `console` block: the lines after each `$ ` command are its output
  (stdout and stderr together), compared line by line; an `analog-ep: error:` output means
  exit code 2, anything else 0.

By language: `bash`/`console` blocks run in bash; `python` blocks run as a script; a `yaml`
block whose first line is a comment naming a file (`# mine.yaml: ...`) is written to that file
and checked with `analog-ep validate`. Blocks run in README order in one temporary working
directory outside the repository (so "from any folder" is what is tested) and share it: a run
made by one block is diagnosed by the next. Nothing here copies README content: the test follows
the README.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: Every page tested: the README and each docs page (each page's blocks in their own folder).
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!-- test: (skip|short|exact) -->$")
#: Appended to every `analog-ep run` (not `--resume`) a short block runs: two steps, small batches.
SHORT_RUN = ["--steps", "2", "--set", "train.batch_size=4", "--set", "train.eval_batches=1"]
#: How a yaml block names the file it is: its first line is `# NAME.yaml` (optionally `: words`).
FILE_HEADER = re.compile(r"^# ([\w.-]+\.ya?ml)\b")


@dataclass
class Block:
    line: int
    """1-based line of the opening fence in README.md."""
    lang: str
    mode: str | None
    text: str


def blocks(path: Path = README) -> list[Block]:
    """Every fenced block of `path` with the marker on the nearest non-blank line above it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(```+)\s*(\S*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].strip() != fence.group(1):
            body.append(lines[i])
            i += 1
        above = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(above)
        found.append(Block(start + 1, fence.group(2), marker.group(1) if marker else None, "\n".join(body) + "\n"))
        i += 1
    return found


def commands(text: str) -> list[str]:
    """The block's command lines, backslash continuations joined."""
    out, pending = [], ""
    for line in text.splitlines():
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        line = (pending + line).strip()
        pending = ""
        if line and not line.startswith("#"):
            out.append(line)
    return out


def shorten(command: str) -> str:
    """Append SHORT_RUN to each `analog-ep run` in `command` (a `&&` chain) that starts a new run."""
    parts = []
    for part in command.split("&&"):
        words = shlex.split(part)
        if words[:2] == ["analog-ep", "run"] and "--resume" not in words:
            if any(ch in part for ch in "|;>"):
                raise AssertionError(f"cannot shorten {part.strip()!r}: give the run a line of its own")
            part = f"{part.rstrip()} {shlex.join(SHORT_RUN)} "
        parts.append(part)
    return "&&".join(parts).strip()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A bash environment whose `analog-ep` and `python` are this interpreter's, with the package
    importable; its working directory is a fresh folder outside the repository."""
    bin_dir = tmp_path_factory.mktemp("bin")
    script = Path(sys.executable).with_name("analog-ep")
    # Shell shims, not symlinks: a symlinked venv interpreter would not find its venv.
    tools = {"python": f'"{sys.executable}" "$@"',
             "analog-ep": f'"{script}" "$@"' if script.is_file()  # the installed entry point
             else f'"{sys.executable}" -m analog_ep.cli.main "$@"'}  # a bare checkout: the same main()
    for name, line in tools.items():
        (bin_dir / name).write_text(f"#!/bin/sh\nexec {line}\n")
        (bin_dir / name).chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    variables = {**os.environ, "PATH": path, "PYTHONPATH": python_path, "OMP_NUM_THREADS": "1",
                 "MPLBACKEND": "Agg"}
    cwd = tmp_path_factory.mktemp("readme")
    assert ROOT not in cwd.parents and cwd != ROOT
    return variables, cwd


def bash(command: str, env) -> subprocess.CompletedProcess:
    variables, cwd = env
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=variables, capture_output=True, text=True,
                          timeout=600)


def run_block(block: Block, env, page: str = "README.md") -> None:
    where = f"{page}:{block.line}"
    variables, cwd = env
    if block.lang == "yaml":
        header = FILE_HEADER.match(block.text)
        assert header, f"{where}: a tested yaml block names its file on its first line ('# mine.yaml: ...')"
        (cwd / header.group(1)).write_text(block.text, encoding="utf-8")
        proc = bash(f"analog-ep validate {header.group(1)}", env)
        assert proc.returncode == 0, f"{where}: {header.group(1)} does not validate: {proc.stderr.strip()}"
        return
    if block.lang == "python":
        script = cwd / f"readme_{block.line}.py"
        script.write_text(block.text, encoding="utf-8")
        proc = bash(f"python {script.name}", env)
        assert proc.returncode == 0, f"{where}: the Python block failed:\n{proc.stdout}\n{proc.stderr}"
        return
    assert block.lang in ("bash", "console"), f"{where}: cannot run a {block.lang or 'plain'} block: mark it skip"
    if block.lang == "bash":
        for command in commands(block.text):
            proc = bash(shorten(command), env)
            assert proc.returncode == 0, f"{where}: `{command}` exited {proc.returncode}:\n{proc.stderr.strip()}"
        return
    for command, expected in console(block.text):
        command = command if block.mode == "exact" else shorten(command)
        proc = bash(f"{command} 2>&1", env)
        printed = proc.stdout.splitlines()
        error = bool(expected) and expected[0].startswith("analog-ep: error:")
        assert proc.returncode == (2 if error else 0), f"{where}: `{command}` exited {proc.returncode}:\n{proc.stdout}"
        if block.mode == "exact":
            assert printed == expected, f"{where}: `{command}` printed\n" + "\n".join(printed)


def console(text: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of a console block: `$ ` lines are commands."""
    session: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            session.append((line[2:], []))
        else:
            assert session, f"console output before any `$ ` command: {line!r}"
            session[-1][1].append(line)
    return session


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_block_is_marked(page):
    unmarked = [f"{page.name}:{b.line} ({b.lang or 'plain'})" for b in blocks(page) if b.mode is None]
    assert not unmarked, ("mark each fenced block with <!-- test: skip|short|exact --> on the line above: "
                          + ", ".join(unmarked))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_exact_blocks_are_console_sessions(page):
    for b in blocks(page):
        if b.mode == "exact":
            assert b.lang == "console" and b.text.startswith("$ "), f"{page.name}:{b.line}: exact needs a console block"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_readme_runs_as_written(page, tmp_path_factory, env):
    """Every short and exact block of a page, in order, in one working directory outside the
    repository (the README's is `env`'s; each docs page gets a fresh one)."""
    import resource
    import time

    if page != README:
        env = (env[0], tmp_path_factory.mktemp(page.stem))
    ran = 0
    for block in blocks(page):
        if block.mode in ("short", "exact"):
            wall, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            run_block(block, env, page.name)
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            print(f"\n{page.name}:{block.line} ({block.mode} {block.lang}): {time.perf_counter() - wall:.1f} s wall, "
                  f"{used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime:.1f} s CPU", end="")
            ran += 1
    print(f"\nran {ran} {page.name} blocks in {env[1]}")
    assert ran > 0


def test_the_example_chip_learns_as_printed(tmp_path):
    """The README's example chip file (its first yaml block naming a file), unchanged but for a
    12-step run: programming keeps the model (its first loss is the digital twin's), its pulses
    follow the EP gradient (update_cos), and its validation loss falls. The published ReRAM device
    as is fails all three (first loss 5.65 vs 4.82, update_cos 0.01)."""
    import h5py
    import numpy as np

    from analog_ep.config import load_config
    from analog_ep.run.loop import run_job

    example = next(b for b in blocks() if b.lang == "yaml" and b.mode != "skip" and FILE_HEADER.match(b.text))
    chip = tmp_path / FILE_HEADER.match(example.text).group(1)
    chip.write_text(example.text, encoding="utf-8")
    cfg = load_config(str(chip), ["train.steps=12", "train.eval_every=12", "train.eval_batches=2",
                                  "train.update_cos=true"])
    (tmp_path / "run").mkdir()
    run_job(cfg, tmp_path / "run", progress=False)
    with h5py.File(tmp_path / "run" / "run.h5", "r") as f:
        analog, digital = f["twins/analog"], f["twins/digital"]
        first = float(analog["train/loss"][0]), float(digital["train/loss"][0])
        cos = analog["update_cos"][:]
        val = float(analog["val/loss"][-1]), float(digital["val/loss"][-1])
        residual = float(np.median(analog["residual"][:]))
    print(f"\nREADME.md:{example.line} example chip, 12 steps: first loss analog {first[0]:.3f} digital {first[1]:.3f}; "
          f"update_cos mean {cos.mean():.3f} ({np.round(cos, 2)}); val analog {val[0]:.3f} digital {val[1]:.3f}; "
          f"residual {residual:.1e}")
    assert abs(first[0] - first[1]) < 0.05
    assert cos.mean() > 0.15
    assert val[0] < first[0] - 0.2


# ---- the harness itself -------------------------------------------------------------------------------

def test_blocks_reads_markers_and_finds_unmarked_blocks(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n<!-- test: short -->\n```bash\nanalog-ep list chips\n```\n\n"
                    "<!-- test: skip -->\n\n```\nlayout\n```\nprose\n```python\nprint(1)\n```\n")
    found = blocks(page)
    assert [(b.line, b.lang, b.mode, b.text) for b in found] == [
        (4, "bash", "short", "analog-ep list chips\n"), (10, "", "skip", "layout\n"), (14, "python", None, "print(1)\n")]


def test_shorten_appends_to_new_runs_only():
    short = shlex.join(SHORT_RUN)
    assert shorten("analog-ep run mine.yaml --out runs/mine") == f"analog-ep run mine.yaml --out runs/mine {short}"
    assert shorten("analog-ep run --resume --out runs/mine") == "analog-ep run --resume --out runs/mine"
    assert shorten("cd x && analog-ep run") == f"cd x && analog-ep run {short}"
    assert shorten("analog-ep validate rram_512 --show > mine.yaml") == "analog-ep validate rram_512 --show > mine.yaml"
    with pytest.raises(AssertionError, match="a line of its own"):
        shorten("analog-ep run rram_512 | tee log")


def test_run_block_compares_exact_output_and_exit_codes(env):
    run_block(Block(1, "console", "exact", "$ echo hi\nhi\n"), env)
    with pytest.raises(AssertionError, match="printed"):
        run_block(Block(1, "console", "exact", "$ echo hi\nho\n"), env)
    with pytest.raises(AssertionError, match="exited 1"):
        run_block(Block(1, "bash", "short", "true\nfalse\n"), env)
    with pytest.raises(AssertionError, match="names its file"):
        run_block(Block(1, "yaml", "short", "model: {width: 16}\n"), env)
    with pytest.raises(AssertionError, match="mark it skip"):
        run_block(Block(1, "", "short", "a layout\n"), env)
