"""`analog-ep fit-device DATA`: fit a device model to measured pulse data and write a device file."""
from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

from analog_ep.errors import ConfigError


def cmd_fit_device(args) -> int:
    from analog_ep.atomic import atomic_write
    from analog_ep.hardware.fit import device_yaml, fit_device, model_name, plot_fit, read_pulses

    model = model_name(args.model)  # bad names and units fail before the data are read
    name = args.name or Path(args.data).stem
    out = Path(args.out or Path("devices") / f"{name}.yaml")
    plot = Path(args.plot) if args.plot else None
    for path, flag in ((out, "--out"), (plot, "--plot")):
        if path is not None and path.exists() and not args.force:
            raise ConfigError(flag, str(path), "exists", "give another path, or --force to replace it")
    data = read_pulses(data_file(args.data), args.unit)
    fit = fit_device(data, model, args.one_sided)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = device_yaml(fit, name, datetime.date.today().isoformat())
    from analog_ep.config import DeviceConfig, read_yaml

    atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    DeviceConfig(**read_yaml(out, "device file")["device"])  # the file loads as written
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_fit(fit, plot)
    if args.json:
        print(json.dumps({"model": fit.model, "device_file": str(out), "plot": str(plot) if plot else None,
                          "parameters": {k: {"value": v, "stderr": _finite(fit.stderr.get(k))}
                                         for k, v in fit.overrides.items()},
                          "read_noise": {"value": fit.read_noise.value, "stderr": _finite(fit.read_noise.stderr)},
                          "g0_siemens": fit.g0, "siemens_per_unit": fit.siemens_per_unit,
                          "table": [{"model": m, "rms": r, "bic": b, "k": k} for m, r, b, k in fit.table]}))
        return 0
    print(f"{'model':<14} {'rms step':>10} {'BIC':>12} {'k':>3}")
    for m, rms, bic, k in fit.table:
        print(f"{m:<14} {rms:>10.3g} {bic:>12.1f} {k:>3}{'  <- chosen' if m == fit.model else ''}")
    ov = fit.overrides
    print(f"{fit.model}: dw_min {ov['dw_min']:.3g}, w_min {ov['w_min']:.3g}, w_max {ov['w_max']:.3g}, "
          f"up_down {ov['up_down']:.3g}, dw_min_std {ov['dw_min_std']:.3g}")
    print(f"wrote {out}" + (f" and {plot}" if plot else ""))
    return 0


def data_file(text: str) -> Path:
    """DATA as given, or, where no such file exists, the shipped measurement of that name
    (`data/` beside the shipped devices: `gong_et_al_pulse_response.csv` from any folder)."""
    from analog_ep.config import shipped_root

    path, shipped = Path(text), shipped_root() / "data" / text
    return shipped if not path.exists() and len(path.parts) == 1 and shipped.is_file() else path


def _finite(value):
    return value if value is not None and math.isfinite(value) else None


def register(sub) -> None:
    """Add `fit-device` to `analog-ep`'s subparsers."""
    from analog_ep.hardware.fit import MODEL_NAMES, UNITS

    fit = sub.add_parser("fit-device", help="fit a device model to measured pulse data; a device file and a plot")
    fit.add_argument("data", metavar="DATA", help="CSV: long format device,cycle,pulse,direction,conductance, "
                     "or aihwkit's two columns (up ramp, down ramp); a shipped file's name from any folder")
    fit.add_argument("--model", default="auto", help=f"auto (lowest BIC) or one of {', '.join(MODEL_NAMES)}")
    fit.add_argument("--one-sided", action="store_true", help="up pulses only: fit the up branch, write a pair")
    fit.add_argument("--unit", default="S", help=f"conductance unit: {', '.join(UNITS)} (default S)")
    fit.add_argument("--name", help="the device's name (default: DATA's stem)")
    fit.add_argument("--out", help="device file to write (default devices/NAME.yaml)")
    fit.add_argument("--plot", metavar="PNG", help="also draw the fit (pulse response, step against state)")
    fit.add_argument("--force", action="store_true", help="replace existing output files")
    fit.add_argument("--json", action="store_true", help="one JSON object")
    fit.set_defaults(func=cmd_fit_device, parser=fit)
