"""Device-programming schedules: what the simulated chip received, for a real chip's lab tools.

`export_schedule(run_dir)` writes an HDF5 file (layout in `DESCRIPTION`, stored in the file
itself) that h5py, numpy and zlib alone decode: the chip (arrays, tile grid, device model and
every one of its parameters, the chip seed and each tile's construction seed), the initial
programming (per device: target weight, target conductance, the program-and-verify pulses), every
training pulse per step and tile packed as the pulse ledger holds it, a pulse summary per device
(endurance), and the final conductances of every device as the expected end state. As CSV it is
one line per pulse.

`replay_schedule(path)` builds fresh tiles from the schedule's device and chip seed (or another
chip's), programs them, sends every pulse in order and compares the result with the schedule's
final conductances. Without cycle-to-cycle noise (aihwkit `dw_min_std` and `write_noise_std` 0)
the replay is exact, device-to-device variation included: the tiles are rebuilt from the same
construction seeds. With it, each pulse's step is a fresh random draw, so the replay is another
sample of the same schedule: per device the two differ by a random walk of
dw_min_std x dw x sqrt(2 n) after n pulses of step dw (the device's own, drawn device to device).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import torch

from analog_ep.atomic import atomic_write
from analog_ep.errors import ConfigError

FORMAT = "analog-ep device-programming schedule"
FORMAT_VERSION = 1

DESCRIPTION = """\
analog-ep device-programming schedule, format_version 1. Conductances are in aihwkit tile weight
units (the device's normalised conductance, e.g. [-0.75, 0.75] for ReRamSB; g = units / w_max x
G_max in siemens); weights in model units: weight = scale x (G_plus - G_minus) for a differential
pair, scale x G otherwise. Matrices are (in, out): inputs drive crossbar rows, outputs are read on
columns; matrix element (i, j) is device (i mod tile_rows, j mod tile_cols) of tile
(i div tile_rows, j div tile_cols). Arrays of shape (devices_per_cell, in, out) list G for one
device per cell, or (G_plus, G_minus) for a pair: a +1 pulse goes to G_plus, a -1 pulse to G_minus.
/ attrs: format, format_version, description (this text), created_by, source_run, run_status,
  steps (training steps done), config (the run's resolved YAML), chip_seed, device_model,
  device_overrides (JSON), device_parameters (JSON: every aihwkit parameter of the cell's
  device), differential, devices_per_cell, tile_rows, tile_cols, programming ('ideal': devices set
  exactly to their targets; 'verify': from zero, program-and-verify pulses), program_tolerance,
  write, cycle_noise (true: pulses draw cycle-to-cycle noise, replays differ), noise_state
  ('none': the noise generator's state is not stored; a later version may store it in /noise)
/arrays/<name> attrs: shape (in, out), grid (tiles), scale (model units per conductance unit),
  pulse_step (model units of one nominal pulse, dw_min x scale)
  construction_seed (grid) int64: aihwkit construction seed of each tile (device-to-device draw)
  target_weight (in, out) float32: initial weight
  target_conductance (in, out) float32: target_weight / scale (the cell's G_plus - G_minus)
  programmed_conductance (devices_per_cell, in, out) float32: each device after programming
  program_pulses (in, out) int32: pulses program-and-verify sent to the cell
  final_conductance (devices_per_cell, in, out) float32: each device at the end (expected state)
  final_weight (in, out) float32: the weight the final conductances hold
  pulses (2, in, out) int64: up (+1) and down (-1) pulses the cell received, programming and
  training together
/pulses: the pulse ledger, every round in order (phase 'program' then 'train'); how to unpack
  it is in its attributes 'packing' and 'index_description' (zlib, numpy.unpackbits)
/summary attrs: total_pulses, program_pulses, train_pulses, max_pulses_per_device (the most
  pulses any single device received: endurance), max_pulses_array, max_pulses_at (row, column)
"""


# ---- export ------------------------------------------------------------------------------------

def _load_run(run_dir: Path):
    """(resolved config, run.h5 attributes, the analog twin's state, the ledger) of a run."""
    from analog_ep.hardware.ledger import PulseLedger, LedgerError
    from analog_ep.run.loop import run_config

    if not run_dir.is_dir() or not (run_dir / "run.h5").is_file():
        raise ConfigError("export", str(run_dir), "not a run directory (no run.h5)",
                          "pass a directory written by analog-ep run")
    if not (run_dir / "state.pt").is_file():
        raise ConfigError("export", str(run_dir), "no state.pt (the run's final device states)",
                          "export a run that reached its first checkpoint")
    cfg = run_config(run_dir)
    if "analog" not in cfg.train.twins:
        raise ConfigError("train.twins", list(cfg.train.twins), "the run has no analog twin: no chip, no pulses",
                          "export a run whose train.twins include analog", str(run_dir))
    if cfg.chip.write == "ideal":
        raise ConfigError("chip.write", "ideal", "ideal writes set weights exactly and send no pulses: "
                          "there is no schedule to export", "run with chip.write: sign_pulse or quantized",
                          str(run_dir))
    try:
        state = torch.load(run_dir / "state.pt", map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many unrelated types for a damaged file
        raise ConfigError("export", str(run_dir / "state.pt"), f"not a readable run state ({type(err).__name__})",
                          "resume or re-run the run") from None
    analog = state.get("twins", {}).get("analog", {})
    if "schedule" not in analog:
        raise ConfigError("export", str(run_dir), "state.pt holds no per-device conductances (written by an "
                          "analog-ep from before schedule export)", "run it again to export its schedule")
    try:
        with h5py.File(run_dir / "run.h5", "r") as f:
            attrs = dict(f.attrs)
            ledger = PulseLedger.from_hdf5(f["pulses"])
    except (OSError, KeyError, LedgerError) as err:
        raise ConfigError("export", str(run_dir / "run.h5"), f"unreadable pulse ledger ({err})",
                          "resume or re-run the run") from None
    if int(attrs.get("steps_done", -1)) != int(state["step"]):
        raise ConfigError("export", str(run_dir), f"run.h5 (step {attrs.get('steps_done')}) and state.pt "
                          f"(step {state['step']}) are from different checkpoints",
                          "resume the run once so both are rewritten together")
    return cfg, attrs, analog["schedule"], ledger


def pulse_counts(ledger, arrays: dict[str, tuple[int, int]], tile: tuple[int, int], phase: str | None = None
                 ) -> dict[str, np.ndarray]:
    """Per array, (2, in, out) int64: up and down pulses each cell received (all phases or one)."""
    counts = {name: np.zeros((2, *shape), np.int64) for name, shape in arrays.items()}
    if phase is not None and phase not in ledger.phases:
        return counts
    for _, array, (tr, tc), signs in ledger.rounds(phase=phase):
        r0, c0 = tr * tile[0], tc * tile[1]
        rows, cols = signs.shape
        counts[array][0, r0:r0 + rows, c0:c0 + cols] += signs == 1
        counts[array][1, r0:r0 + rows, c0:c0 + cols] += signs == -1
    return counts


def _device_parameters(device) -> str:
    """Every parameter of the aihwkit device a cell is made of, as JSON."""
    import dataclasses

    dev = device.device(0)
    params = {}
    for f in dataclasses.fields(dev):
        value = getattr(dev, f.name)
        if f.name == "construction_seed":
            continue
        params[f.name] = value if isinstance(value, (bool, int, float, str)) or value is None else str(value)
    return json.dumps({"class": type(dev).__name__, **params})


def cycle_noise(device) -> bool:
    """Does a pulse on this device draw cycle-to-cycle noise (so replays differ)?"""
    dev = device.device(0)
    return any(float(getattr(dev, key, 0.0) or 0.0) > 0 for key in ("dw_min_std", "write_noise_std"))


def export_schedule(run_dir, fmt: str = "h5", out=None) -> dict:
    """Write the run's schedule (HDF5 or CSV); returns what was written (path, pulses, ...)."""
    from analog_ep import __version__
    from analog_ep.config import dump_yaml
    from analog_ep.hardware.device import construction_seed
    from analog_ep.run.status import read_status

    run_dir = Path(run_dir)
    if fmt not in ("h5", "csv"):
        raise ConfigError("--format", fmt, "unknown format", "use h5 or csv")
    path = Path(out) if out is not None else run_dir / f"schedule.{fmt}"
    if path.exists():
        raise ConfigError("--out", str(path), "already exists", "choose another --out, or remove the file first")
    if not path.parent.is_dir():
        raise ConfigError("--out", str(path), f"directory {path.parent} does not exist", "create it first")
    cfg, attrs, chip_state, ledger = _load_run(run_dir)
    chip = cfg.chip
    if fmt == "csv":
        pulses = ledger.to_csv(path)
        return {"path": str(path), "format": "csv", "pulses": pulses, "rounds": len(ledger)}

    tile = (chip.tile_rows, chip.tile_cols)
    shapes = {name: tuple(s["shape"]) for name, s in chip_state.items()}
    counts = pulse_counts(ledger, shapes, tile)
    program = pulse_counts(ledger, shapes, tile, "program")
    devices = 2 if chip.device.differential else 1
    per_device = {}  # pulses each device received: both kinds on a single device; + to G_plus, - to G_minus
    for name, c in counts.items():
        per_device[name] = c.sum(axis=0, keepdims=True) if devices == 1 else c
    worst = max(per_device, key=lambda n: int(per_device[n].max()))
    worst_at = np.unravel_index(int(per_device[worst].argmax()), per_device[worst].shape)
    totals = {"total_pulses": int(sum(c.sum() for c in counts.values())),
              "program_pulses": int(sum(c.sum() for c in program.values()))}
    totals["train_pulses"] = totals["total_pulses"] - totals["program_pulses"]
    status, _ = read_status(run_dir)

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            f.attrs.update({
                "format": FORMAT, "format_version": FORMAT_VERSION, "description": DESCRIPTION,
                "created_by": f"analog-ep {__version__}", "source_run": str(run_dir.resolve()),
                "run_status": status, "steps": int(attrs["steps_done"]), "config": dump_yaml(cfg),
                "chip_seed": chip.seed, "device_model": chip.device.model,
                "device_overrides": json.dumps(chip.device.overrides),
                "device_parameters": _device_parameters(chip.device), "differential": chip.device.differential,
                "devices_per_cell": devices, "tile_rows": chip.tile_rows, "tile_cols": chip.tile_cols,
                "programming": chip.program, "program_tolerance": chip.program_tolerance, "write": chip.write,
                "cycle_noise": cycle_noise(chip.device), "noise_state": "none",
            })
            for name, s in chip_state.items():
                g = f.create_group(f"arrays/{name}")
                shape = shapes[name]
                grid = (math.ceil(shape[0] / tile[0]), math.ceil(shape[1] / tile[1]))
                final = s["final"].numpy()
                cell = final[0] - final[1] if devices == 2 else final[0]
                g.attrs.update({"shape": shape, "grid": grid, "scale": s["scale"],
                                "pulse_step": chip.device.dw_min * s["scale"]})
                g["construction_seed"] = np.array([[construction_seed(chip.seed, name, (r, c)) for c in range(grid[1])]
                                                   for r in range(grid[0])], np.int64)
                g["target_weight"] = s["target"].numpy()
                g["target_conductance"] = (s["target"] / s["scale"]).numpy()
                g["programmed_conductance"] = s["programmed"].numpy()
                g["program_pulses"] = program[name].sum(axis=0).astype(np.int32)
                g["final_conductance"] = final
                g["final_weight"] = (s["scale"] * cell.astype(np.float64)).astype(np.float32)
                g.create_dataset("pulses", data=counts[name], compression="gzip")
            ledger.to_hdf5(f.create_group("pulses"))
            f.create_group("summary").attrs.update({
                **totals, "max_pulses_per_device": int(per_device[worst].max()), "max_pulses_array": worst,
                "max_pulses_at": np.array(worst_at[1:], np.int64)})

    atomic_write(path, write)
    return {"path": str(path), "format": "h5", "pulses": totals["total_pulses"], "rounds": len(ledger),
            "max_pulses_per_device": int(per_device[worst].max())}


# ---- replay ------------------------------------------------------------------------------------

def _open_schedule(path: Path) -> h5py.File:
    if not path.is_file():
        raise ConfigError("replay", str(path), "no such file", "pass a schedule written by analog-ep export")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise ConfigError("replay", str(path), "not an HDF5 file", "pass a schedule written by analog-ep export "
                          "(the CSV form holds only the pulses)") from None
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise ConfigError("replay", str(path), "not a device-programming schedule",
                          "pass a file written by analog-ep export")
    if int(f.attrs.get("format_version", 0)) > FORMAT_VERSION:
        f.close()
        raise ConfigError("replay", str(path), f"format_version {f.attrs['format_version']} is newer than this "
                          f"analog-ep reads ({FORMAT_VERSION})", "upgrade analog-ep")
    return f


def _pulse_steps(arr) -> np.ndarray:
    """(2, in, out): the step (conductance units) a +1 and a -1 pulse make on each cell, as drawn
    device to device (aihwkit's hidden dwmin_up / dwmin_down; for a pair, the step of the device
    each pulse goes to: G_plus for +1, G_minus for -1)."""
    steps = np.zeros((2, *arr.shape))
    for (r, c), tile in arr.tiles.items():
        names = tile.tile.get_hidden_parameter_names()
        hidden = tile.tile.get_hidden_parameters()
        keys = (("dwmin_up_1", "dwmin_down_1"), ("dwmin_up_0", "dwmin_down_0")) if arr.devices_per_cell == 2 else (
            ("dwmin_up",), ("dwmin_down",))
        r0, c0 = r * arr.tile_rows, c * arr.tile_cols
        for k, device_keys in enumerate(keys):  # a one-sided device's steps: the mean of its two
            block = sum(hidden[names.index(key)].abs() for key in device_keys) / len(device_keys)
            steps[k, r0:r0 + block.shape[1], c0:c0 + block.shape[0]] = block.t().numpy()
    return steps


def replay_schedule(path, chip: str | None = None) -> dict:
    """Replay a schedule on fresh tiles; the report (see module docstring)."""
    from analog_ep.config import load_config
    from analog_ep.hardware.device import DeviceConfig
    from analog_ep.hardware.ledger import PulseLedger
    from analog_ep.hardware.tiles import CrossbarArray

    path = Path(path)
    with _open_schedule(path) as f:
        tile = (int(f.attrs["tile_rows"]), int(f.attrs["tile_cols"]))
        device = DeviceConfig(str(f.attrs["device_model"]), json.loads(f.attrs["device_overrides"]),
                              bool(f.attrs["differential"]))
        seed = int(f.attrs["chip_seed"])
        if chip is not None:
            cfg = load_config(chip).chip
            if (cfg.tile_rows, cfg.tile_cols) != tile:
                raise ConfigError("--chip", chip, f"tiles of {cfg.tile_rows}x{cfg.tile_cols}, the schedule's are "
                                  f"{tile[0]}x{tile[1]}", "replay on a chip with the schedule's tile size")
            if cfg.device.differential != device.differential:
                raise ConfigError("--chip", chip, f"chip.device.differential={cfg.device.differential}, the "
                                  f"schedule's cells are {'pairs' if device.differential else 'single devices'}",
                                  "replay on a chip with the same cell type")
            device, seed = cfg.device, cfg.seed
        programming = str(f.attrs["programming"])
        arrays, finals, scales = {}, {}, {}
        for name, g in f["arrays"].items():
            shape = tuple(int(v) for v in g.attrs["shape"])
            scales[name] = float(g.attrs["scale"])
            arr = CrossbarArray(name, shape, device, tile[0], tile[1], seed, scales[name], ledger=None)
            start = g["target_weight"][()] if programming == "ideal" else np.zeros(shape, np.float32)
            arr.set(torch.from_numpy(start))
            arrays[name], finals[name] = arr, g["final_conductance"][()]
        ledger = PulseLedger.from_hdf5(f["pulses"])
        total = int(f["summary"].attrs["total_pulses"])
        per_cell = {name: g["pulses"][()] for name, g in f["arrays"].items()}
    dw_std = float(getattr(device.device(0), "dw_min_std", 0.0) or 0.0)
    # Two draws of the same pulses: per cell a random walk of variance 2 dw_std^2 sum(step^2).
    walk = {name: 2 * dw_std ** 2 * (per_cell[name] * _pulse_steps(arr) ** 2).sum(axis=0) for name, arr in arrays.items()}
    applied = 0
    for step, array, where, signs in ledger.rounds():
        applied += arrays[array].pulse_tile(where, torch.from_numpy(signs), step)
    weight_err, cond_err, steps_err = [], [], []
    per_array = {}
    for name, arr in arrays.items():
        got, want = arr.device_conductances().numpy(), finals[name]
        cell = lambda g: g[0] - g[1] if len(g) == 2 else g[0]
        w = np.abs(scales[name] * (cell(got).astype(np.float64) - cell(want)))
        weight_err.append(w.ravel())
        cond_err.append(np.abs(got.astype(np.float64) - want).ravel())
        steps_err.append((np.abs(cell(got).astype(np.float64) - cell(want)) / device.dw_min).ravel())
        per_array[name] = float(w.max())
    weight_err, cond_err = np.concatenate(weight_err), np.concatenate(cond_err)
    steps_err = np.concatenate(steps_err)
    expected = float(np.sqrt(np.concatenate([v.ravel() for v in walk.values()]).mean()) / device.dw_min)
    noisy = cycle_noise(device)
    report = {
        "schedule": str(path), "device": device.model, "chip_seed": seed, "cycle_noise": noisy,
        "pulses_applied": applied, "pulses_in_schedule": total,
        "max_abs_weight_error": float(weight_err.max()), "max_abs_conductance_error": float(cond_err.max()),
        "exact": bool(weight_err.max() == 0 and cond_err.max() == 0), "per_array": per_array,
    }
    if noisy or not report["exact"]:
        report["error_distribution"] = {
            "mean_abs_weight_error": float(weight_err.mean()),
            "rms_weight_error": float(np.sqrt((weight_err ** 2).mean())),
            "pulse_steps": {"p50": float(np.percentile(steps_err, 50)), "p90": float(np.percentile(steps_err, 90)),
                            "p99": float(np.percentile(steps_err, 99)), "max": float(steps_err.max()),
                            "rms": float(np.sqrt((steps_err ** 2).mean()))},
            # what cycle-to-cycle noise alone gives: dw_min_std x sqrt(2 n) of each device's own steps
            "expected_rms_pulse_steps": expected,
        }
    return report
