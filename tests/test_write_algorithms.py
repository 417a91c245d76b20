"""The in-memory training writes: mixed precision (a digital residual per weight) and write-verify.

* mixed_precision: the update accumulates in the residual, whole pulse steps fire and leave it,
  at most `max_pulses` a write (the rest waits); no randomness; the residual resumes.
* write-verify: on a device with read-visible write noise, re-pulsing the written devices until
  they read within the tolerance of their nominal values puts them there; devices not written
  are never touched; a noiseless write passes at once; its pulses are in the ledger and its
  reads are counted (and priced in the step's energy).
"""
from __future__ import annotations

import pytest
import torch

from analog_ep.circuit.energy import EnergyConfig, StepCost, controller_read_cost
from analog_ep.errors import ConfigError
from analog_ep.hardware.chip import AnalogChip, ChipConfig
from analog_ep.hardware.device import DeviceConfig
from analog_ep.model.transformer import EquilibriumTransformer, TransformerConfig

EXACT = dict(dw_min=0.01, dw_min_dtod=0.0, dw_min_std=0.0, up_down=0.0, up_down_dtod=0.0,
             w_max_dtod=0.0, w_min_dtod=0.0, w_max=1.0, w_min=-1.0)


def chip_of(overrides=EXACT, model_seed=0, device="ConstantStep", **chip) -> AnalogChip:
    model = EquilibriumTransformer(TransformerConfig(vocab_size=12, context=8, width=16, heads=2, seed=model_seed,
                                                     embed_scale=1.0))
    return AnalogChip(model, ChipConfig(device=DeviceConfig(model=device, overrides=dict(overrides)), **chip))


def test_mixed_precision_fires_whole_steps_of_the_residual_and_keeps_the_rest():
    chip = chip_of(write="mixed_precision", max_pulses=8)
    step, before = chip.step_size["W_k"], chip.arrays["W_k"].read()
    assert chip.write({"W_q": torch.full((16, 16), 0.75 * step)}, step=0) == 0  # below one step: kept, not rounded
    for k in range(10):  # 0.25 of a step per write, both signs: 2.5 steps owed after ten writes
        delta = torch.full((16, 16), 0.25 * step)
        delta[8:] *= -1
        chip.write({"W_k": delta}, step=k + 1)
    moved = (chip.arrays["W_k"].read() - before) / step
    print(f"\n10 x 0.25 steps: moved {moved[0, 0]:.4f} / {moved[-1, 0]:.4f} steps, residual "
          f"{float(chip.residual['W_k'][0, 0]):.4f}, pulses {chip.pulses}")
    assert torch.allclose(moved[:8], torch.full((8, 16), 2.0), atol=1e-4)
    assert torch.allclose(moved[8:], torch.full((8, 16), -2.0), atol=1e-4)
    assert torch.allclose(chip.residual["W_k"].abs(), torch.full((16, 16), 0.5), atol=1e-5)
    assert chip.pulses == 2 * 256  # deterministic: no rounding draw


def test_mixed_precision_caps_a_write_at_max_pulses_and_carries_the_rest():
    chip = chip_of(write="mixed_precision", max_pulses=8)
    step, before = chip.step_size["W_q"], chip.arrays["W_q"].read()
    chip.write({"W_q": torch.full((16, 16), 20 * step)}, step=1)
    first = (chip.arrays["W_q"].read() - before) / step
    chip.write({"W_q": torch.zeros(16, 16)}, step=2)
    chip.write({"W_q": torch.zeros(16, 16)}, step=3)
    total = (chip.arrays["W_q"].read() - before) / step
    assert torch.allclose(first, torch.full_like(first, 8.0), atol=1e-4)
    assert torch.allclose(total, torch.full_like(total, 20.0), atol=1e-3)
    assert float(chip.residual["W_q"].abs().max()) < 1e-4


def test_mixed_precision_residual_resumes_bit_for_bit():
    def writes(chip, steps):
        gen = torch.Generator().manual_seed(5)
        for k in steps:
            chip.write({n: torch.randn(a.shape, generator=gen) * 0.4 * chip.step_size[n]
                        for n, a in chip.arrays.items()}, step=k)

    whole = chip_of(write="mixed_precision")
    writes(whole, range(1, 7))
    first = chip_of(write="mixed_precision")
    writes(first, range(1, 4))
    state = first.state_dict()
    resumed = chip_of(write="mixed_precision")
    resumed.load_state_dict(state)
    gen_state = torch.Generator().manual_seed(5)
    for _ in range(3):  # the same random deltas as steps 1-3 were drawn: skip them
        for a in resumed.arrays.values():
            torch.randn(a.shape, generator=gen_state)
    for k in range(4, 7):
        resumed.write({n: torch.randn(a.shape, generator=gen_state) * 0.4 * resumed.step_size[n]
                       for n, a in resumed.arrays.items()}, step=k)
    for name in whole.arrays:
        assert torch.equal(whole.arrays[name].read(), resumed.arrays[name].read()), name
        assert torch.equal(whole.residual[name], resumed.residual[name]), name


#: A constant step (LinearStep without slope) whose every pulsed device reads 20 steps off, redrawn at
#: each pulse.
NOISY = {**EXACT, "gamma_up": 0.0, "gamma_down": 0.0, "write_noise_std": 20.0}
NOISY_DEVICE = "LinearStep"


@pytest.mark.parametrize("write", ["sign_pulse", "mixed_precision"])
def test_write_verify_brings_written_devices_within_tolerance(write):
    tol, rounds = 5.0, 25
    checked = chip_of(NOISY, device=NOISY_DEVICE, write=write, verify={"rounds": rounds, "tolerance": tol})
    plain = chip_of(NOISY, device=NOISY_DEVICE, write=write)
    delta = torch.zeros(16, 16)
    delta[:, :8] = 1.0  # the left half is written (one pulse up), the right half is not
    results = {}
    for name, chip in (("verify", checked), ("plain", plain)):
        step = chip.step_size["W_v"]
        before = chip.arrays["W_v"].read()
        reads = chip.reads
        sent = chip.write({"W_v": delta * step}, step=1)
        # against what was asked: the programmed target (programming set it with write noise too) plus the write
        error = (chip.arrays["W_v"].read() - (chip.programming["W_v"]["target"] + delta * step)) / step
        written = error[:, :8]
        results[name] = (float((written.abs() <= tol).float().mean()), sent, chip.reads - reads)
        assert torch.equal(chip.arrays["W_v"].read()[:, 8:], before[:, 8:]), name  # untouched devices stay
    (inside, sent, reads), (inside_plain, sent_plain, _) = results["verify"], results["plain"]
    print(f"\n{write}: written devices within {tol} steps: {inside:.3f} verified ({sent} pulses, {reads} row reads) "
          f"against {inside_plain:.3f} unverified ({sent_plain} pulses); last write's verify pulses "
          f"{checked.last_verify_pulses}, rounds {checked.last_rounds}")
    # P(|N(0, 20)| <= 5) = 0.197 per draw: 1 - 0.803^26 = 0.997 after the write and 25 re-pulses
    assert inside >= 0.97 and inside_plain < 0.35
    assert sent == 128 + checked.last_verify_pulses and checked.last_verify_pulses > 128
    assert len(checked.ledger) == checked.last_rounds  # every verify round is a recorded pulse round
    # a read of the 16 rows before each re-pulse round, and the read that passed (none after the last round)
    assert reads == 16 * min(rounds, checked.last_rounds)


def test_write_verify_pulses_toward_the_nominal_value():
    """Devices whose steps differ from the nominal one (20% device-to-device spread) miss a 3-pulse
    write by over a step; verify walks each back within one nominal step (its own steps are at
    most ~1.6 nominal ones, so every device can get there)."""
    spread = {**EXACT, "dw_min_dtod": 0.2}
    errors = {}
    for rounds in (0, 20):
        chip = chip_of(spread, write="mixed_precision", verify={"rounds": rounds, "tolerance": 1.0})
        step = chip.step_size["W_fc"]
        chip.write({"W_fc": torch.full(chip.arrays["W_fc"].shape, 3 * step)}, step=1)
        target = chip.programming["W_fc"]["target"] + 3 * step
        errors[rounds] = float(((chip.arrays["W_fc"].read() - target) / step).abs().max())
    print(f"\n3-pulse write, 20% step spread: worst miss {errors[0]:.2f} steps unverified, {errors[20]:.2f} verified")
    assert errors[0] > 1.2 and errors[20] <= 1.0 + 1e-4  # the read that passed it is the same float sum


def test_write_verify_passes_a_noiseless_write_at_once():
    chip = chip_of(write="sign_pulse", verify={"rounds": 10, "tolerance": 0.5})
    step = chip.step_size["W_o"]
    before = chip.arrays["W_o"].read()
    sent = chip.write({"W_o": torch.ones(16, 16) * step}, step=1)
    assert sent == 256 and chip.last_verify_pulses == 0 and chip.last_rounds == 1
    assert chip.reads == 16  # one verify read of the array: it passed
    assert torch.allclose(chip.nominal["W_o"], before + step, atol=1e-6)


def test_write_verify_state_resumes():
    chip = chip_of(NOISY, device=NOISY_DEVICE, write="sign_pulse", verify={"rounds": 3, "tolerance": 5.0})
    chip.write({n: torch.ones(a.shape) * chip.step_size[n] for n, a in chip.arrays.items()}, step=1)
    fresh = chip_of(NOISY, device=NOISY_DEVICE, write="sign_pulse", verify={"rounds": 3, "tolerance": 5.0})
    fresh.load_state_dict(chip.state_dict())
    for chip_ in (chip, fresh):
        chip_.write({n: -torch.ones(a.shape) * chip_.step_size[n] for n, a in chip_.arrays.items()}, step=2)
    for name in chip.arrays:
        assert torch.equal(chip.arrays[name].read(), fresh.arrays[name].read()), name
        assert torch.equal(chip.nominal[name], fresh.nominal[name]), name
    assert chip.reads == fresh.reads and chip.read_devices == fresh.read_devices


def test_controller_reads_are_priced():
    cost, cfg = StepCost(), EnergyConfig()
    controller_read_cost(cost, cfg, devices=1000, rows=16)
    assert cost.controller_read_j == pytest.approx((cfg.e_adc + cfg.e_detector) * 1000)
    assert cost.controller_read_s == pytest.approx(cfg.t_adc * 16)
    assert cost.energy_j == cost.controller_read_j and cost.latency_s == cost.controller_read_s


@pytest.mark.parametrize("bad,message", [
    (dict(write="ideal", verify={"rounds": 2}), "write-verify checks pulsed writes"),
    (dict(verify={"rounds": -1}), "must be an integer >= 0"),
    (dict(verify={"rounds": 2, "tolerance": 0}), "must be > 0"),
])
def test_bad_write_verify_settings_are_refused(bad, message):
    with pytest.raises(ConfigError, match=message):
        ChipConfig(**bad)


def test_transfer_integrates_the_fast_array_into_the_weights():
    """An exact device, every row transferred every step at lr 1: the update lands on the fast array
    A, H takes A's read, the weights take H's whole steps. A is not reset (TTv2): with no further
    update it keeps moving the weights by what it holds."""
    chip = chip_of(write="transfer", transfer={"rows": 16})
    step, before = chip.step_size["W_k"], chip.arrays["W_k"].read()
    chip.write({"W_k": torch.full((16, 16), 3 * step)}, step=1)
    first = (chip.arrays["W_k"].read() - before) / step
    fast = chip.fast["W_k"].read() / step
    chip.write({"W_k": torch.zeros(16, 16)}, step=2)
    second = (chip.arrays["W_k"].read() - before) / step
    print(f"\nA holds {float(fast.mean()):.3f} steps; W moved {float(first.mean()):.3f}, then {float(second.mean()):.3f}")
    assert torch.allclose(fast, torch.full_like(fast, 3.0), atol=1e-4)
    assert torch.allclose(first, torch.full_like(first, 3.0), atol=1e-4)
    assert torch.allclose(second, torch.full_like(second, 6.0), atol=1e-3)
    assert float(chip.buffer["W_k"].abs().max()) < 0.01 * step
    assert {a for a in chip.ledger.arrays} >= {"W_k", "W_k:fast"}
    assert chip.reads == 2 * 16  # two transfers of 16 rows of W_k's fast array


def test_transfer_reads_rows_in_turn_and_flips_the_chopper_after_each_pass():
    chip = chip_of(write="transfer", transfer={"rows": 4, "chopper": 1.0})
    step, before = chip.step_size["W_q"], chip.arrays["W_q"].read()
    chip.write({"W_q": torch.full((16, 16), 2 * step)}, step=1)
    moved = (chip.arrays["W_q"].read() - before) / step
    assert torch.allclose(moved[:4], torch.full((4, 16), 2.0), atol=1e-4)  # rows 0-3 transferred
    assert torch.allclose(moved[4:], torch.zeros(12, 16), atol=1e-6)  # the rest wait their turn
    assert chip.transfer_row["W_q"] == 4 and bool((chip.chopper["W_q"] == 1).all())
    for k in range(2, 5):  # three more transfers end the pass over the 16 rows
        chip.write({"W_q": torch.zeros(16, 16)}, step=k)
    assert chip.transfer_row["W_q"] == 0 and bool((chip.chopper["W_q"] == -1).all())  # flip probability 1
    fast_before = chip.fast["W_q"].read()
    chip.write({"W_q": torch.full((16, 16), step)}, step=5)  # the update lands on A times the signs
    assert torch.allclose((chip.fast["W_q"].read() - fast_before) / step, torch.full((16, 16), -1.0), atol=1e-4)


def test_transfer_state_resumes_and_its_ledger_replays_exactly():
    def steps(chip, ks):
        for k in ks:
            gen = torch.Generator().manual_seed(k)
            chip.write({n: torch.randn(a.shape, generator=gen) * 2 * chip.step_size[n] for n, a in chip.arrays.items()},
                       step=k)

    settings = dict(write="transfer", transfer={"rows": 5, "chopper": 0.5, "lr": 0.5})
    whole = chip_of(**settings)
    steps(whole, range(1, 7))
    half = chip_of(**settings)
    steps(half, range(1, 4))
    resumed = chip_of(**settings)
    resumed.load_state_dict(half.state_dict())
    steps(resumed, range(4, 7))
    for name in whole.arrays:
        assert torch.equal(whole.arrays[name].read(), resumed.arrays[name].read()), name
        assert torch.equal(whole.fast[name].read(), resumed.fast[name].read()), name
        assert torch.equal(whole.buffer[name], resumed.buffer[name]), name
        assert torch.equal(whole.chopper[name], resumed.chopper[name]), name
    assert whole.transfer_row == resumed.transfer_row
    fresh = chip_of(**settings)
    fresh.replay(whole.ledger)
    for name in whole.arrays:  # an exact device: the replay sends the same pulses to the same devices
        assert torch.equal(fresh.arrays[name].read(), whole.arrays[name].read()), name
        assert torch.equal(fresh.fast[name].read(), whole.fast[name].read()), name
    assert set(whole.schedule_state()) == {*whole.arrays, *(f"{n}:fast" for n in whole.arrays)}


def test_program_and_verify_leaves_a_device_that_passed_alone():
    """Write noise of 20 steps, reads through an 8-bit ADC (2.4 steps) with read noise: a device
    that read within the tolerance once is done. Re-pulsing it after a noisy read that crossed
    the tolerance would redraw its write noise, and the array would churn instead of settling."""
    from analog_ep.hardware.cycle import CycleNoise
    from analog_ep.hardware.periphery import NoiseSource, PeripheryConfig, analog_matmul
    from analog_ep.hardware.tiles import CrossbarArray

    device = DeviceConfig(model=NOISY_DEVICE, overrides=dict(NOISY))
    noise = CycleNoise(device.device(0), False, torch.Generator().manual_seed(1))
    arr = CrossbarArray("W", (32, 32), device, 32, 32, 0, 1.0, None, noise)
    periphery = PeripheryConfig(dac_bits=8, adc_bits=8, adc_bound=3.0, read_noise=0.005)
    reads = NoiseSource(torch.Generator().manual_seed(3), 1 << 16)
    target = torch.full((32, 32), 0.05)
    report = arr.program(target, lambda: analog_matmul(torch.eye(32), arr.read_tiles(), 1.0, periphery, 32, reads),
                         tolerance=2.0, max_rounds=150)
    off = (arr.read() - target).abs() / 0.01  # nominal steps, what the devices hold
    print(f"\n{report.rounds} rounds, {report.pulses} pulses: devices within 4 steps {float((off <= 4).float().mean()):.3f}")
    # within the tolerance plus half an ADC step (1.2) and the read noise (0.5 x 1.5)
    assert float((off <= 4).float().mean()) >= 0.99


def test_write_verify_through_noisy_reads_leaves_a_device_that_passed_alone():
    """The same for write-verify after a training write, through the chip's own periphery."""
    periphery = {"dac_bits": 8, "adc_bits": 8, "adc_bound": 3.0, "read_noise": 0.005}
    chip = chip_of(NOISY, device=NOISY_DEVICE, write="sign_pulse", periphery=periphery,
                   verify={"rounds": 150, "tolerance": 2.0})
    step = chip.step_size["W_fc"]
    chip.write({"W_fc": torch.full(chip.arrays["W_fc"].shape, step)}, step=1)
    target = chip.programming["W_fc"]["target"] + step
    # the programming (ideal, with write noise on set) left every device off: look at what the write fixed
    off = ((chip.arrays["W_fc"].read() - target) / step).abs()
    print(f"\n{chip.last_rounds} rounds, {chip.last_verify_pulses} verify pulses: written devices within 4 steps "
          f"{float((off <= 4).float().mean()):.3f}")
    assert float((off <= 4).float().mean()) >= 0.99
