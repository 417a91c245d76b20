"""Commands that study runs: `analog-ep sweep | compare | export | replay` (registered by main)."""
from __future__ import annotations

import json
from pathlib import Path


def cmd_sweep(args) -> int:
    from analog_ep.cli.main import _overrides
    from analog_ep.sweep import Sweep, SweepDefinition, make_backend, summary_lines

    definition = SweepDefinition.build(args.chip, _overrides(args), args.grid or [], args.grid_file, args.seeds)
    backend = make_backend(args.backend, args.workers, args.threads, args.address)
    sweep = Sweep(definition, Path(args.out), backend, progress=not args.quiet)
    report = sweep.run()
    print("\n".join(summary_lines(definition, sweep.states)))
    counts: dict[str, int] = {}
    for status in report.statuses.values():
        counts[status] = counts.get(status, 0) + 1
    print(f"{len(report.statuses)} points ({', '.join(f'{n} {s}' for s, n in counts.items())}), "
          f"{len(report.ran)} run now; {args.out}/sweep.h5, {args.out}/tolerance.png")
    if report.exit_code == 1:
        print("re-run the same command to run the unfinished points again")
    return report.exit_code


def cmd_compare(args) -> int:
    from analog_ep.compare import compare

    summary = compare(args.dirs, args.out)
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "table"}))
    else:
        print("\n".join(summary["table"]))
        if summary["figure"]:
            print(f"curves: {summary['figure']}")
    return 0


def cmd_export(args) -> int:
    from analog_ep.schedule import export_schedule

    done = export_schedule(args.run, args.format, args.out)
    extra = f", at most {done['max_pulses_per_device']:,} on one device" if "max_pulses_per_device" in done else ""
    print(f"{done['path']}: {done['pulses']:,} pulses in {done['rounds']:,} rounds{extra}")
    return 0


def cmd_replay(args) -> int:
    from analog_ep.schedule import replay_schedule

    report = replay_schedule(args.schedule, args.chip)
    if args.json:
        print(json.dumps(report))
        return 0
    noise = "on (each replay is a new draw)" if report["cycle_noise"] else "off"
    print(f"schedule             {report['schedule']}")
    print(f"chip                 {report['device']}, chip seed {report['chip_seed']}, cycle-to-cycle noise {noise}")
    print(f"pulses applied       {report['pulses_applied']:,} of {report['pulses_in_schedule']:,}")
    verdict = "exact: every device holds the schedule's final conductance" if report["exact"] else "model units"
    print(f"max |weight error|   {report['max_abs_weight_error']:.3g} ({verdict})")
    dist = report.get("error_distribution")
    if dist:
        p = dist["pulse_steps"]
        print(f"error in pulse steps median {p['p50']:.2f}, p90 {p['p90']:.2f}, p99 {p['p99']:.2f}, max {p['max']:.2f}, "
              f"rms {p['rms']:.2f} (cycle-to-cycle noise alone predicts rms {dist['expected_rms_pulse_steps']:.2f})")
    return 0


def register(sub) -> None:
    """Add the four subcommands to `analog-ep`'s subparsers."""
    from analog_ep.cli.main import _count

    sw = sub.add_parser("sweep", help="run a chip over a grid of settings and seeds: sweep.h5 and a tolerance map")
    sw.add_argument("chip", help="chip file, e.g. chips/rram_512.yaml")
    sw.add_argument("--out", required=True, help="sweep directory (new; or an earlier one of the same sweep: resumes)")
    sw.add_argument("--grid", action="append", metavar="KEY=V1,V2,...", help="a swept key and its values (repeat)")
    sw.add_argument("--grid-file", metavar="GRID.yaml", help="a mapping from keys to lists of values")
    sw.add_argument("--seeds", type=_count("--seeds", 2), default=1, help="seeds per grid point: seed s offsets every seed by s")
    sw.add_argument("--steps", type=_count("--steps", 100), help="shorthand for --set train.steps=N")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE", help="override applied to every point")
    sw.add_argument("--workers", type=_count("--workers", 2), help="points in flight (local default: the cores; ray: the cluster's CPUs)")
    sw.add_argument("--threads", type=_count("--threads", 1), help="torch threads per point (local default: cores / workers; ray: 1)")
    sw.add_argument("--backend", choices=["local", "ray"], default="local", help="worker processes here, or Ray")
    sw.add_argument("--address", help="Ray cluster address (default 'auto': the one started here by ray start)")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=cmd_sweep, parser=sw)

    cmp = sub.add_parser("compare", help="overlay the learning curves of runs and sweeps; a summary table")
    cmp.add_argument("dirs", nargs="+", metavar="RUN_OR_SWEEP_DIR")
    cmp.add_argument("--out", default="compare.png", help="the curves' picture (default compare.png)")
    cmp.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    cmp.set_defaults(func=cmd_compare, parser=cmp)

    exp = sub.add_parser("export", help="the device-programming schedule of a run (HDF5, or CSV pulses)")
    exp.add_argument("run", metavar="RUN_DIR")
    exp.add_argument("--format", choices=["h5", "csv"], default="h5")
    exp.add_argument("--out", help="file to write (default RUN_DIR/schedule.h5 or .csv)")
    exp.set_defaults(func=cmd_export, parser=exp)

    rep = sub.add_parser("replay", help="replay a schedule on fresh tiles; the error against its final state")
    rep.add_argument("schedule", metavar="SCHEDULE")
    rep.add_argument("--chip", help="replay on this chip's device and seed instead of the schedule's")
    rep.add_argument("--json", action="store_true", help="one JSON object")
    rep.set_defaults(func=cmd_replay, parser=rep)
