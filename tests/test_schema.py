"""One schema: defaults live in the dataclasses, the shipped chips resolve to their snapshots, the
schema loads without torch or aihwkit, `resolve()` copies, and explicit keys are tracked.

The snapshots in tests/snapshots/ are `analog-ep validate CHIP --show` of every shipped chip, and
`defaults.yaml` is `RunConfig()` itself. A change of any default, or of a
shipped chip file, fails here: if it is meant, regenerate the file from `validate --show` and say so.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from analog_ep.cli.main import main
from analog_ep.config import (RunConfig, apply_overrides, explicit_keys, library, load_circuit, load_config, to_dict)
from analog_ep.errors import ConfigError
from analog_ep.schema.hardware import BASE_DEVICES, PRESET_DEVICES

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOTS = ROOT / "tests" / "snapshots"


def differences(got: dict, want: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, as 'key: snapshot -> now'."""
    out = []
    for key in sorted(set(got) | set(want), key=str):
        a, b = want.get(key, "<absent>"), got.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(b, a, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def test_every_shipped_chip_has_a_snapshot():
    assert {p.stem for p in SNAPSHOTS.glob("*.yaml")} == {*library("chip"), "defaults"}


@pytest.mark.parametrize("chip", sorted(library("chip")))
def test_shipped_chip_resolves_to_its_snapshot(chip):
    got = to_dict(load_config(str(library("chip")[chip])))
    want = yaml.safe_load((SNAPSHOTS / f"{chip}.yaml").read_text(encoding="utf-8"))
    diff = differences(got, want)
    assert not diff, f"{chip} resolves differently: " + "; ".join(diff)


def test_defaults_live_in_the_dataclasses_and_match_their_snapshot():
    got = to_dict(RunConfig())
    diff = differences(got, yaml.safe_load((SNAPSHOTS / "defaults.yaml").read_text(encoding="utf-8")))
    assert not diff, "defaults changed: " + "; ".join(diff)
    # RunConfig adds nothing of its own: each section is its dataclass at its defaults.
    import dataclasses

    for f in dataclasses.fields(RunConfig):
        assert getattr(RunConfig(), f.name) == f.default_factory(), f.name
        assert f.default_factory is type(getattr(RunConfig(), f.name)), f.name


def test_the_schema_and_list_import_neither_torch_nor_aihwkit(tmp_path):
    code = (
        "import sys, json\n"
        "from analog_ep.config import RunConfig, apply_overrides, dump_yaml, library, load_circuit\n"
        "import analog_ep.schema\n"
        "from analog_ep.cli.main import main\n"
        "cfg = apply_overrides(RunConfig(), ['ep.restarts=3', 'chip.periphery.adc_bits=8']).resolve()\n"
        "dump_yaml(cfg); load_circuit(library('circuit')['rc_crossbar'])\n"
        "for kind in ('devices', 'circuits', 'chips'):\n"
        "    main(['list', kind])\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'aihwkit'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_resolve_returns_a_new_config_and_leaves_its_input_alone():
    cfg = apply_overrides(RunConfig(), ["data.context=16", "train.steps=10"])
    before = copy.deepcopy(cfg)
    out = cfg.resolve()
    assert cfg == before and cfg.model.context == 32 and cfg.schedule.total_steps == 300
    assert out is not cfg and (out.model.context, out.schedule.total_steps, out.schedule.warmup) == (16, 10, 2)
    for section in ("model", "data", "schedule", "chip", "circuit"):  # nothing shared with the input
        assert getattr(out, section) is not getattr(cfg, section), section
    assert out.chip.device.overrides is not cfg.chip.device.overrides
    assert out.resolve() == out  # resolved configs are fixed points


@pytest.fixture
def project(tmp_path):
    """chips/mine.yaml beside a device and a circuit file of the project's own."""
    for kind in ("devices", "circuits", "chips"):
        (tmp_path / kind).mkdir()
    (tmp_path / "devices" / "mydev.yaml").write_text(
        "device: {model: ConstantStep, overrides: {dw_min: 0.002, dw_min_std: 0.1}}\nperiphery: {mismatch: 0.01}\n")
    (tmp_path / "circuits" / "mycirc.yaml").write_text("dynamics: {tau: 2.0e-8}\nsettle: {lockin: 2}\n")
    chip = tmp_path / "chips" / "mine.yaml"
    chip.write_text("uses: {device: mydev, circuit: mycirc}\n"
                    "chip: {tile_rows: 64, device: {overrides: {dw_min: 0.004}}}\n"
                    "circuit: {settle: {time: 4.0e-8}}\n"
                    "ep: {restarts: 2}\n")
    return chip


def test_explicit_keys_are_the_chip_files_and_the_command_lines(project):
    cfg = load_config(str(project), ["relax.steps=30", "ep.restarts=3"])
    assert explicit_keys(cfg) == {"chip.tile_rows", "chip.device.overrides", "chip.device.overrides.dw_min",
                                  "circuit.settle.time", "ep.restarts", "relax.steps"}
    # the device and circuit files it uses supplied these, but they are not the chip file's own
    assert cfg.chip.device.overrides == {"dw_min": 0.004, "dw_min_std": 0.1}
    assert cfg.chip.periphery.mismatch == 0.01 and cfg.circuit.dynamics.tau == 2e-8 and cfg.circuit.settle.lockin == 2
    assert cfg.ep.restarts == 3
    assert explicit_keys(cfg.resolve()) == explicit_keys(cfg)  # carried through resolve()
    assert explicit_keys(load_config()) == frozenset()  # defaults only
    assert explicit_keys(load_config(None, ["ep.beta=0.1"])) == {"ep.beta"}


def test_a_stored_run_config_carries_values_not_explicit_keys(project, tmp_path):
    from analog_ep.config import dump_yaml
    from analog_ep.run.loop import run_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(load_config(str(project), ["relax.steps=30"])))
    reloaded = run_config(run)
    assert reloaded == load_config(str(project), ["relax.steps=30"]) and explicit_keys(reloaded) == frozenset()
    assert explicit_keys(apply_overrides(reloaded, ["train.steps=5"])) == {"train.steps"}


def test_the_renamed_circuit_section_says_how_to_fix_it(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("circuit: {tau: 1.0e-8}\n")
    with pytest.raises(ConfigError, match=r"old.yaml: circuit=.*renamed to dynamics \(write dynamics: instead of "
                                          r"circuit:\)"):
        load_circuit(old)
    with pytest.raises(ConfigError, match=r"--set: circuit.circuit=.*renamed to circuit.dynamics"):
        load_config(None, ["circuit.circuit.tau=2e-8"])


def test_list_devices_names_every_aihwkit_model_and_what_each_name_is(capsys):
    assert main(["list", "devices"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    for name in library("device"):
        assert rows[name].split()[1] == "file", name
    for name in PRESET_DEVICES:
        assert " aihwkit preset " in rows[name], name
    for name in BASE_DEVICES:
        assert " aihwkit base class " in rows[name], name
    assert len(rows) == len(library("device")) + len(PRESET_DEVICES) + len(BASE_DEVICES)


def test_every_listed_aihwkit_name_builds_and_nothing_is_left_out():
    import inspect

    from aihwkit.simulator.presets import devices as presets

    from analog_ep.schema.hardware import DeviceConfig

    shipped = {c.__name__ for _, c in inspect.getmembers(presets, inspect.isclass) if c.__module__ == presets.__name__}
    assert {cls for cls, _ in PRESET_DEVICES.values()} == shipped  # every aihwkit preset is usable by name
    for name in [*PRESET_DEVICES, *BASE_DEVICES]:
        assert DeviceConfig(model=name).device(0).__class__.__name__ in (PRESET_DEVICES.get(name) or BASE_DEVICES[name])


@pytest.mark.parametrize("module,name", [
    ("analog_ep.model.transformer", "TransformerConfig"), ("analog_ep.data.text", "TextDataConfig"),
    ("analog_ep.relax.solvers", "RelaxConfig"), ("analog_ep.estimator.ep", "EPConfig"),
    ("analog_ep.train.optim", "OptimizerConfig"), ("analog_ep.train.optim", "ScheduleConfig"),
    ("analog_ep.train.stabilizers", "StabilizerConfig"), ("analog_ep.train.twin", "TrainConfig"),
    ("analog_ep.hardware.chip", "ChipConfig"), ("analog_ep.hardware.device", "DeviceConfig"),
    ("analog_ep.hardware.periphery", "PeripheryConfig"), ("analog_ep.circuit.dynamics", "CircuitConfig"),
    ("analog_ep.circuit.measure", "SettleConfig"), ("analog_ep.circuit.monitor", "MonitorConfig"),
    ("analog_ep.circuit.energy", "EnergyConfig"), ("analog_ep.circuit", "CircuitFile"), ("analog_ep.config", "ChipConfig"),
])
def test_every_old_import_path_names_the_schemas_class(module, name):
    import importlib

    import analog_ep.schema

    assert getattr(importlib.import_module(module), name) is getattr(analog_ep.schema, name)
