"""Command line: `analog-ep run | validate | list | diagnose | sweep | compare | export | replay | fit-device`.

Bad input (any `AnalogEPError` before a run starts, a malformed command line) prints one line,
`analog-ep: error: ...`, and exits with 2; existing results are never overwritten. `run` ends
with its status line on stderr and the status's exit code (`analog_ep.run.status`).
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from analog_ep import __version__
from analog_ep.config import DEFAULT_CHIP, dump_yaml, load_config
from analog_ep.errors import AnalogEPError, ConfigError


def _overrides(args) -> list[str]:
    overrides = list(getattr(args, "set", None) or [])
    if getattr(args, "steps", None) is not None:
        overrides.append(f"train.steps={args.steps}")
    return overrides


def cmd_run(args) -> int:
    from analog_ep.run.loop import check_out_dir, resume_config, run_job
    from analog_ep.run.status import EXIT_CODES, one_line, status_line

    if args.resume and args.out is None:
        raise ConfigError("--out", None, "required with --resume", "name the run directory to continue: "
                          "analog-ep run --resume --out DIR")
    chip = args.chip or DEFAULT_CHIP
    out = Path(args.out or Path("runs") / Path(chip).stem)
    check_out_dir(out, args.resume)
    if args.resume:  # the run's own resolved config; --steps may extend it
        cfg = resume_config(out, _overrides(args), args.chip)
    else:
        cfg = load_config(chip, _overrides(args))
    from analog_ep.train.backend import check_backend

    check_backend(cfg)  # before anything is written
    try:
        summary = run_job(cfg, out, resume=args.resume, progress=not args.quiet, stop_after=args.stop_after)
    except AnalogEPError:
        raise  # bad input: nothing was started (after the start run_job returns a failed status)
    except Exception as err:  # a bug: its traceback, then the status line last
        traceback.print_exc()
        print(status_line("failed", one_line(f"{type(err).__name__}: {err}")), file=sys.stderr)
        return EXIT_CODES["failed"]
    print(json.dumps(summary))
    print(status_line(summary["status"], summary["reason"]), file=sys.stderr)
    return EXIT_CODES[summary["status"]]


def cmd_validate(args) -> int:
    cfg = load_config(args.chip, _overrides(args))
    from analog_ep.hardware.device import check_device_config

    from analog_ep.train.backend import check_backend

    check_device_config(cfg.chip.device)
    check_backend(cfg)
    print(f"{args.chip}: ok ({cfg.chip.device.model} on {cfg.chip.tile_rows}x{cfg.chip.tile_cols} tiles, "
          f"{cfg.circuit.dynamics.kind} circuit, twins {', '.join(cfg.train.twins)})", file=sys.stderr)
    if args.show:  # stdout holds the YAML alone: `--show > mine.yaml` is a chip file that resolves the same
        print(dump_yaml(cfg), end="")
    return 0


def cmd_list(args) -> int:
    from analog_ep.cli.listing import format_listing

    print(format_listing(args.kind), end="")
    return 0


def cmd_diagnose(args) -> int:
    from analog_ep.diagnostics.diagnose import diagnose

    report, what = diagnose(args.chip, args.checkpoint, args.twin, list(args.set or []), args.batch)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"operator          {what}")
    print(f"residual at T1    {report['residual']:.3e}")
    print(f"cos(EP, BPTT)     {report['cos_ep_bptt']:+.4f}")
    for group, c in report["cos_groups"].items():
        print(f"  {group:<15} {c:+.4f}")
    lead = ", ".join(f"{re:+.4f}{im:+.4f}j" for re, im in zip(report["eig_re"], report["eig_im"]))
    print(f"leading mu        {lead}")
    state_word = "UNSTABLE (Re mu > 0)" if report["eig_re"][0] > 0 else "stable"
    print(f"fixed point       {state_word}; numerical abscissa {report['abscissa']:+.4f}")
    print(f"force evals       {report['force_evals']}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), like every other bad input."""

    def error(self, message: str):
        message = message.removeprefix("argument ")
        flag, sep, rest = message.partition(": ")
        text = f"{flag}={rest}" if sep and flag.startswith("-") and rest.startswith("'") else message
        if "(" not in text:
            text += f" (see {self.prog} --help)"
        self.exit(2, f"analog-ep: error: {text}\n")


def _count(flag: str, example: int):
    """An argparse type: a whole number >= 1, refused in the package's one-line form."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number (e.g. {flag} {example})") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: must be >= 1 (e.g. {flag} {example})")
        return value
    return parse


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="analog-ep", description="Equilibrium Propagation on simulated "
                 "analog hardware, beside an exact digital twin.")
    ap.add_argument("--version", action="version", version=f"analog-ep {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train the twins side by side and write a run directory",
                         epilog="exit codes: 0 completed, 1 failed, 2 bad input, 3 diverged, 130 interrupted "
                                "(the last stderr line says which)")
    run.add_argument("chip", nargs="?", metavar="CHIP", help=f"a shipped chip's name (analog-ep list chips) or a chip file's path "
                     f"(default: {DEFAULT_CHIP}, the default job)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. train.steps=100")
    run.add_argument("--steps", type=_count("--steps", 100), metavar="N", help="shorthand for --set train.steps=N")
    run.add_argument("--out", metavar="DIR", help="run directory, new or empty (default: runs/<chip name>); with --resume, "
                     "the run to continue (required)")
    run.add_argument("--resume", action="store_true", help="continue the interrupted run in --out with its own config.yaml (a CHIP given must match it)")
    run.add_argument("--stop-after", type=_count("--stop-after", 50), metavar="N",
                     help="stop cleanly after step N (status interrupted; resume later)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run, parser=run)

    val = sub.add_parser("validate", help="check a chip file (and the device and circuit it uses)")
    val.add_argument("chip", metavar="CHIP", help="a shipped chip's name or a chip file's path")
    val.add_argument("--set", action="append", metavar="KEY=VALUE")
    val.add_argument("--show", action="store_true", help="print the fully resolved configuration as YAML on stdout "
                     "(a chip file of its own; the ok line goes to stderr)")
    val.set_defaults(func=cmd_validate, parser=val)

    lst = sub.add_parser("list", help="the shipped devices (and aihwkit's models by name), circuits or chips")
    lst.add_argument("kind", choices=["devices", "circuits", "chips"])
    lst.set_defaults(func=cmd_list, parser=lst)

    diag = sub.add_parser("diagnose", help="residual, cos(EP, BPTT) per group, leading eigenvalues")
    diag.add_argument("chip", nargs="?", metavar="CHIP", help="a shipped chip's name or a chip file's path: the "
                      "chip as programmed (default: the built-in default model); not together with --checkpoint")
    diag.add_argument("--checkpoint", help="a run directory (or its state.pt): its twins as trained")
    diag.add_argument("--twin", choices=["analog", "digital", "bptt"],
                      help="analog: the chip as read through its periphery (its effective conductances for "
                      "derivatives); digital/bptt: ideal weights. Default: analog with a chip file or a run that "
                      "trained one, else digital (built-in defaults) or the run's first twin")
    diag.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. relax.steps=200")
    diag.add_argument("--batch", type=_count("--batch", 4), default=4, help="validation sequences probed (default 4)")
    diag.add_argument("--json", action="store_true", help="one JSON object")
    diag.set_defaults(func=cmd_diagnose, parser=diag)

    from analog_ep.cli import studies

    studies.register(sub)  # sweep, compare, export, replay
    from analog_ep.cli import fit

    fit.register(sub)  # fit-device
    return ap


def main(argv=None) -> int:
    ap = parser()
    args, extra = ap.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, so the hint names its --help
        getattr(args, "parser", ap).error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except AnalogEPError as err:
        print(f"analog-ep: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"analog-ep: error: {err.filename}: file not found", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
