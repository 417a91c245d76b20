"""Crossbar arrays on aihwkit devices, the chip, its writes and the analog twin."""
import math

import pytest
import torch

from analog_ep.errors import ConfigError
from analog_ep.hardware.chip import AnalogChip, ChipConfig
from analog_ep.hardware.device import BASE_DEVICES, PRESETS, DeviceConfig
from analog_ep.hardware.ledger import PulseLedger
from analog_ep.hardware.periphery import PeripheryConfig
from analog_ep.hardware.tiles import CrossbarArray
from analog_ep.model.transformer import EquilibriumTransformer, TransformerConfig

EXACT = dict(dw_min=0.01, dw_min_dtod=0.0, dw_min_std=0.0, up_down=0.0, up_down_dtod=0.0,
             w_max_dtod=0.0, w_min_dtod=0.0, w_max=1.0, w_min=-1.0)


def signs(shape, seed=0, density=0.5):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randint(-1, 2, shape, generator=gen)
    return (s * (torch.rand(shape, generator=gen) < density * 1.5)).to(torch.int8)


def test_constant_step_sign_pulses_are_exactly_dw_min_times_s():
    arr = CrossbarArray("W", (40, 30), DeviceConfig(overrides=EXACT), tile_rows=16, tile_cols=16)
    arr.set(torch.zeros(40, 30))
    S = signs((40, 30))
    sent = arr.pulse(S)
    change = arr.read()
    assert sent == int(S.count_nonzero())
    assert torch.equal(change, 0.01 * S.float()), float((change - 0.01 * S).abs().max())


@pytest.mark.parametrize("kind,key,sigma", [("device-to-device", "dw_min_dtod", 0.2),
                                            ("cycle-to-cycle", "dw_min_std", 0.3)])
def test_realised_steps_have_the_configured_spread(kind, key, sigma):
    over = {**EXACT, key: sigma}
    arr = CrossbarArray("W", (64, 64), DeviceConfig(overrides=over), tile_rows=64, tile_cols=64, chip_seed=3)
    arr.set(torch.zeros(64, 64))
    steps = []
    for _ in range(10):  # ten up pulses per device, well inside the bounds
        before = arr.read()
        arr.pulse(torch.ones(64, 64, dtype=torch.int8))
        steps.append((arr.read() - before) / 0.01)
    steps = torch.stack(steps)  # (pulse, row, col), in units of dw_min
    if kind == "device-to-device":
        per_device = steps.mean(0)  # the device's own step, cycle noise off
        spread = float(per_device.std() / per_device.mean())
        within = float(steps.std(0).max())
        print(f"\nd2d: relative spread of device steps {spread:.3f} (configured {sigma}); "
              f"largest pulse-to-pulse spread within a device {within:.2e}")
        assert abs(spread - sigma) < 0.25 * sigma and within < 1e-4
    else:
        spread = float(steps.std())
        print(f"\nc2c: spread of single-pulse steps {spread:.3f} dw_min (configured {sigma}); mean "
              f"{float(steps.mean()):.3f}")
        assert abs(spread - sigma) < 0.15 * sigma and abs(float(steps.mean()) - 1) < 0.05


@pytest.mark.parametrize("model", list(PRESETS) + list(BASE_DEVICES))
def test_every_device_builds_by_name_and_takes_a_pulse(model):
    # One-sided devices (PCM: conductance in [0, 2]) are stored as differential pairs.
    arr = CrossbarArray("W", (8, 8), DeviceConfig(model=model, differential=model == "PCM"), tile_rows=8,
                        tile_cols=8)
    arr.set(torch.zeros(8, 8))
    before = arr.read()
    sent = arr.pulse(torch.ones(8, 8, dtype=torch.int8))
    moved = float((arr.read() - before).abs().mean())
    print(f"\n{model}: 64 pulses, mean |dw| = {moved:.4g}")
    assert sent == 64 and moved > 0


def test_unknown_device_and_parameter_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'ReRamES'"):
        DeviceConfig(model="ReRamEs")
    with pytest.raises(ConfigError, match="did you mean 'dw_min'"):
        DeviceConfig(overrides={"dwmin": 0.1})


def test_one_sided_device_without_pairs_is_refused():
    model = EquilibriumTransformer(TransformerConfig(vocab_size=10, context=4, width=8, heads=2, embed_scale=0.02))
    with pytest.raises(ConfigError, match="differential"):
        AnalogChip(model, ChipConfig(device=DeviceConfig(model="PCM")))


def test_a_1000x300_matrix_on_512_tiles_reproduces_its_product():
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(1000, 300, generator=gen) * 0.05
    arr = CrossbarArray("W", (1000, 300), DeviceConfig(overrides=EXACT), tile_rows=512, tile_cols=512,
                        scale=float(W.abs().max()) / 0.9)
    arr.set(W)
    assert arr.grid == (2, 1)
    x = torch.randn(7, 1000, generator=gen)
    err = float((x @ arr.read() - x @ W).norm() / (x @ W).norm())
    print(f"\n1000x300 on 2x1 tiles of 512: relative product error {err:.2e}")
    assert err < 1e-6


def small_model(seed=0):
    return EquilibriumTransformer(TransformerConfig(vocab_size=12, context=8, width=16, heads=2, seed=seed,
                                                    embed_scale=1.0))


def test_chip_reads_through_its_crossbars_and_mirrors_them_into_the_model():
    model = small_model()
    digital = {n: p.detach().clone() for n, p in model.weight_matrices()}
    chip = AnalogChip(model, ChipConfig(device=DeviceConfig(overrides=EXACT), tile_rows=8, tile_cols=8))
    with torch.no_grad():
        for name, W in digital.items():
            x = torch.randn(5, W.shape[0])
            got = model.product(x, name)
            assert torch.allclose(got, x @ W, atol=1e-5), name  # ideal periphery: exact product
            u = torch.randn(5, W.shape[1])
            assert torch.allclose(model.product(u, name, transpose=True), u @ W.t(), atol=1e-5), name
            assert torch.allclose(model.get_parameter(name), W, atol=1e-6)
    assert set(chip.arrays) == set(digital)


def test_same_chip_seed_same_devices_other_seed_other_devices():
    over = {**EXACT, "dw_min_dtod": 0.3}
    per = PeripheryConfig(mismatch=0.1)

    def build(seed):
        model = small_model()
        chip = AnalogChip(model, ChipConfig(device=DeviceConfig(overrides=over), periphery=per, seed=seed))
        chip.write({"W_q": torch.full((16, 16), 1.0)}, step=1)  # one pulse each: reveals dw_min per device
        return chip.gains["W_q"].clone(), chip.arrays["W_q"].read()

    g1, w1 = build(7)
    g2, w2 = build(7)
    g3, w3 = build(8)
    assert torch.equal(g1, g2) and torch.equal(w1, w2)
    assert not torch.equal(g1, g3) and not torch.equal(w1, w3)


def test_weight_quantisation_on_the_chip_has_at_most_2_to_the_n_levels_per_tile():
    model = small_model()
    chip = AnalogChip(model, ChipConfig(device=DeviceConfig(overrides=EXACT), tile_rows=8, tile_cols=8,
                                        periphery=PeripheryConfig(weight_bits=3)))
    for name, G in chip._G.items():
        for r in range(G.shape[0]):
            for c in range(G.shape[1]):
                assert G[r, c].unique().numel() <= 2 ** 3, name


@pytest.mark.parametrize("write", ["sign_pulse", "quantized", "ideal"])
def test_writes_realise_the_requested_change(write):
    model = small_model()
    chip = AnalogChip(model, ChipConfig(device=DeviceConfig(overrides=EXACT), write=write, max_pulses=8))
    step = chip.step_size["W_k"]
    before = chip.arrays["W_k"].read()
    delta = torch.zeros(16, 16)
    delta[0, 0], delta[1, 1], delta[2, 2] = 3 * step, -2 * step, 0.4 * step
    sent = chip.write({"W_k": delta}, step=1)
    got = chip.arrays["W_k"].read() - before
    expect = {"sign_pulse": torch.sign(delta) * step, "ideal": delta,
              "quantized": torch.round(delta / step) * step}[write]
    print(f"\n{write}: pulses {sent}, realised {got.diagonal()[:3].tolist()} (step {step:.4g})")
    assert torch.allclose(got, expect, atol=1e-6 * max(1.0, step * 1e3))
    assert sent == {"sign_pulse": 3, "quantized": 5, "ideal": 0}[write]


def test_program_and_verify_counts_its_pulses_and_reaches_tolerance():
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(20, 12, generator=gen) * 0.05  # within the devices' range at scale 0.5
    ledger = PulseLedger()
    arr = CrossbarArray("W", (20, 12), DeviceConfig(overrides={**EXACT, "dw_min_std": 0.2}), tile_rows=16,
                        tile_cols=16, scale=0.5, ledger=ledger)
    report = arr.program(target, tolerance=0.5, max_rounds=200)
    step = 0.01 * 0.5
    print(f"\nprogram-and-verify: {report.pulses} pulses in {report.rounds} rounds, max error "
          f"{report.max_error:.2e} (step {step})")
    assert report.max_error <= 0.5 * step * 1.0001
    assert report.pulses == sum(up + down for up, down in ledger.pulse_counts().values())
    assert report.pulses >= float((target.abs() / step).sum()) * 0.9  # at least the distance in steps


def test_ledger_replay_reproduces_the_weights(tmp_path):
    model = small_model()
    cfg = ChipConfig(device=DeviceConfig(overrides=EXACT))
    chip = AnalogChip(model, cfg)
    initial = {n: a.read() for n, a in chip.arrays.items()}
    for k in range(1, 6):
        chip.write({n: torch.randn(a.shape) for n, a in chip.arrays.items()}, step=k)
    chip.ledger.to_hdf5(tmp_path / "schedule.h5")  # export, then replay from the file
    twin = AnalogChip(small_model(), cfg)  # same initial programming, no pulses yet
    sent = twin.replay(PulseLedger.from_hdf5(tmp_path / "schedule.h5"), phase="train")
    assert sent == chip.pulses
    for n in chip.arrays:
        assert torch.equal(twin.arrays[n].read(), chip.arrays[n].read()), n
        assert not torch.equal(initial[n], chip.arrays[n].read())
