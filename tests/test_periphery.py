"""Crossbar periphery: layout, aihwkit-equivalent converters and noise, static effects (its speed:
bench/periphery.py)."""

import pytest
import torch

from analog_ep.errors import ConfigError
from analog_ep.hardware.periphery import (PeripheryConfig, analog_matmul, converter_step, effective_conductances,
                                          mismatch_gains, quantize_levels, to_tiles)


def reference_matmul(x, G, scale, cfg, out_features, clipped=None):
    """Slow, loop-over-tiles transcription of the periphery (deterministic parts only).

    `clipped`, a list, collects each tile's fraction of analog outputs beyond the ADC bound.
    """
    R, C, tr, tc = G.shape
    xp = torch.nn.functional.pad(x, (0, R * tr - x.shape[-1]))
    y = x.new_zeros(x.shape[0], C * tc)
    for r in range(R):
        xr = xp[:, r * tr:(r + 1) * tr]
        a = xr.abs().amax(-1, keepdim=True) if cfg.noise_management == "abs_max" else torch.ones_like(xr[:, :1])
        a = torch.where(a > 0, a, torch.ones_like(a))
        xr = xr / a
        if cfg.dac_bits:
            s = converter_step(cfg.dac_bits, cfg.dac_bound)
            xr = (xr / s).round().clamp(-cfg.dac_bound / s, cfg.dac_bound / s) * s
        for c in range(C):
            yt = xr @ G[r, c]
            if clipped is not None:
                clipped.append((yt.abs() > cfg.adc_bound).double().mean().item())
            if cfg.adc_bits:
                s = converter_step(cfg.adc_bits, cfg.adc_bound)
                yt = (yt / s).round().clamp(-cfg.adc_bound / s, cfg.adc_bound / s) * s
            y[:, c * tc:(c + 1) * tc] += yt * a
    return y[:, :out_features] * scale


@pytest.mark.parametrize("shape,tiles", [((1000, 300), (512, 512)), ((200, 300), (128, 64))])
@pytest.mark.parametrize("nm", ["abs_max", "none"])
def test_ideal_periphery_is_exact_matmul(shape, tiles, nm):
    g = torch.Generator().manual_seed(0)
    W = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    G = to_tiles(W, *tiles)
    x = torch.randn(3, 5, shape[0], generator=g, dtype=torch.float64)  # leading batch dims
    cfg = PeripheryConfig(noise_management=nm)
    y = analog_matmul(x, G, 0.37, cfg, shape[1])
    err = (y - x @ (0.37 * W)).abs().max().item()
    y32 = analog_matmul(x.float(), G.float(), 0.37, cfg, shape[1])
    err32 = ((y32.double() - x @ (0.37 * W)).abs().max() / (x @ W).abs().max()).item()
    print(f"\n{shape} on {tiles} tiles {tuple(G.shape)}, nm={nm}: max |err| f64 {err:.1e}, rel f32 {err32:.1e}")
    assert y.shape == (3, 5, shape[1]) and y.dtype == torch.float64 and y32.dtype == torch.float32
    assert err < 1e-12 and err32 < 1e-5


def test_vectorized_matches_tile_loop_with_converters():
    # Several row and column tiles, a clipping ADC and a coarse DAC: per-row-tile noise management
    # and per-tile converters must agree bit for bit with the explicit loop over tiles.
    g = torch.Generator().manual_seed(1)
    W = torch.rand(200, 150, generator=g, dtype=torch.float64) - 0.5
    G = to_tiles(W, 64, 48)
    x = torch.randn(40, 200, generator=g, dtype=torch.float64)
    x[:, 64:128] *= 10  # one row tile with much larger inputs: a shared scale would crush the others
    x[3] = 0  # all-zero input vector: the scale falls back to 1
    cfg = PeripheryConfig(dac_bits=5, adc_bits=6, adc_bound=1.5)
    y = analog_matmul(x, G, 1.5, cfg, 150)
    clipped = []
    ref = reference_matmul(x, G, 1.5, cfg, 150, clipped)
    err = (y - ref).abs().max().item()
    print(f"\nvectorized vs tile loop: max |diff| {err:.1e}; tile outputs clipped by the ADC "
          f"{sum(clipped) / len(clipped):.1%}; mean |error| vs ideal {(y - x @ W * 1.5).abs().mean().item():.3f}")
    assert err < 1e-12 and torch.all(y[3] == 0) and max(clipped) > 0


def aihwkit_tile(W: torch.Tensor, cfg: PeripheryConfig):
    """An aihwkit C++ AnalogTile with the equivalent forward IOParameters and the weights W (in, out)."""
    pytest.importorskip("aihwkit")
    from aihwkit.simulator.configs import ConstantStepDevice, SingleRPUConfig
    from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType, WeightNoiseType
    from aihwkit.simulator.parameters.io import IOParameters
    from aihwkit.simulator.tiles import AnalogTile

    io = IOParameters(
        is_perfect=False, inp_bound=cfg.dac_bound, inp_res=1 / (2 ** cfg.dac_bits - 2), inp_noise=0.0,
        inp_sto_round=False, out_bound=cfg.adc_bound, out_res=1 / (2 ** cfg.adc_bits - 2), out_noise=cfg.read_noise,
        out_sto_round=False, noise_management=NoiseManagementType.ABS_MAX, bound_management=BoundManagementType.NONE,
        w_noise=0.0, w_noise_type=WeightNoiseType.NONE, ir_drop=0.0, out_nonlinearity=0.0, r_series=0.0)
    device = ConstantStepDevice(w_min=-1.0, w_max=1.0, w_min_dtod=0.0, w_max_dtod=0.0)
    tile = AnalogTile(W.shape[1], W.shape[0], SingleRPUConfig(device=device, forward=io))
    tile.set_weights(W.T.contiguous())  # aihwkit holds (out, in) and computes x @ W_tile.T
    assert torch.equal(tile.get_weights()[0], W.T)
    return tile


def test_deterministic_converters_match_aihwkit_exactly():
    g = torch.Generator().manual_seed(2)
    W = torch.rand(64, 32, generator=g) - 0.5
    x = torch.randn(500, 64, generator=g) * 3
    cfg = PeripheryConfig(dac_bits=7, adc_bits=9, adc_bound=3.0)  # a tight ADC so that clipping happens too
    with torch.no_grad():
        y_aihw = aihwkit_tile(W, cfg).forward(x)
    y = analog_matmul(x, to_tiles(W, 64, 32), 1.0, cfg, 32)
    agree = ((y - y_aihw).abs() <= 1e-5 * x.abs().amax(-1, keepdim=True)).float().mean().item()
    ideal_gap = (x @ W - y_aihw).abs().max().item()
    print(f"\nnoise-free 7/9-bit read vs aihwkit: {agree:.2%} outputs equal, max |diff| "
          f"{(y - y_aihw).abs().max().item():.2e} (ideal x@W differs by up to {ideal_gap:.3f})")
    assert agree > 0.995 and ideal_gap > 0.05  # rare rounding ties may flip one ADC level


def test_noise_statistics_match_aihwkit():
    g = torch.Generator().manual_seed(3)
    W = torch.rand(64, 32, generator=g) - 0.5
    x = torch.randn(8, 64, generator=g)
    reps = 2000
    cfg = PeripheryConfig(dac_bits=7, adc_bits=9, read_noise=0.06)
    xr = x.repeat(reps, 1)
    with torch.no_grad():
        y_aihw = aihwkit_tile(W, cfg).forward(xr).view(reps, 8, 32).double()
    y = analog_matmul(xr, to_tiles(W, 64, 32), 1.0, cfg, 32, torch.Generator().manual_seed(4)).view(reps, 8, 32)
    y = y.double()
    m_a, m_o = y_aihw.mean(0), y.mean(0)
    s_a, s_o = y_aihw.std(0), y.std(0)
    mean_err = ((m_o - m_a).norm() / m_a.norm()).item()
    ideal_err = ((x @ W).double() - m_a).norm().item() / m_a.norm().item()  # what a wrong DAC would cost
    ratio = s_o / s_a
    expected = 0.06 * x.abs().amax(-1, keepdim=True).double()  # out_noise is scaled back by alpha
    print(f"\n{reps} reads of 8 inputs, 64x32 tile, read noise 0.06, 7/9-bit: mean rel. err vs aihwkit "
          f"{mean_err:.4f} (ideal x@W: {ideal_err:.4f}); noise std ratio ours/aihwkit mean "
          f"{ratio.mean().item():.3f} range [{ratio.min().item():.3f}, {ratio.max().item():.3f}]; "
          f"aihwkit std / (0.06 alpha) {(s_a / expected).mean().item():.3f}")
    assert mean_err < 0.3 * ideal_err and mean_err < 0.01
    assert abs(ratio.mean().item() - 1) < 0.03 and ratio.min() > 0.85 and ratio.max() < 1.15


def test_read_noise_adds_per_row_tile():
    g = torch.Generator().manual_seed(5)
    W = torch.rand(300, 40, generator=g, dtype=torch.float64) - 0.5
    G = to_tiles(W, 100, 40)  # three row tiles, each adds its own noise
    x = torch.randn(1, 300, generator=g, dtype=torch.float64).repeat(4000, 1)
    cfg = PeripheryConfig(read_noise=0.05, noise_management="none")
    dev = analog_matmul(x, G, 2.0, cfg, 40, g) - x @ W * 2.0
    std = dev.std().item()
    print(f"\nread noise 0.05 over 3 row tiles, scale 2: std {std:.4f} (expected {0.05 * 2 * 3 ** 0.5:.4f}), "
          f"mean {dev.mean().item():+.5f}")
    assert abs(std / (0.05 * 2 * 3 ** 0.5) - 1) < 0.03 and abs(dev.mean().item()) < 0.003


def test_weight_quantization_levels():
    """2**b - 1 symmetric levels including 0 (the converters' convention): a zero weight reads 0,
    quantising -G gives minus quantising G, and the bounds are levels."""
    g = torch.Generator().manual_seed(6)
    G = torch.randn(2, 3, 32, 16, generator=g, dtype=torch.float64) * 0.6  # some beyond [-1, 1]
    bits = 3
    Q = quantize_levels(G, bits, -1.0, 1.0)
    step = 1.0 / 3  # 2**(bits-1) - 1 = 3 levels on each side of 0
    counts = [Q[r, c].unique().numel() for r in range(2) for c in range(3)]
    inside = G.abs() <= 1
    err = (Q - G)[inside].abs().max().item()
    print(f"\n{bits}-bit weights: distinct levels per tile {counts}, levels {sorted(set(Q.unique().tolist()))}, "
          f"max |err| in range {err:.4f} (half step {step / 2:.4f})")
    assert max(counts) == 2 ** bits - 1 and err <= step / 2 + 1e-12
    assert torch.allclose(Q.unique(), torch.arange(-3, 4, dtype=torch.float64) * step)
    assert torch.equal(quantize_levels(-G, bits), -Q)  # symmetric
    assert bool((Q[G.abs() < step / 2] == 0).all()) and bool((G.abs() < step / 2).any())  # zero is a level
    assert torch.equal(Q[~inside], G[~inside].sign())  # out of range -> the bounds
    assert quantize_levels(G, 0) is G
    asym = quantize_levels(G, 4, -0.5, 1.0)  # levels k/7 from the larger bound; the device's -0.5 clips
    assert asym.min() == -0.5 and asym.max() == 1.0 and bool((quantize_levels(G.clamp(-0.1, 0.1) * 0.1, 4, -0.5, 1.0)
                                                             == 0).all())


def test_mismatch_gains():
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a, b, c = (mismatch_gains((100, 1000), 0.05, (0.2, 5.0), gen(s)) for s in (7, 7, 8))
    mean, std = a.mean().item(), a.std().item()
    wide = mismatch_gains((100_000,), 1.0, (0.2, 5.0), gen(9))
    print(f"\nmismatch 0.05 on 100k devices: mean {mean:.5f}, std {std:.5f}; sigma 1 clamped to "
          f"[{wide.min().item():.2f}, {wide.max().item():.2f}]")
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(mean - 1) < 0.002 and abs(std / 0.05 - 1) < 0.05
    assert wide.min() == 0.2 and wide.max() <= 5.0 and (wide == 0.2).any()
    G = torch.rand(2, 2, 8, 8, generator=gen(10)) - 0.5
    gains = mismatch_gains(G.shape, 0.1, generator=gen(11))
    assert torch.equal(effective_conductances(G, PeripheryConfig(), gains), G * gains)
    q = effective_conductances(G, PeripheryConfig(weight_bits=4), gains)
    assert torch.equal(q, quantize_levels(G, 4) * gains)  # programmed level first, then its gain


def test_optical_noise_is_multiplicative_and_fresh():
    g = torch.Generator().manual_seed(12)
    W = torch.rand(50, 200, generator=g, dtype=torch.float64) - 0.5
    G = to_tiles(W, 64, 64)
    x = torch.randn(500, 50, generator=g, dtype=torch.float64)
    cfg = PeripheryConfig(optical_noise=0.1)
    y_ideal = x @ W * 0.5
    y1 = analog_matmul(x, G, 0.5, cfg, 200, torch.Generator().manual_seed(13))
    y2 = analog_matmul(x, G, 0.5, cfg, 200, torch.Generator().manual_seed(13))
    y3 = analog_matmul(x, G, 0.5, cfg, 200)
    rel = (y1 / y_ideal - 1)[y_ideal.abs() > 1e-6]
    print(f"\noptical noise 0.1 on {rel.numel()} outputs: rel. deviation mean {rel.mean().item():+.5f}, "
          f"std {rel.std().item():.5f}")
    assert abs(rel.mean().item()) < 0.003 and abs(rel.std().item() / 0.1 - 1) < 0.02
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)


@pytest.mark.parametrize("kwargs", [dict(dac_bits=-1), dict(adc_bits=-3), dict(weight_bits=-1), dict(weight_bits=1), dict(dac_bits=1),
                                    dict(adc_bits=2.5), dict(dac_bound=0.0), dict(adc_bound=-1.0),
                                    dict(dac_bound=float("inf")), dict(read_noise=-0.1), dict(optical_noise=-1),
                                    dict(mismatch=-0.01), dict(mismatch_clamp=(1.2, 5.0)),
                                    dict(mismatch_clamp=(-0.1, 2.0)), dict(noise_management="abs_mean")])
def test_bad_configs_raise(kwargs):
    with pytest.raises(ConfigError) as info:
        PeripheryConfig(**kwargs)
    assert next(iter(kwargs)) in str(info.value)


def test_shape_mismatch_raises():
    G = torch.zeros(2, 1, 64, 64)
    with pytest.raises(ValueError):
        analog_matmul(torch.zeros(3, 60), G, 1.0, PeripheryConfig(), 64)  # fits in one row tile
    with pytest.raises(ValueError):
        analog_matmul(torch.zeros(3, 100), G, 1.0, PeripheryConfig(), 65)


def test_noise_bank_draws_are_unit_gaussian_and_uncorrelated_between_reads():
    from analog_ep.hardware.periphery import NoiseSource

    like = torch.empty(256, 64)
    src = NoiseSource(torch.Generator().manual_seed(5), bank_size=1 << 18)
    reads = torch.stack([src.gaussian(like).clone() for _ in range(200)])  # (read, N, out)
    flat = reads.reshape(200, -1)
    # The bank is standardised (mean 0, variance 1 exactly), so what can fail is the shape of the
    # distribution, and whether windows at random offsets act as independent draws.
    mean, std = float(flat.mean()), float(flat.std())
    a, b = flat[:-1].reshape(-1), flat[1:].reshape(-1)  # the same output position in consecutive reads
    corr = float(((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std()))
    kurt = float(((flat - mean) ** 4).mean() / std ** 4)  # a Gaussian's 3; a uniform bank's 1.8
    print(f"\nnoise bank: kurtosis {kurt:.3f}, lag-1 correlation {corr:+.4f}")
    assert abs(kurt - 3) < 0.1 and abs(corr) < 0.01
    again = NoiseSource(torch.Generator().manual_seed(5), bank_size=1 << 18)
    assert torch.equal(again.gaussian(like), reads[0])  # reproducible from the seed
    fresh = NoiseSource(torch.Generator().manual_seed(5), bank_size=0).gaussian(like)  # 16384 fresh draws
    assert fresh.shape == like.shape and abs(float(fresh.mean())) < 0.04 and abs(float(fresh.std()) - 1) < 0.03
