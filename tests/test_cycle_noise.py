"""Seeded cycle-to-cycle and write noise (analog_ep.hardware.cycle) against aihwkit's own.

For every preset and base class a tile with aihwkit's noise and a tile with the seeded route
start from the same states (device-to-device draw, weights), take one pulse up (or down) on
every device, and the realised steps are compared with the noiseless step of a third tile:
mean and spread of the excursion, per quartile of the devices' state (the noise of ReRamSB and
PCM depends on it). The seeded route is exact in distribution (module docstring), so both sides
are samples of one law: their first and second moments must agree within 5 standard errors. Then: the same seed gives the
same realisation, and the noise really is there.
"""
from __future__ import annotations

import math

import pytest
import torch
from aihwkit.simulator.tiles import AnalogTile

from analog_ep.hardware.chip import device_bounds
from analog_ep.hardware.cycle import CycleNoise, noise_law
from analog_ep.hardware.device import BASE_DEVICES, PRESETS, DeviceConfig

OUT, IN, REPEATS = 64, 64, 4
ONE_SIDED = {"PCM"}  # conductance in [0, 2]: realised as a differential pair, as the chips do
WRITE_NOISE = {"ReRamES", "ReRamSB", "ReRamArrayOM", "ReRamArrayHfO2"}


def _tile(config: DeviceConfig, seeded: bool) -> AnalogTile:
    tile = AnalogTile(OUT, IN, config.rpu_config(4321, seeded_noise=seeded))
    tile.set_learning_rate(1e6)
    return tile


def _pulse(tile: AnalogTile, sign: int) -> None:
    tile.update(torch.eye(IN), -sign * torch.ones(IN, OUT))  # one pulse on every device


def _state(tile: AnalogTile, differential: bool) -> torch.Tensor:
    """The device state the update rule moves: the persistent weight under write noise, else the
    visible one (a pair: G+ - G- of the hidden weights)."""
    names = tile.tile.get_hidden_parameter_names()
    hidden = tile.tile.get_hidden_parameters()
    if "persistent_weights" in names:
        return hidden[names.index("persistent_weights")].clone()
    if differential:
        return hidden[names.index("hidden_weights_1")] - hidden[names.index("hidden_weights_0")]
    return tile.tile.get_weights().clone()


def realised_steps(model: str, sign: int):
    """(initial states, aihwkit steps, seeded steps, noiseless steps, write-noise offsets aihwkit/seeded)."""
    differential = model in ONE_SIDED
    config = DeviceConfig(model=model, differential=differential)
    lo, hi = device_bounds(config)
    gen = torch.Generator().manual_seed(7)
    native, seeded, exact = _tile(config, False), _tile(config, True), _tile(config, True)
    noise = CycleNoise(config.device(0), differential, torch.Generator().manual_seed(11))
    nominal = seeded.tile.get_hidden_parameters().clone()
    starts, steps = [], {"native": [], "seeded": [], "exact": []}
    offsets = {"native": [], "seeded": []}
    for _ in range(REPEATS):
        w0 = lo + (hi - lo) * (0.1 + 0.8 * torch.rand(OUT, IN, generator=gen))  # away from the bounds
        for tile in (native, seeded, exact):
            tile.set_weights(w0)
        before = {"native": _state(native, differential), "seeded": _state(seeded, differential),
                  "exact": _state(exact, differential)}
        _pulse(native, sign)
        noise.before_round(seeded, nominal)
        _pulse(seeded, sign)
        _pulse(exact, sign)
        for key, tile in (("native", native), ("seeded", seeded), ("exact", exact)):
            steps[key].append(_state(tile, differential) - before[key])
        starts.append(before["exact"])
        if noise.write_std > 0:
            offsets["native"].append(native.tile.get_weights() - _state(native, differential))
            offsets["seeded"].append(noise.offset_after_round(None, torch.ones(IN, OUT)))
    cat = lambda xs: torch.cat([x.reshape(-1) for x in xs]).double()  # noqa: E731
    return (cat(starts), cat(steps["native"]), cat(steps["seeded"]), cat(steps["exact"]),
            cat(offsets["native"]) if offsets["native"] else None, cat(offsets["seeded"]) if offsets["seeded"] else None)


@pytest.mark.parametrize("sign", [1, -1], ids=["up", "down"])
@pytest.mark.parametrize("model", [*PRESETS, *BASE_DEVICES])
def test_seeded_cycle_noise_reproduces_aihwkit_statistics(model, sign):
    w0, native, seeded, exact, wn_native, wn_seeded = realised_steps(model, sign)
    law = noise_law(DeviceConfig(model=model).device(0))
    quartiles = torch.quantile(w0, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    bins = torch.bucketize(w0, quartiles)
    lines = []
    for b in range(4):
        m = bins == b
        en, es = native[m] - exact[m], seeded[m] - exact[m]  # the cycle-to-cycle excursions
        n = int(m.sum())
        ratio = float(es.std() / en.std())
        lines.append(f"  w in bin {b}: n {n}, mean step aihwkit {float(native[m].mean()):+.4e} seeded "
                     f"{float(seeded[m].mean()):+.4e} noiseless {float(exact[m].mean()):+.4e}; "
                     f"excursion std aihwkit {float(en.std()):.4e} seeded {float(es.std()):.4e} (ratio {ratio:.3f})")
        assert float(en.std()) > 0.01 * float(exact[m].abs().mean()), "aihwkit's own noise is missing"
        # Two samples of one law: first and second moments agree within 5 standard errors (taken
        # from the samples: the devices' step sizes spread by up to 78% device to device).
        for moment in (1, 2):
            a, c = en ** moment, es ** moment
            z = abs(float(a.mean() - c.mean())) / math.sqrt((float(a.var()) + float(c.var())) / n)
            assert z < 5, (model, b, moment, f"{z:.1f} standard errors", lines[-1])
    print(f"\n{model} ({law}), pulse {'up' if sign > 0 else 'down'}:\n" + "\n".join(lines))
    if model in WRITE_NOISE:
        ratio = float(wn_seeded.std() / wn_native.std())
        print(f"  write noise std aihwkit {float(wn_native.std()):.4e} seeded {float(wn_seeded.std()):.4e} "
              f"(ratio {ratio:.3f}), means {float(wn_native.mean()):+.1e} {float(wn_seeded.mean()):+.1e}")
        n = len(wn_native)
        for moment in (1, 2):
            a, c = wn_native ** moment, wn_seeded ** moment
            assert abs(float(a.mean() - c.mean())) < 5 * math.sqrt((float(a.var()) + float(c.var())) / n)


@pytest.mark.parametrize("model", ["ReRamSB", "PCM", "EcRam", "ConstantStep"])
def test_seeded_noise_is_reproducible_from_the_seed_and_really_noisy(model):
    differential = model in ONE_SIDED
    config = DeviceConfig(model=model, differential=differential)

    def run(seed: int) -> torch.Tensor:
        tile = _tile(config, True)
        tile.set_weights(torch.zeros(OUT, IN))
        noise = CycleNoise(config.device(0), differential, torch.Generator().manual_seed(seed))
        nominal = tile.tile.get_hidden_parameters().clone()
        signs = torch.sign(torch.randn(IN, OUT, generator=torch.Generator().manual_seed(3)))
        for k in range(5):
            noise.before_round(tile, nominal)
            tile.update(torch.eye(IN), -(signs * (-1) ** k))
        return tile.tile.get_weights()

    a, b, c = run(1), run(1), run(2)
    print(f"\n{model}: same seed max |diff| {float((a - b).abs().max()):.1e}, "
          f"another seed {float((a - c).abs().max()):.1e}")
    assert torch.equal(a, b)
    assert float((a - c).abs().max()) > 0


@pytest.mark.parametrize("model", ["PCM", "ReRamSB", "ReRamES"])
def test_a_chip_state_round_trip_continues_bit_for_bit(model):
    """A chip rebuilt from its seed and loaded with `state_dict()` takes the same writes to the same
    bits: the pair split of PCM (G+ and G- both grow), ReRamSB's state-dependent seeded noise,
    ReRamES's write-noise offsets, the read-noise and cycle-noise generators."""
    from analog_ep.hardware.chip import AnalogChip, ChipConfig
    from analog_ep.hardware.periphery import PeripheryConfig
    from analog_ep.model.transformer import EquilibriumTransformer, TransformerConfig

    def build():
        model_ = EquilibriumTransformer(TransformerConfig(vocab_size=12, context=4, width=8, heads=2))
        config = ChipConfig(device=DeviceConfig(model=model, differential=model in ONE_SIDED),
                            periphery=PeripheryConfig(read_noise=0.02), seed=3)
        return model_, AnalogChip(model_, config)

    def writes(chip, model_, steps):
        x = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(5))
        outs = []
        for step in steps:
            signs = {n: torch.sign(torch.randn(a.shape, generator=torch.Generator().manual_seed(step)))
                     for n, a in chip.arrays.items()}
            chip.write(signs, step)
            outs.append(chip.matmul("W_q", x.reshape(-1, 8)))  # a noisy read: the read-noise stream
        return outs

    model_a, a = build()
    writes(a, model_a, range(1, 4))
    state = a.state_dict()
    model_b, b = build()
    b.load_state_dict(state)
    out_a, out_b = writes(a, model_a, range(4, 7)), writes(b, model_b, range(4, 7))
    for name in a.arrays:
        for rc, tile in a.arrays[name].tiles.items():
            other = b.arrays[name].tiles[rc]
            assert torch.equal(tile.tile.get_hidden_parameters(), other.tile.get_hidden_parameters()), name
            assert torch.equal(tile.tile.get_weights(), other.tile.get_weights()), name
        assert torch.equal(a.arrays[name].read(), b.arrays[name].read())
    assert all(torch.equal(p, q) for p, q in zip(out_a, out_b))
    print(f"\n{model}: the resumed chip took three more writes and reads bit for bit")
