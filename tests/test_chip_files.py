"""The shipped device, circuit and chip files load, build and write; broken chip files fail on one line.

Every chip in chips/ composes (defaults <- device file <- circuit file <- its own sections) and
validates; every device in devices/ builds an AnalogChip on a tiny model and takes one pulsed
write; a broken chip file names the file and the key in a one-line ConfigError.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from analog_ep.circuit import load_circuit
from analog_ep.config import RunConfig, compose, load_config, merge, read_yaml
from analog_ep.errors import ConfigError
from analog_ep.hardware.chip import AnalogChip
from analog_ep.hardware.device import check_device_config
from analog_ep.model.transformer import EquilibriumTransformer, TransformerConfig

ROOT = Path(__file__).resolve().parents[1]
DEVICES = sorted((ROOT / "devices").glob("*.yaml"))
CIRCUITS = sorted((ROOT / "circuits").glob("*.yaml"))
CHIPS = sorted((ROOT / "chips").glob("*.yaml"))


def tiny_model() -> EquilibriumTransformer:
    return EquilibriumTransformer(TransformerConfig(vocab_size=12, context=4, width=8, heads=2, embed_scale=0.02))


def test_the_library_is_there():
    names = {p.stem for p in DEVICES}
    assert {"reram_sb", "reram_es", "pcm", "ecram", "capacitor", "ideal"} <= names
    assert any("photonic" in n for n in names)
    assert {"rram_512", "pcm_256", "ecram_256", "optical_128", "ideal"} <= {p.stem for p in CHIPS}
    for path in DEVICES + CHIPS:  # every file says where its numbers come from
        assert path.read_text(encoding="utf-8").lstrip().startswith("#"), path.name


@pytest.mark.parametrize("path", CIRCUITS, ids=lambda p: p.stem)
def test_circuit_file_loads(path):
    spec = load_circuit(str(path))
    assert spec.dynamics.kind in ("rc", "loop")


@pytest.mark.parametrize("path", DEVICES, ids=lambda p: p.stem)
def test_device_file_builds_a_chip_and_takes_a_write(path):
    data = read_yaml(path, "device file")
    assert set(data) <= {"device", "periphery"}, f"{path.name}: a device file holds device: and periphery: only"
    assert set(data.get("periphery", {})) <= {"weight_bits", "mismatch", "mismatch_clamp"}
    chip_config = merge(RunConfig(), {"chip": data}, str(path)).chip
    check_device_config(chip_config.device)
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    chip = AnalogChip(model, chip_config)
    assert chip.arrays and chip.w_max > 0 and chip.w_min < 0  # one-sided devices are stored as pairs
    signs = {name: torch.ones(arr.shape) for name, arr in chip.arrays.items()}
    sent = chip.write(signs, step=1)  # sign_pulse (the default write): one pulse on every device
    assert sent == sum(arr.shape[0] * arr.shape[1] for arr in chip.arrays.values())
    moved = [n for n in chip.arrays if not torch.equal(model.get_parameter(n), before[n])]
    assert moved == list(chip.arrays)


@pytest.mark.parametrize("path", CHIPS, ids=lambda p: p.stem)
def test_chip_file_loads_and_builds(path):
    cfg = load_config(str(path))
    assert cfg.schedule.total_steps == cfg.train.steps
    check_device_config(cfg.chip.device)
    if cfg.model.kind == "mlp":  # the chip's own network (small already): inputs and classes from the digits
        from analog_ep.run.loop import make_model

        assert (cfg.model.inputs, cfg.model.classes) == (64, 10) and cfg.data.kind == "digits"
        model = make_model(cfg)
    else:
        assert cfg.model.context == cfg.data.context
        model = tiny_model()
    chip = AnalogChip(model, cfg.chip)  # the chip's own device, tiles and periphery
    assert chip.arrays


def test_default_job_is_rram_512():
    cfg = load_config(str(ROOT / "chips" / "rram_512.yaml"))
    assert cfg.chip.device.model == "ReRamSB" and (cfg.chip.tile_rows, cfg.chip.tile_cols) == (512, 512)
    assert cfg.optim.name == "lion" and cfg.chip.write == "sign_pulse"
    assert cfg.chip.periphery.dac_bits == 8 and cfg.chip.periphery.adc_bits == 8
    assert cfg.circuit.dynamics.kind == "rc" and set(cfg.train.twins) >= {"analog", "digital"}


def test_ideal_chip_is_ideal_everywhere():
    cfg = load_config(str(ROOT / "chips" / "ideal.yaml"))
    p, dev = cfg.chip.periphery, cfg.chip.device.device(0)
    assert (p.dac_bits, p.adc_bits, p.weight_bits, p.read_noise, p.optical_noise, p.mismatch) == (0, 0, 0, 0, 0, 0)
    assert (dev.dw_min_dtod, dev.dw_min_std, dev.up_down, dev.up_down_dtod, dev.w_max_dtod, dev.w_min_dtod) == \
        (0, 0, 0, 0, 0, 0)
    assert cfg.chip.write == "ideal" and cfg.chip.program == "ideal"
    settle = cfg.circuit.settle
    assert cfg.circuit.dynamics.noise == 0 and settle.adc_bits == 0 and settle.adc_noise == 0
    assert cfg.optim.name in ("sgd", "adamw")


# ---- broken chip files ----------------------------------------------------------------------------
@pytest.fixture
def project(tmp_path):
    """A project folder laid out like the repository: chips/ beside the shipped devices/ and circuits/."""
    for lib in ("devices", "circuits"):
        try:
            (tmp_path / lib).symlink_to(ROOT / lib, target_is_directory=True)
        except OSError:  # no symlinks on this filesystem
            shutil.copytree(ROOT / lib, tmp_path / lib)
    (tmp_path / "chips").mkdir()
    return tmp_path


def write_chip(project: Path, text: str) -> Path:
    path = project / "chips" / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def one_line_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_good_chip_in_a_project_resolves_its_uses(project):
    path = write_chip(project, "uses: {device: ecram, circuit: euler}\nchip: {tile_rows: 64}\n")
    cfg = compose(path)
    assert cfg.chip.device.model == "EcRam" and cfg.chip.tile_rows == 64 and cfg.circuit.dynamics.kind == "loop"



def test_a_projects_own_library_file_comes_before_the_shipped_one(tmp_path):
    """A project's devices/ecram.yaml next to its chips/ is the `ecram` its chips use, not the shipped
    one; names the project does not define still come from the shipped library."""
    for lib in ("devices", "chips"):
        (tmp_path / lib).mkdir()
    own = (ROOT / "devices" / "ecram.yaml").read_text(encoding="utf-8").replace("dw_min: 0.002", "dw_min: 0.004")
    assert own != (ROOT / "devices" / "ecram.yaml").read_text(encoding="utf-8")
    (tmp_path / "devices" / "ecram.yaml").write_text(own, encoding="utf-8")
    path = tmp_path / "chips" / "mine.yaml"
    path.write_text("uses: {device: ecram, circuit: euler}\n", encoding="utf-8")
    cfg = compose(path)
    assert cfg.chip.device.model == "EcRam" and cfg.chip.device.overrides["dw_min"] == 0.004  # the project's
    assert cfg.circuit.dynamics.kind == "loop"  # euler: the shipped circuit


BROKEN = {
    "unknown device name": ("uses: {device: reram_sbb, circuit: rc_crossbar}\n",
                            ["broken.yaml", "uses.device", "reram_sbb", "did you mean 'reram_sb'"]),
    "unknown circuit name": ("uses: {device: pcm, circuit: rc_crosbar}\n",
                             ["broken.yaml", "uses.circuit", "did you mean 'rc_crossbar'"]),
    "uses key that is not device/circuit": ("uses: {devices: reram_sb}\n",
                                            ["broken.yaml", "uses.devices", "unknown key", "did you mean 'device'"]),
    "unknown section": ("uses: {device: ecram}\nchips: {tile_rows: 64}\n",
                        ["broken.yaml", "chips", "unknown key", "did you mean 'chip'"]),
    "unknown section key": ("uses: {device: ecram}\nchip: {tile_row: 64}\n",
                            ["broken.yaml", "chip.tile_row", "unknown key", "did you mean 'tile_rows'"]),
    "unknown nested key": ("uses: {device: ecram}\nchip:\n  periphery: {adc_bit: 8}\n",
                           ["broken.yaml", "chip.periphery.adc_bit", "did you mean 'adc_bits'"]),
    "wrong type": ("uses: {device: ecram}\nchip: {tile_rows: big}\n",
                   ["broken.yaml", "chip.tile_rows", "'big'", "expected an integer"]),
    "wrong type, float": ("uses: {device: ecram}\ntrain: {steps: 1.5}\n",
                          ["broken.yaml", "train.steps", "expected an integer"]),
    "out of range": ("uses: {device: ecram}\nchip: {range_factor: -1.0}\n",
                     ["broken.yaml", "chip.range_factor", "must be > 0"]),
    "out of range, converter": ("uses: {device: ecram}\nchip:\n  periphery: {adc_bits: 1}\n",
                                ["broken.yaml", "chip.periphery.adc_bits", "[2, 32]"]),
    "unknown device model": ("uses: {device: ecram}\nchip:\n  device: {model: ReRamXB}\n",
                             ["broken.yaml", "chip.device.model", "did you mean 'ReRamSB'"]),
    "unknown device parameter": ("uses: {device: reram_sb}\nchip:\n  device:\n    overrides: {dw_mn: 0.001}\n",
                                 ["broken.yaml", "chip.device.overrides.dw_mn", "did you mean 'dw_min'"]),
    "unknown write scheme": ("uses: {device: ecram}\nchip: {write: pulses}\n",
                             ["broken.yaml", "chip.write", "unknown write scheme"]),
}


@pytest.mark.parametrize("case", list(BROKEN), ids=lambda c: c.replace(" ", "_").replace(",", ""))
def test_broken_chip_file_fails_on_one_line_naming_file_and_key(project, case):
    text, expected = BROKEN[case]
    message = one_line_error(write_chip(project, text))
    for part in expected:
        assert part in message, (case, message)


def test_a_broken_device_file_is_named_in_the_error(project, tmp_path):
    (tmp_path / "devices").unlink() if (tmp_path / "devices").is_symlink() else shutil.rmtree(tmp_path / "devices")
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "mine.yaml").write_text("device:\n  model: EcRam\nperiphery: {mismatch: -0.1}\n")
    message = one_line_error(write_chip(project, "uses: {device: mine}\n"))
    assert "mine.yaml" in message and "chip.periphery.mismatch" in message and "must be >= 0" in message


def test_a_chip_without_uses_is_a_plain_run_config(project):
    cfg = compose(write_chip(project, "chip: {tile_rows: 32, tile_cols: 32}\n"))
    assert (cfg.chip.tile_rows, cfg.chip.device.model) == (32, "ConstantStep")


def test_a_device_override_of_the_wrong_type_fails_at_load(project):
    path = write_chip(project, "uses: {device: capacitor}\nchip:\n  device:\n    overrides: {lifetime: soon}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "chip.device.overrides.lifetime" in str(info.value) and "expected a number" in str(info.value)
    # YAML 1.1 reads 1.0e6 (no exponent sign) as text; it is the number the user meant
    path = write_chip(project, "uses: {device: capacitor}\nchip:\n  device:\n    overrides: {lifetime: 1.0e6}\n")
    cfg = load_config(str(path))
    assert cfg.chip.device.overrides["lifetime"] == 1.0e6
    AnalogChip(tiny_model(), cfg.chip)
