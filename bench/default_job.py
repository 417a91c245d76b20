"""The default job, `analog-ep run chips/rram_512.yaml` (200 steps, both twins), timed end to end.

Runs the job with this checkout's code and, with `--baseline REV`, with the code of git revision
REV too (exported with `git archive` into a temporary folder), one after the other in fresh
processes at the same thread count, each into its own temporary run directory. Prints one JSON
object: per code version the wall time of the process and the run's recorded training wall time,
the final validation losses of both twins, and `wall_ratio` (this checkout / baseline) with the
differences of the final losses, all measured in this one session. Both runs use the same
evaluation settings (the chip file's, plus any `--set`).

    python bench/default_job.py --baseline f7a5904 --json
    python bench/default_job.py --baseline 18ae9c6 --json    # the code when issue 11 was filed
    python bench/default_job.py --steps 50 --json            # a quicker look, no baseline
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(code: Path, out: Path, steps: int | None, overrides: list[str], threads: int) -> dict:
    """Run the default job with the package at `code`; wall time and final validation losses."""
    env = dict(os.environ, PYTHONPATH=str(code))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "analog_ep.cli.main", "run", str(code / "chips" / "rram_512.yaml"),
           "--out", str(out), "--quiet"]
    if steps:
        cmd += ["--steps", str(steps)]
    for item in overrides:
        cmd += ["--set", item]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=str(code), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"default job failed with {code}: {proc.stderr.strip().splitlines()[-1:]}")
    probe = ("import json,sys; from analog_ep.results import summarize_run; s = summarize_run(sys.argv[1]); "
             "print(json.dumps({'status': s.status, 'run_wall_s': s.wall_s, "
             "'final_val': {n: t.final('loss') for n, t in s.twins.items()}}))")
    read = subprocess.run([sys.executable, "-c", probe, str(out)], env=env, capture_output=True, text=True)
    if read.returncode == 0:
        return {"process_wall_s": wall, **json.loads(read.stdout)}
    # A revision from before analog_ep.results (e.g. the code at the issues' filing, 18ae9c6): the
    # summary line `run` printed last (its final validation losses are the last evaluation's)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"process_wall_s": wall, "status": summary.get("status", "completed"), "run_wall_s": summary["wall_s"],
            "final_val": summary["val_loss"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", help="git revision to compare with (e.g. this branch's parent)")
    ap.add_argument("--steps", type=int, help="training steps (default: the chip file's 200)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, for both runs")
    ap.add_argument("--threads", type=int, default=0, help="OMP threads of the runs (0: torch's default)")
    ap.add_argument("--keep", metavar="DIR", help="keep this checkout's run there (new or empty folder), e.g. "
                    "for its curves.png")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.keep and Path(args.keep).exists() and any(Path(args.keep).iterdir()):
        raise SystemExit(f"--keep {args.keep}: not empty; name a new or empty folder")
    report: dict = {"steps": args.steps or 200, "overrides": args.set}
    with tempfile.TemporaryDirectory(prefix="analog-ep-default-job-") as tmp:
        tmp = Path(tmp)
        versions = {"this": ROOT}
        if args.baseline:
            rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline], capture_output=True,
                                 text=True)
            if rev.returncode != 0:
                raise SystemExit(f"--baseline {args.baseline}: not a git revision of {ROOT}")
            base = tmp / "baseline"
            base.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
            versions["baseline"] = base
            report["baseline_rev"] = rev.stdout.strip()
        runs = {name: tmp / f"run_{name}" for name in versions}
        if args.keep:  # this checkout's run under the name it is kept as (its curves.png is titled by it)
            runs["this"] = tmp / "this" / Path(args.keep).name
        for name, code in versions.items():
            print(f"running the default job with {name} ({code}) ...", file=sys.stderr)
            runs[name].parent.mkdir(parents=True, exist_ok=True)
            report[name] = run_once(code, runs[name], args.steps, args.set, args.threads)
        if args.keep:
            Path(args.keep).parent.mkdir(parents=True, exist_ok=True)
            if Path(args.keep).exists():
                Path(args.keep).rmdir()
            shutil.move(str(runs["this"]), args.keep)
            report["kept"] = str(Path(args.keep).resolve())
    if "baseline" in report:
        this, base = report["this"], report["baseline"]
        report["wall_ratio"] = this["process_wall_s"] / base["process_wall_s"]
        report["final_val_diff"] = {n: this["final_val"][n] - base["final_val"][n] for n in this["final_val"]}
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
