"""A sweep's definition: the chip, its overrides, the grid of swept values and the seeds.

Every point of the grid (one value per swept key) runs once per seed s = 0..N-1. A point is an
ordinary `analog-ep run CHIP --set ... --set KEY=VALUE ...`; seed s > 0 adds `--set` overrides
that offset every seed field of the run config (`seed_keys`: model initialisation, data order,
training batches and probes, the chip instance's device-to-device draw and mismatch) by s.

The whole grid is resolved and validated before anything runs: each point's config goes through
`load_config` (the same code `analog-ep run` uses), each distinct device through aihwkit and
each distinct corpus is read, and the first bad value is a one-line `ConfigError` naming the point.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml

from analog_ep.config import RunConfig, _suggest, load_config, read_yaml, to_dict
from analog_ep.errors import AnalogEPError, ConfigError

GRID_HELP = "e.g. --grid chip.periphery.adc_bits=4,6,8"


def seed_keys(cfg=None, prefix: str = "") -> tuple[str, ...]:
    """Dotted keys of every integer seed field of the run config (`seed` or `*_seed`)."""
    cfg = RunConfig() if cfg is None else cfg
    keys = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            keys += seed_keys(value, f"{prefix}{f.name}.")
        elif (f.name == "seed" or f.name.endswith("_seed")) and isinstance(value, int) and not isinstance(value, bool):
            keys.append(prefix + f.name)
    return tuple(keys)


def get_key(cfg, key: str):
    """The value of a dotted key of a (nested) config dataclass or mapping."""
    for part in key.split("."):
        cfg = cfg[part] if isinstance(cfg, dict) else getattr(cfg, part)
    return cfg


def value_text(value) -> str:
    """A value as one line of YAML: what `--set KEY=...` reads back as the same value."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


def _split_values(text: str) -> list[str]:
    """Split at commas outside brackets: 'a,[b, c],d' -> ['a', '[b, c]', 'd']."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items]


def _checked_values(key: str, values: list, source: str) -> list:
    if not values:
        raise ConfigError(key, values, "no values to sweep", "give at least one value", source)
    seen = []
    for v in values:
        if v in seen:
            raise ConfigError(key, values, f"repeats the value {value_text(v)}", "list each value once", source)
        seen.append(v)
    return values


def parse_grid(text: str) -> tuple[str, list]:
    """'KEY=V1,V2,...' -> (KEY, [values parsed as YAML]); a one-line ConfigError otherwise."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise ConfigError("--grid", text, "expected KEY=V1,V2,... with a dotted KEY", GRID_HELP)
    items = _split_values(raw)
    if any(item == "" for item in items):
        raise ConfigError("--grid", text, "empty value (two commas in a row, or a trailing comma?)", GRID_HELP)
    values = []
    for item in items:
        try:
            values.append(yaml.safe_load(item))
        except yaml.YAMLError:
            raise ConfigError("--grid", text, f"value {item!r} is not valid YAML", "quote strings, close brackets"
                              ) from None
    return key, _checked_values(key, values, "--grid")


def read_grid_file(path: str) -> dict[str, list]:
    """A grid file: a mapping from dotted keys to lists of values."""
    data = read_yaml(path, "grid file")
    grid = {}
    for key, values in data.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", key):
            raise ConfigError(str(key), values, "expected a dotted key", "e.g. chip.periphery.adc_bits: [4, 6, 8]",
                              str(path))
        if not isinstance(values, list):
            raise ConfigError(key, values, "expected a list of values", f"write it as {key}: [a, b, ...]", str(path))
        grid[key] = _checked_values(key, values, str(path))
    return grid


def _check_key(cfg, key: str, values) -> None:
    """`key` names a value of the run config (a mapping field, e.g. device overrides, takes any
    sub-key: its own checks run with the values)."""
    node = cfg
    for depth, part in enumerate(key.split(".")):
        if isinstance(node, dict):
            return
        names = [f.name for f in fields(node)] if is_dataclass(node) else []
        if part not in names:
            where = ".".join(key.split(".")[:depth]) or "the run config"
            raise ConfigError(key, values, f"unknown key ({where} has no {part!r})",
                              _suggest(part, names) if names else "", "--grid")
        node = getattr(node, part)
    if is_dataclass(node):
        raise ConfigError(key, values, "is a section, not a value",
                          f"sweep one of its keys, e.g. {key}.{fields(node)[0].name}", "--grid")


def _name_part(text: str) -> str:
    """A value as it may appear in a directory name."""
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", text).strip("_") or "_"


def short_keys(keys) -> dict[str, str]:
    """Each dotted key shortened to its shortest trailing part that no other key ends with."""
    keys = list(keys)
    short = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(k != key and (k == tail or k.endswith("." + tail)) for k in keys):
                break
        short[key] = tail
    return short


@dataclass(frozen=True)
class Point:
    """One grid point with one seed: one run directory `points/<name>`."""

    index: int
    """Row of the point in sweep.h5's table (grid order, seeds innermost)."""
    name: str
    """Directory name under `points/`."""
    values: tuple[tuple[str, object], ...]
    """(key, value) of every swept key."""
    seed: int
    """Seed offset s (0..N-1)."""
    overrides: tuple[str, ...]
    """`--set` texts this point adds to the sweep's own (swept values, then seed offsets)."""

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={value_text(v)}" for k, v in self.values) + f", seed {self.seed}"


@dataclass
class SweepDefinition:
    """The resolved sweep: what `sweep.h5` stores and a re-run must match."""

    chip: str | None
    """CHIP as given (a file path made absolute, so points run from any folder)."""
    overrides: tuple[str, ...]
    """The command's own `--set` (and `--steps`) overrides, applied to every point."""
    grid: dict[str, list]
    """Swept key -> values, in the order given."""
    seeds: int
    """Seeds per grid point."""
    base: RunConfig = field(repr=False, default=None)
    """The resolved config without swept values (chip + overrides)."""
    points: list[Point] = field(default_factory=list, repr=False)

    @classmethod
    def build(cls, chip: str | None, overrides=(), grid_args=(), grid_file: str | None = None, seeds: int = 1
              ) -> "SweepDefinition":
        """Parse, resolve and validate the whole sweep (one-line ConfigError on the first problem)."""
        if not isinstance(seeds, int) or seeds < 1:
            raise ConfigError("--seeds", seeds, "must be an integer >= 1", "e.g. --seeds 3")
        grid: dict[str, list] = {}
        for text in grid_args:
            key, values = parse_grid(text)
            if key in grid:
                raise ConfigError("--grid", text, f"{key} is swept twice", "give each key once")
            grid[key] = values
        if grid_file is not None:
            for key, values in read_grid_file(grid_file).items():
                if key in grid:
                    raise ConfigError(key, values, "also given by --grid", "sweep each key in one place", grid_file)
                grid[key] = values
        if not grid:
            raise ConfigError("--grid", None, "nothing to sweep", "give --grid KEY=V1,V2,... or --grid-file GRID.yaml")
        if chip is not None and Path(chip).is_file():
            chip = str(Path(chip).resolve())
        sweep = cls(chip, tuple(overrides), grid, seeds)
        sweep.base = load_config(chip, list(overrides))
        for key, values in grid.items():  # a key that does not exist, before any point
            _check_key(sweep.base, key, values)
        sweep.points = sweep._make_points()
        sweep.validate()
        return sweep

    @property
    def seed_keys(self) -> tuple[str, ...]:
        return seed_keys(self.base)

    def _make_points(self) -> list[Point]:
        keys = list(self.grid)
        short = short_keys(keys)
        points, names = [], set()
        for combo in itertools.product(*self.grid.values()):
            values = tuple(zip(keys, combo))
            sets = tuple(f"{k}={value_text(v)}" for k, v in values)
            for s in range(self.seeds):
                name = ",".join(_name_part(f"{short[k]}={value_text(v)}") for k, v in values) + f",seed={s}"
                if len(name) > 150 or name in names:
                    name = f"p{len(points):04d},{name[:140]}"
                names.add(name)
                points.append(Point(len(points), name, values, s, sets))
        return points

    def config(self, point: Point) -> RunConfig:
        """The point's resolved config, exactly as `analog-ep run` builds it from `run_args`."""
        return load_config(self.chip, [*self.overrides, *self.point_overrides(point)])

    def point_overrides(self, point: Point) -> tuple[str, ...]:
        if point.seed == 0:
            return point.overrides
        swept = load_config(self.chip, [*self.overrides, *point.overrides])
        return (*point.overrides, *(f"{k}={get_key(swept, k) + point.seed}" for k in seed_keys(swept)))

    def run_args(self, point: Point, out: Path) -> list[str]:
        """`analog-ep run` arguments of a fresh point."""
        args = ["run"] + ([self.chip] if self.chip is not None else [])
        for text in [*self.overrides, *self.point_overrides(point)]:
            args += ["--set", text]
        return args + ["--out", str(out), "--quiet"]

    def validate(self) -> None:
        """Resolve every point, check each distinct device and corpus: a one-line error naming the
        first bad point."""
        from analog_ep.hardware.device import check_device_config
        from analog_ep.run.loop import load_data

        devices, corpora = set(), set()
        for point in self.points:
            where = f"--grid point {point.label}"
            try:
                cfg = self.config(point)
                device = yaml.safe_dump(to_dict(cfg.chip.device))
                if device not in devices and "analog" in cfg.train.twins:
                    check_device_config(cfg.chip.device)
                    devices.add(device)
                data = yaml.safe_dump(to_dict(cfg.data))
                if data not in corpora:
                    load_data(cfg)
                    corpora.add(data)
            except ConfigError as err:
                raise ConfigError(err.key, err.value, err.problem, err.fix, where) from None
            except AnalogEPError as err:
                raise ConfigError("point", point.name, str(err), "", where) from None

    # ---- what sweep.h5 stores --------------------------------------------------------------
    def resolved(self) -> dict:
        """What must match for a re-run to resume: the resolved base config, grid and seeds."""
        return {"base": to_dict(self.base), "grid": {k: list(v) for k, v in self.grid.items()}, "seeds": self.seeds}

    def to_yaml(self) -> str:
        return yaml.safe_dump({"chip": self.chip, "overrides": list(self.overrides), "seed_keys": list(self.seed_keys),
                               **self.resolved()}, sort_keys=False)

    def difference(self, stored_yaml: str) -> str | None:
        """None when a stored definition matches this one, else the first difference in words."""
        stored = yaml.safe_load(stored_yaml) or {}
        now = self.resolved()
        for part in ("grid", "seeds", "base"):
            a, b = _flatten(stored.get(part)), _flatten(now[part])
            for key in sorted(set(a) | set(b), key=lambda k: (k not in b, k)):
                if a.get(key, "<absent>") != b.get(key, "<absent>"):
                    name = part if key == "" else (key if part == "base" else f"{part}.{key}")
                    return f"{name}: stored {value_text(a.get(key, '<absent>'))}, now {value_text(b.get(key, '<absent>'))}"
        return None


def _flatten(data, prefix: str = "") -> dict:
    if isinstance(data, dict) and data:
        out = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}
