"""`chip.learning: local`: the update from reads through the tiles alone.

* transposed reads (`chip.periphery_backward`) match aihwkit's own `tile.backward`, as forward
  reads match `tile.forward` (tests/test_periphery.py);
* a local step never reads a conductance: with every digital copy of them poisoned (the model's
  mirrored parameters of held matrices, the chip's cached effective weights) the update is finite
  and identical to an unpoisoned step;
* on an ideal chip the local estimator equals the co-processor's to float32 conductance rounding,
  and the ideal chip trained locally tracks the digital twin;
* the co-processor pays for reading every device once per step; local learning for its reads.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from analog_ep.circuit import load_circuit
from analog_ep.config import load_config
from analog_ep.data.text import CharCorpus, TextDataConfig
from analog_ep.errors import AnalogEPError, ConfigError
from analog_ep.estimator.ep import EPConfig, estimate_adjoint, vector_field_gradient
from analog_ep.hardware.chip import AnalogChip, ChipConfig
from analog_ep.hardware.device import DeviceConfig
from analog_ep.hardware.periphery import PeripheryConfig
from analog_ep.model.transformer import EquilibriumTransformer, TransformerConfig
from analog_ep.phase import Term
from analog_ep.relax.solvers import RelaxConfig, relax
from analog_ep.schema.hardware import BackwardPeripheryConfig
from analog_ep.train.analog import AnalogTwin
from analog_ep.train.backend import check_backend
from analog_ep.train.optim import OptimizerConfig, ScheduleConfig
from analog_ep.train.stabilizers import StabilizerConfig
from analog_ep.train.twin import DigitalTwin

ROOT = Path(__file__).resolve().parents[1]
EXACT = dict(dw_min_dtod=0.0, dw_min_std=0.0, up_down_dtod=0.0, w_max_dtod=0.0, w_min_dtod=0.0)


def small(width=32, context=16):
    corpus = CharCorpus.from_config(TextDataConfig(context=context))
    model = EquilibriumTransformer(TransformerConfig(vocab_size=corpus.vocab_size, context=context, width=width,
                                                     heads=2, embed_scale=1.0))
    return corpus, model


# ---- transposed reads against aihwkit's tile.backward -------------------------------------------------
def io_parameters(p: PeripheryConfig):
    from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType, WeightNoiseType
    from aihwkit.simulator.parameters.io import IOParameters

    return IOParameters(
        is_perfect=False, inp_bound=p.dac_bound, inp_res=1 / (2 ** p.dac_bits - 2), inp_noise=0.0,
        inp_sto_round=False, out_bound=p.adc_bound, out_res=1 / (2 ** p.adc_bits - 2), out_noise=p.read_noise,
        out_sto_round=False, noise_management=NoiseManagementType.ABS_MAX, bound_management=BoundManagementType.NONE,
        w_noise=0.0, w_noise_type=WeightNoiseType.NONE, ir_drop=0.0, out_nonlinearity=0.0, r_series=0.0)


FORWARD = PeripheryConfig(dac_bits=8, adc_bits=8, adc_bound=3.0, read_noise=0.005)
BACKWARD = BackwardPeripheryConfig(dac_bits=6, adc_bits=7, adc_bound=2.0, read_noise=0.06)


def chip_and_aihwkit_tile(backward: BackwardPeripheryConfig):
    """A chip whose W_o (32x32, one tile) has transposed reads with their own converters, and an
    aihwkit tile holding the same conductances with those as its backward IOParameters."""
    from aihwkit.simulator.configs import ConstantStepDevice, SingleRPUConfig
    from aihwkit.simulator.tiles import AnalogTile

    _, model = small()
    chip = AnalogChip(model, ChipConfig(device=DeviceConfig(overrides=EXACT), periphery=FORWARD,
                                        periphery_backward=backward, tile_rows=64, tile_cols=64))
    G = chip._G["W_o"][0, 0].double()  # (in, out), tile units
    device = ConstantStepDevice(w_min=-1.0, w_max=1.0, w_min_dtod=0.0, w_max_dtod=0.0)
    rpu = SingleRPUConfig(device=device, forward=io_parameters(FORWARD),
                          backward=io_parameters(backward.resolve(FORWARD)))
    tile = AnalogTile(G.shape[1], G.shape[0], rpu)
    tile.set_weights(G.T.float().contiguous())  # aihwkit holds (out, in): backward(d) = d @ W_tile
    return chip, tile, G, chip.arrays["W_o"].scale


def test_deterministic_transposed_reads_match_aihwkit_tile_backward_exactly():
    pytest.importorskip("aihwkit")
    backward = BackwardPeripheryConfig(dac_bits=6, adc_bits=7, adc_bound=0.5, read_noise=0.0)
    chip, tile, G, scale = chip_and_aihwkit_tile(backward)
    d = torch.randn(500, G.shape[1], generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        ours = chip.matmul("W_o", d, transpose=True).double() / scale
        theirs = tile.backward(d).double()
    agree = ((ours - theirs).abs() <= 1e-5 * d.abs().amax(-1, keepdim=True)).double().mean().item()
    ideal_gap = (d.double() @ G.T - theirs).abs().max().item()
    print(f"\nnoise-free 6/7-bit transposed read vs aihwkit tile.backward: {agree:.2%} outputs equal "
          f"(ideal d @ W^T differs by up to {ideal_gap:.3f}: the backward ADC clips at 0.5)")
    assert agree > 0.995 and ideal_gap > 0.05


def test_transposed_read_noise_matches_aihwkit_tile_backward():
    pytest.importorskip("aihwkit")
    chip, tile, G, scale = chip_and_aihwkit_tile(BACKWARD)
    d = torch.randn(8, G.shape[1], generator=torch.Generator().manual_seed(5))  # errors at the output side
    reps = 2000
    dr = d.repeat(reps, 1)
    with torch.no_grad():
        ours = (chip.matmul("W_o", dr, transpose=True).double() / scale).view(reps, 8, -1)
        theirs = tile.backward(dr).double().view(reps, 8, -1)
    m_o, m_a = ours.mean(0), theirs.mean(0)
    s_o, s_a = ours.std(0), theirs.std(0)
    # the two means differ by sampling alone: each has a standard error s / sqrt(reps)
    z = (m_o - m_a) / torch.sqrt((s_o ** 2 + s_a ** 2) / reps)
    expected = BACKWARD.read_noise * d.abs().amax(-1, keepdim=True).double()  # out_noise x the NM scale
    ratio = s_o / s_a
    print(f"\n{reps} transposed reads of 8 errors, 32x32 tile, backward 6/7-bit, read noise 0.06: mean "
          f"difference vs aihwkit tile.backward {z.abs().mean().item():.2f} standard errors (max "
          f"{z.abs().max().item():.2f}); noise std ratio ours/aihwkit {ratio.mean().item():.3f} "
          f"[{ratio.min().item():.3f}, {ratio.max().item():.3f}]; aihwkit std / (0.06 alpha) "
          f"{(s_a / expected).mean().item():.3f}")
    assert z.abs().mean() < 1.0 and z.abs().max() < 4.5  # |N(0,1)|: mean 0.8, max of 256 ~3
    assert abs(ratio.mean().item() - 1) < 0.03 and ratio.min() > 0.85 and ratio.max() < 1.15
    assert abs((s_a / expected).mean().item() - 1) < 0.05  # the backward noise, not the forward's 0.005


def test_transposed_reads_use_their_own_converters_and_inherit_the_forward_ones_by_default():
    _, model = small()
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(6))
    reads = {}
    for name, backward in (("inherit", BackwardPeripheryConfig()), ("same", BackwardPeripheryConfig(
            **{k: getattr(FORWARD, k) for k in ("dac_bits", "adc_bits", "adc_bound", "read_noise")})),
                           ("own", BACKWARD)):
        chip = AnalogChip(copy.deepcopy(model), ChipConfig(device=DeviceConfig(overrides=EXACT), periphery=FORWARD,
                                                           periphery_backward=backward))
        reads[name] = chip.matmul("W_fc", x @ torch.ones(32, 128) / 32, transpose=True)
    assert torch.equal(reads["inherit"], reads["same"])
    assert not torch.equal(reads["inherit"], reads["own"])
    resolved = BACKWARD.resolve(FORWARD)
    assert (resolved.dac_bits, resolved.adc_bits, resolved.read_noise, resolved.dac_bound) == (6, 7, 0.06, 1.0)


# ---- the estimator through the tiles ----------------------------------------------------------------
def estimator(model, learning, x, y, ep=EPConfig(steps=10, aep="frozen"), **chip_kwargs):
    chip = AnalogChip(model, ChipConfig(device=DeviceConfig(overrides=EXACT), write="ideal", learning=learning,
                                        **chip_kwargs))
    reads = "tiles" if learning == "local" else "chip"
    with torch.no_grad():
        x_in = model.drive(x)
        z = relax(Term(lambda s: model.force(s, x_in), model.leak), model.initial_state(x_in), RelaxConfig(steps=30)).z
    adjoint = estimate_adjoint(model, x_in, y, z, ep, reads)
    return chip, adjoint, vector_field_gradient(model, x, y, z, adjoint.a, reads)


def test_on_an_ideal_chip_the_local_estimator_is_the_coprocessors():
    corpus, model = small()
    model = model.double()
    x, y = corpus.batch("train", 8, torch.Generator().manual_seed(1))
    _, a_co, g_co = estimator(copy.deepcopy(model), "coprocessor", x, y)
    chip, a_lo, g_lo = estimator(copy.deepcopy(model), "local", x, y)
    assert a_lo.jacobian_products > 0  # the AEP correction ran, through the tiles
    gaps = {n: float((g_lo[n] - g_co[n]).norm() / g_co[n].norm()) for n in g_co if g_co[n].norm() > 0}
    print(f"\nideal chip, local vs co-processor: adjoint {float((a_lo.a - a_co.a).norm() / a_co.a.norm()):.1e}, "
          f"largest gradient gap {max(gaps.values()):.1e} ({max(gaps, key=gaps.get)})")
    # float32 conductances: the co-processor's effective weights are rounded once more (G x scale)
    assert float((a_lo.a - a_co.a).norm() / a_co.a.norm()) < 1e-6
    assert max(gaps.values()) < 1e-6 and all(torch.isfinite(g).all() for g in g_lo.values())


def test_the_local_gradient_carries_the_noise_of_its_reads():
    # The same free state and adjoint on a noisy chip: the local vector-field gradient differs from
    # the co-processor's exact products by the noise and converters of its forward and transposed
    # reads (the co-processor's reads='chip' substitutes the conductances, on the same chip).
    corpus, model = small()
    x, y = corpus.batch("train", 8, torch.Generator().manual_seed(1))
    noisy = dict(periphery=PeripheryConfig(dac_bits=8, adc_bits=8, adc_bound=3.0, read_noise=0.02))
    chip, adjoint, g_lo = estimator(model, "local", x, y, **noisy)
    with torch.no_grad():
        x_in = model.drive(x)
        z = relax(Term(lambda s: model.force(s, x_in), model.leak), model.initial_state(x_in), RelaxConfig(steps=30)).z
    g_lo = vector_field_gradient(model, x, y, z, adjoint.a, "tiles")
    g_co = vector_field_gradient(model, x, y, z, adjoint.a, "chip")
    cos = {n: float(torch.nn.functional.cosine_similarity(g_lo[n].flatten(), g_co[n].flatten(), dim=0))
           for n in ("W_q", "W_o", "W_fc", "W_proj")}
    norms = {n: float(g_lo[n].norm() / g_co[n].norm()) for n in cos}
    print(f"\nnoisy chip, same adjoint: local vs co-processor gradient cosines {cos}, norm ratios {norms}")
    assert all(0.7 < c < 0.9999 for c in cos.values()) and all(0.7 < r < 1.4 for r in norms.values())


def test_weights_of_a_locally_learning_chip_cannot_be_read_digitally():
    _, model = small()
    AnalogChip(model, ChipConfig(device=DeviceConfig(overrides=EXACT), learning="local"))
    with pytest.raises(AnalogEPError, match="learns locally"):
        model.weight("W_o")
    assert model.weight("ln1_w") is model.ln1_w  # digital parameters stay readable


# ---- no conductance read in a local step ----------------------------------------------------------------
def local_twin(optimizer: str, write: str, circuit: bool = True):
    corpus, model = small()
    spec = load_circuit(str(ROOT / "circuits" / "rc_crossbar.yaml"))
    args = (RelaxConfig(steps=30), EPConfig(beta=0.05, steps=10, aep="frozen"),
            OptimizerConfig(name=optimizer, lr=1e-3, weight_decay=0.1),
            ScheduleConfig(name="constant", warmup=0, total_steps=10), StabilizerConfig(jacreg=0.1))
    chip = ChipConfig(device=DeviceConfig(model="ConstantStep", overrides=dict(dw_min=2.5e-4)),
                      periphery=PeripheryConfig(dac_bits=8, adc_bits=8, adc_bound=3.0, read_noise=0.01),
                      write=write, learning="local", seed=3)
    kwargs = dict(circuit=spec.dynamics, settle=spec.settle, energy=spec.energy) if circuit else {}
    return corpus, AnalogTwin(model, chip, *args, seed=4, **kwargs)


def poison(twin) -> None:
    """Every digital copy of the conductances to NaN: the mirrored parameters of held matrices and
    the chip's cached effective weights (refilled with NaN, as if read before the step)."""
    with torch.no_grad():
        for name, p in twin.model.named_parameters():
            if twin.chip.holds(name):
                p.fill_(float("nan"))
    twin.chip._effective.clear()
    twin.chip._effective.update({n: torch.full(a.shape, float("nan")) for n, a in twin.chip.arrays.items()})


@pytest.mark.parametrize("optimizer,write,steps", [("lion", "sign_pulse", 2), ("adamw", "quantized", 1)])
def test_a_local_step_reads_no_conductance(optimizer, write, steps):
    # jacreg on, frozen AEP, a circuit, weight decay: every reader of the weights in a step
    corpus, clean = local_twin(optimizer, write)
    _, poisoned = local_twin(optimizer, write)
    batches = [corpus.batch("train", 8, torch.Generator().manual_seed(s)) for s in range(steps)]
    for step, (x, y) in enumerate(batches, 1):
        poison(poisoned)
        rc, rp = clean.step(x, y, step), poisoned.step(x, y, step)
        assert math.isfinite(rp.grad_norm) and rp.grad_norm > 0 and rp.pulses > 0
        assert (rp.loss, rp.grad_norm, rp.pulses, rp.energy) == (rc.loss, rc.grad_norm, rc.pulses, rc.energy)
        for name, arr in clean.chip.arrays.items():
            assert torch.equal(arr.read(), poisoned.chip.arrays[name].read()), name
    # the digital parameters were updated identically too (the mirrors are the chip's again)
    for (n, pc), (_, pp) in zip(clean.model.named_parameters(), poisoned.model.named_parameters()):
        assert torch.equal(pc, pp), n
    assert clean.last_cost.readout_j == 0 and clean.last_cost.update_read_j > 0


def test_the_coprocessor_step_reads_the_conductances():
    # The same poison on a co-processor chip spoils its update: the test above can fail.
    corpus, twin = local_twin("adamw", "quantized")
    twin.chip.local = False
    twin.backend.reads = "chip"
    x, y = corpus.batch("train", 8, torch.Generator().manual_seed(0))
    poison(twin)
    with pytest.raises(AnalogEPError, match="residual=nan"):  # its AEP correction sends the nudged settle to NaN
        twin.step(x, y, 1)


# ---- the ideal chip, learning locally, tracks the digital twin -------------------------------------------
def test_ideal_chip_learning_locally_tracks_the_digital_twin():
    # The shipped ideal chip's recipe (float64, SGD with momentum, exact writes), smaller; weight
    # decay off: the local chip's controller writes it decoupled, SGD couples it to the gradient.
    corpus, model = small()
    model = model.double()
    args = (RelaxConfig(steps=30), EPConfig(steps=10), OptimizerConfig(name="sgd", lr=0.1, momentum=0.9,
                                                                        weight_decay=0.0),
            ScheduleConfig(name="constant", warmup=0, total_steps=20), StabilizerConfig(jacreg=0.1))
    ideal = ChipConfig(device=DeviceConfig(model="ConstantStep", overrides=EXACT), write="ideal", learning="local",
                       range_factor=4.0)
    analog, digital = AnalogTwin(model, ideal, *args), DigitalTwin(model, *args)
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for step in range(1, 21):
        x, y = corpus.batch("train", 8, gen)
        ra, rd = analog.step(x, y, step), digital.step(x, y, step)
        worst = max(worst, abs(ra.loss - rd.loss))
    print(f"\nideal chip, local learning, 20 steps: losses within {worst:.1e} of the digital twin's "
          f"(last {ra.loss:.5f} vs {rd.loss:.5f})")
    assert worst < 1e-4 and rd.loss < 4.0
    for (n, pa), (_, pd) in zip(analog.model.named_parameters(), digital.model.named_parameters()):
        assert float((pa - pd).detach().abs().max()) < 1e-4, n


# ---- energy: what each mode reads ------------------------------------------------------------------------
def test_the_coprocessor_pays_for_reading_every_device_once_per_step():
    corpus, twin = local_twin("lion", "sign_pulse")
    twin.chip.local = False
    twin.backend.reads = "chip"
    x, y = corpus.batch("train", 8, torch.Generator().manual_seed(0))
    twin.step(x, y, 1)
    e = load_circuit(str(ROOT / "circuits" / "rc_crossbar.yaml")).energy
    load = twin.chip.load(e.g_max)
    devices = sum(a.shape[0] * a.shape[1] for a in twin.chip.arrays.values())  # 32x32 x4, 32x128, 128x32
    assert devices == 4 * 32 * 32 + 2 * 32 * 128 == load.devices and load.tallest == 128
    expected = e.e_adc * devices + e.v_read ** 2 * load.conductance * e.t_adc
    cost = twin.last_cost
    print(f"\nco-processor readout of {devices} devices: {cost.readout_j:.3e} J, {cost.readout_s:.2e} s "
          f"({cost.readout_j / cost.energy_j:.1%} of the step's energy)")
    assert cost.readout_j == pytest.approx(expected, rel=1e-12) and cost.readout_j > 2e-12 * devices
    assert cost.readout_s == pytest.approx(128 * e.t_adc) and cost.update_read_j == 0


# ---- configuration ----------------------------------------------------------------------------------------
def test_local_learning_refuses_what_it_cannot_know():
    cfg = load_config(str(ROOT / "chips" / "rram_512.yaml"), ["chip.learning=local", "optim.trust_ratio=true"])
    with pytest.raises(ConfigError, match="trust_ratio"):
        check_backend(cfg)
    cfg = load_config(str(ROOT / "chips" / "rram_512.yaml"), ["chip.learning=local"])
    check_backend(cfg)
    with pytest.raises(ConfigError, match="learning"):
        load_config(str(ROOT / "chips" / "rram_512.yaml"), ["chip.learning=on_chip"])
    with pytest.raises(ConfigError, match="adc_bits"):
        load_config(str(ROOT / "chips" / "rram_512.yaml"), ["chip.periphery_backward.adc_bits=1"])


def test_the_update_reads_and_the_readout_cost_what_the_model_says():
    from analog_ep.circuit.energy import ChipLoad, EnergyConfig, StepCost, readout_cost, update_read_cost

    cfg = EnergyConfig(v_read=0.2, e_adc=2e-12, t_adc=1e-8, e_detector=5e-14, e_modulator=3e-14)
    load = ChipLoad(conductance=1e-2, rows=100, cols=60, devices=3000, tallest=50)
    cost = StepCost()
    update_read_cost(cost, cfg, load, vectors=5, products=4)  # the gradient's reads + 2 pairs of AEP products
    conversions = 5 * (100 + 60) * 3
    assert math.isclose(cost.update_read_j, (2e-12 + 5e-14) * conversions + 3e-14 * conversions)
    assert math.isclose(cost.update_read_s, 1e-8 * 6) and cost.readout_j == 0
    readout_cost(cost, cfg, load)
    assert math.isclose(cost.readout_j, (2e-12 + 5e-14) * 3000 + 3e-14 * 100 + 0.04 * 1e-2 * 1e-8)
    assert math.isclose(cost.readout_s, 50e-8)
    assert math.isclose(cost.energy_j, cost.update_read_j + cost.readout_j)
    assert math.isclose(cost.latency_s, 6e-8 + 50e-8)
