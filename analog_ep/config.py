"""The run configuration: dataclasses are the schema, YAML holds data, `--set a.b=c` overrides.

`RunConfig` nests every stage's config (`analog_ep.schema`, where every default lives).
`load_config` composes a chip file (with the device and circuit files it uses) onto the defaults
and applies overrides; every problem (unknown key with a did-you-mean, wrong type, out-of-range
value, missing file) is a `ConfigError` whose message names the file and the key. Neither this
module nor the schema imports torch or aihwkit: listing and loading stay fast (a device's
parameter overrides are checked against aihwkit, which is then imported).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml

from analog_ep.errors import ConfigError
from analog_ep.schema import (DATA_KINDS, MODEL_DATA, MODEL_KINDS,  # noqa: F401  (re-exported:
                              ChipConfig, CircuitConfig, CircuitFile, DeviceConfig,  # every section from here)
                              DigitsDataConfig, EnergyConfig, EPConfig, MLPConfig, MonitorConfig, OptimizerConfig,
                              PeripheryConfig, RelaxConfig, ScheduleConfig, SettleConfig, StabilizerConfig,
                              TextDataConfig, TrainConfig, TransformerConfig)

#: Sections whose config class is chosen by their `kind` key: section -> {kind: class}.
KINDS = {"model": MODEL_KINDS, "data": DATA_KINDS}
#: Inputs and classes of each classification data kind (the MLP's widths follow them).
CLASSIFICATION_SHAPES = {"digits": (64, 10)}


@dataclass
class RunConfig:
    """Everything one run needs; the resolved form is saved beside every result."""

    model: TransformerConfig | MLPConfig = field(default_factory=TransformerConfig)
    """The model, chosen by `model.kind`: 'transformer' (the equilibrium transformer block; its
    vocab_size and context follow the data) or 'mlp' (the equilibrium MLP; its inputs and classes
    follow the data)."""
    data: TextDataConfig | DigitsDataConfig = field(default_factory=TextDataConfig)
    """The data, chosen by `data.kind`: 'text' (a character-level corpus, default CPython's
    documentation text; trains the transformer) or 'digits' (scikit-learn's digits; trains the MLP)."""
    relax: RelaxConfig = field(default_factory=RelaxConfig)
    """Free-phase relaxation."""
    ep: EPConfig = field(default_factory=EPConfig)
    """Nudged phases and the EP estimator."""
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizer."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Learning-rate schedule (total_steps follows train.steps)."""
    stabilizers: StabilizerConfig = field(default_factory=StabilizerConfig)
    """Stabilisers around each step."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training loop and which twins run."""
    chip: ChipConfig = field(default_factory=ChipConfig)
    """The analog twin's chip: device, periphery, tiles, writes (from `uses.device` + inline)."""
    circuit: CircuitFile = field(default_factory=CircuitFile)
    """The analog twin's relaxation circuit: node dynamics, settle protocol and energy constants
    (from `uses.circuit` + inline)."""

    def resolve(self) -> "RunConfig":
        """A new, re-validated config with the fields that must agree tied together: the model's
        context is the data's (transformer), its inputs and classes the data's (MLP), the schedule
        spans `train.steps`, and a run shorter than its warmup warms up for a fifth of its steps.
        A model kind that cannot train on the data kind is a ConfigError. `self` is left
        unchanged; explicit keys carry over."""
        model_kind, data_kind = self.model.kind, self.data.kind
        if data_kind not in MODEL_DATA[model_kind]:
            other = next(k for k, kinds in MODEL_DATA.items() if data_kind in kinds)
            raise ConfigError("data.kind", data_kind, f"model.kind {model_kind} trains on "
                              f"{' or '.join(MODEL_DATA[model_kind])} data",
                              f"set data.kind: {MODEL_DATA[model_kind][0]}, or model.kind: {other}")
        steps = self.train.steps
        warmup = self.schedule.warmup if self.schedule.warmup < steps else steps // 5
        out = copy.deepcopy(self)  # no section is shared with `self`
        if model_kind == "transformer":
            out.model = dataclasses.replace(out.model, context=self.data.context)
        else:
            inputs, classes = CLASSIFICATION_SHAPES[data_kind]
            out.model = dataclasses.replace(out.model, inputs=inputs, classes=classes)
        out.schedule = dataclasses.replace(out.schedule, total_steps=steps, warmup=warmup)
        return out


#: Where the explicitly set keys ride on a RunConfig (not a field: not part of the schema, not
#: compared, not dumped; copies and `resolve()` keep it).
_EXPLICIT = "_explicit_keys"


def explicit_keys(cfg) -> frozenset[str]:
    """The dotted keys (e.g. 'ep.restarts') the chip file itself or `--set` gave a value.

    Not the defaults, and not what the device and circuit files a chip `uses:` supply. A
    dict-valued key (a device's `overrides`) is listed whole and per entry
    ('chip.device.overrides', 'chip.device.overrides.dw_min'). Carried by `load_config`'s result
    and through `resolve()`. A stored run configuration (config.yaml, run.h5, state.pt) holds
    resolved values only: reloading it for `--resume` or `diagnose --checkpoint` gives no
    explicit keys but those of the new `--set`s, and loading it as a chip file makes every key
    explicit (it then *is* the chip file).
    """
    return getattr(cfg, _EXPLICIT, frozenset())


def with_explicit_keys(cfg: RunConfig, keys) -> RunConfig:
    """`cfg` carrying `keys` (in place; returns it)."""
    object.__setattr__(cfg, _EXPLICIT, frozenset(keys))
    return cfg


def dotted_keys(data: dict, obj=None, prefix: str = "") -> set[str]:
    """The dotted keys a (validated) mapping sets on dataclass `obj` (RunConfig by default)."""
    obj = RunConfig() if obj is None else obj
    keys = set()
    for key, value in data.items():
        full, current = f"{prefix}{key}", getattr(obj, key)
        if prefix == "" and key in KINDS and isinstance(value, dict) and value.get("kind") in KINDS[key]:
            current = KINDS[key][value["kind"]]()  # the section's keys are those of its kind
        if is_dataclass(current) and isinstance(value, dict):
            keys |= dotted_keys(value, current, full + ".")
            continue
        keys.add(full)
        if isinstance(current, dict) and isinstance(value, dict):
            keys |= {f"{full}.{k}" for k in value}
    return keys


def to_dict(obj) -> dict:
    """Plain nested dict of a (nested) config dataclass, tuples as lists (YAML friendly)."""
    def plain(v):
        if is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v
    return plain(obj)


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(options)}"


#: Keys renamed since 0.1.0, per section: old name -> new name (a one-line error says which).
RENAMED = {CircuitFile: {"circuit": "dynamics"}}


def _coerce(value, hint, key: str, source: str):
    """Check/convert a YAML value to the annotated type; raises ConfigError on mismatch."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                continue
        raise ConfigError(key, value, f"expected {_type_name(hint)}", "fix the value's type", source)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, value, "expected a list", "write it as [a, b, ...]", source)
        args = typing.get_args(hint)
        item = args[0] if args else typing.Any
        return tuple(_coerce(v, item, key, source) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, value, "expected true or false", "write true or false, unquoted", source)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, value, "expected an integer", "write a whole number, e.g. 64", source)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 2e-7 without a dot as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(key, value, "expected a number", "write a number, e.g. 1.0e-3", source)
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, value, "expected a string", "quote it", source)
    return value


def _type_name(hint) -> str:
    """A type hint in words, for messages."""
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    args = typing.get_args(hint) or (hint,)
    return " or ".join(names.get(a, getattr(a, "__name__", str(a))) for a in args)


def merge(obj, data: dict, source: str, prefix: str = ""):
    """Return a copy of dataclass `obj` with the mapping `data` applied (validated, recursive)."""
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "<root>", data, "expected a mapping of keys",
                          "write `key: value` lines under it, e.g. model: {width: 64}", source)
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in fields(obj)]
    changes = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            new = RENAMED.get(type(obj), {}).get(key)
            if new is not None:
                raise ConfigError(full, value, f"renamed to {prefix}{new}", f"write {new}: instead of {key}:", source)
            raise ConfigError(full, value, "unknown key", _suggest(str(key), names), source)
        current = getattr(obj, key)
        if is_dataclass(current) and isinstance(value, dict) and "kind" in value and prefix == "" \
                and key in KINDS and value["kind"] != current.kind:
            current = _of_kind(key, value["kind"], source)
        if is_dataclass(current):
            changes[key] = merge(current, value, source, full + ".")
        elif isinstance(current, dict) and isinstance(value, dict):  # e.g. device overrides: key-wise
            changes[key] = {**current, **value}
        else:
            changes[key] = _coerce(value, hints[key], full, source)
    try:
        return dataclasses.replace(obj, **changes)
    except ConfigError as err:  # re-raise with the full dotted key and the source
        raise ConfigError(_dotted(prefix, err.key), err.value, err.problem, err.fix, source) from None


def _of_kind(section: str, kind, source: str):
    """The default config of `section`'s kind `kind`, or a one-line ConfigError naming the kinds."""
    kinds = KINDS[section]
    if not isinstance(kind, str) or kind not in kinds:
        raise ConfigError(f"{section}.kind", kind, f"unknown {section} kind", f"use one of {', '.join(kinds)}",
                          source)
    return kinds[kind]()


def _dotted(prefix: str, key: str) -> str:
    """`prefix` + `key`, where a config's own check may already name its section ('optim.name'
    under 'optim.' stays 'optim.name', 'heads' under 'model.' becomes 'model.heads')."""
    section = prefix.rstrip(".").rpartition(".")[2]
    if section and key.startswith(section + "."):
        key = key[len(section) + 1:]
    return f"{prefix}{key}"


def parse_override(text: str) -> dict:
    """'a.b=c' -> {'a': {'b': <c parsed as YAML>}}."""
    if "=" not in text:
        raise ConfigError("--set", text, "expected key=value", "e.g. --set train.steps=100", "command line")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


#: Where `uses:` names are looked up, relative to the chip file's folder's parent (the repo layout
#: devices/, circuits/, chips/ side by side).
LIBRARIES = {"device": "devices", "circuit": "circuits"}
#: The folder of each kind of library file.
FOLDERS = {**LIBRARIES, "chip": "chips"}
_PACKAGE = Path(__file__).resolve().parent


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise _DuplicateKey(key, key_node.start_mark.line + 1, seen[key])
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep)


class _DuplicateKey(Exception):
    def __init__(self, key, line: int, first: int):
        self.key, self.line, self.first = key, line, first


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: str | Path, what: str = "config file") -> dict:
    """A YAML mapping from a file, or a one-line ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(what, str(path), "not found", "check the path")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as err:
        raise ConfigError("encoding", f"byte {err.start}", "the file is not UTF-8 text",
                          "save it as UTF-8", str(path)) from None
    except _DuplicateKey as err:
        raise ConfigError(str(err.key), f"line {err.line}", f"given twice (first at line {err.first})",
                          "keep one of them", str(path)) from None
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        if line is None and isinstance(err, yaml.reader.ReaderError):  # a control character: position only
            line = p.read_text(encoding="utf-8")[: err.position].count("\n")
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError("yaml", str(path), f"not valid YAML{where}", "fix the syntax", str(path)) from None
    if data is None:
        raise ConfigError("<root>", "", f"the {what} is empty", "write at least its sections (e.g. "
                          "uses: {device: reram_sb, circuit: rc_crossbar}), or omit it for the defaults", str(path))
    if not isinstance(data, dict):
        raise ConfigError("<root>", type(data).__name__, "expected a mapping of sections",
                          "write `section: {key: value}` lines at the top level", str(path))
    return data


def shipped_root() -> Path:
    """The folder holding the shipped devices/, circuits/ and chips/.

    An installed wheel carries them inside the package (`analog_ep/library/`, copied there at
    build time by setup.py); a source checkout or an editable install reads the repository's
    top-level folders themselves.
    """
    packaged = _PACKAGE / "library"
    return packaged if packaged.is_dir() else _PACKAGE.parent


def library(kind: str, root: Path | None = None) -> dict[str, Path]:
    """name -> file of the shipped (or, with `root`, a project's) devices / circuits / chips."""
    folder = (root or shipped_root()) / FOLDERS[kind]
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


#: Words whose full stop does not end a sentence in a file header.
_ABBREVIATIONS = ("al.", "e.g.", "i.e.", "cf.", "vs.", "Fig.", "Eq.", "Ref.")


def describe(path: Path) -> str:
    """The first sentence of a library file's header comment (what `analog-ep list` prints): the
    opening comment paragraph, joined into one line, up to its first full stop outside brackets."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.lstrip("#").strip()
        if not line.startswith("#") or not text:
            break
        lines.append(text)
    paragraph = " ".join(lines)
    depth = 0
    for i, char in enumerate(paragraph):
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(char, 0)
        if char == "." and depth <= 0 and paragraph[i + 1:i + 2] in ("", " "):
            if not paragraph[:i + 1].endswith(_ABBREVIATIONS):
                return paragraph[:i + 1]
    return paragraph


def _resolve(kind: str, name, chip_path: Path) -> Path:
    """A `uses:` entry: a name in the library next to the chip file, or a path."""
    if not isinstance(name, str):
        raise ConfigError(f"uses.{kind}", name, "expected a name or a path", "", str(chip_path))
    direct = (chip_path.parent / name)
    if name.endswith((".yaml", ".yml")) and direct.is_file():
        return direct
    options = {**library(kind), **library(kind, chip_path.resolve().parent.parent)}  # a project's own first
    if name in options:
        return options[name]
    raise ConfigError(f"uses.{kind}", name, f"no such {kind} file", _suggest(name, options) if options else
                      f"put it in {LIBRARIES[kind]}/", str(chip_path))


#: The chip `analog-ep run` trains when none is named: the default job.
DEFAULT_CHIP = "rram_512"


def chip_file(chip: str | Path) -> Path:
    """The file a user's CHIP argument names: an existing file (a path, relative to the working
    directory), else the name of a shipped chip (`analog-ep list chips`), from any folder.

    A path that does not exist is an error, never silently replaced by a shipped chip of the same
    name; the message names the shipped chip it may have meant."""
    path, text = Path(chip), str(chip)
    if path.is_file():
        return path
    shipped = library("chip")
    if text in shipped:
        return shipped[text]
    if path.is_dir():
        raise ConfigError("chip", text, "is a directory, not a chip file", "name a chip's YAML file or a shipped chip")
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:  # meant as a path
        fix = (f"a shipped chip is named {path.stem!r}: give the name, which works from any folder"
               if path.stem in shipped else "check the path; `analog-ep list chips` names the shipped chips")
        raise ConfigError("chip", text, "file not found", fix)
    close = difflib.get_close_matches(text, list(shipped), n=1)
    raise ConfigError("chip", text, "neither a file nor a shipped chip",
                      f"did you mean {close[0]!r}?" if close else f"shipped chips: {', '.join(shipped)}")


def compose(path: str | Path) -> RunConfig:
    """Defaults <- the device file <- the circuit file <- the chip file's own sections.

    The result carries the chip file's own keys as its explicit keys (`explicit_keys`)."""
    path = Path(path)
    data = read_yaml(path)
    uses = data.pop("uses", {}) or {}
    if not isinstance(uses, dict):
        raise ConfigError("uses", uses, "expected a mapping", "e.g. uses: {device: reram_sb, circuit: rc_crossbar}",
                          str(path))
    for key in uses:
        if key not in LIBRARIES:
            raise ConfigError(f"uses.{key}", uses[key], "unknown key", _suggest(str(key), LIBRARIES), str(path))
    cfg = RunConfig()
    if "device" in uses:
        dev_path = _resolve("device", uses["device"], path)
        cfg = merge(cfg, {"chip": read_yaml(dev_path, "device file")}, str(dev_path))
    if "circuit" in uses:
        circ_path = _resolve("circuit", uses["circuit"], path)
        cfg = merge(cfg, {"circuit": read_yaml(circ_path, "circuit file")}, str(circ_path))
    cfg = merge(cfg, data, str(path))
    return with_explicit_keys(cfg, dotted_keys(data))


def apply_overrides(cfg: RunConfig, overrides: list[str] = ()) -> RunConfig:
    """`cfg` with `--set key=value` texts applied together (a later text wins on the same key), then
    checked once: settings that must change together (chip.write and chip.learning) can be given in
    any order. Their keys join the explicit keys (not resolved)."""
    if not overrides:
        return cfg
    data: dict = {}
    for text in overrides:
        _update_nested(data, parse_override(text))
    cfg_keys = set(explicit_keys(cfg))
    cfg = merge(cfg, data, "--set")
    return with_explicit_keys(cfg, cfg_keys | dotted_keys(data, cfg))


def _update_nested(into: dict, data: dict) -> None:
    """Update the nested dict `into` with `data` in place, key by key at every depth."""
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _update_nested(into[key], value)
        else:
            into[key] = value


def load_config(chip: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Defaults <- chip file (with the device and circuit it uses) <- `--set` overrides, resolved.

    `chip` is a chip file's path or a shipped chip's name (see `chip_file`); None: the schema's
    defaults alone."""
    cfg = compose(chip_file(chip)) if chip is not None else RunConfig()
    return apply_overrides(cfg, overrides).resolve()


def load_circuit(path: str | Path) -> CircuitFile:
    """Read and validate a circuit file (one-line ConfigError naming file and key on problems)."""
    return merge(CircuitFile(), read_yaml(path, "circuit file"), str(path))
