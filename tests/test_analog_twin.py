"""A short EP run on a simulated chip learns, and the ideal chip tracks the digital twin."""
import pytest
import torch

from analog_ep.data.text import CharCorpus, TextDataConfig
from analog_ep.estimator.ep import EPConfig
from analog_ep.hardware.chip import ChipConfig
from analog_ep.hardware.device import DeviceConfig
from analog_ep.hardware.periphery import PeripheryConfig
from analog_ep.model.transformer import EquilibriumTransformer, TransformerConfig
from analog_ep.relax.solvers import RelaxConfig
from analog_ep.train.analog import AnalogTwin
from analog_ep.train.optim import OptimizerConfig, ScheduleConfig
from analog_ep.train.stabilizers import StabilizerConfig
from analog_ep.train.twin import DigitalTwin

STEPS = 60


def setup(lr=5e-4, optimizer="lion"):
    corpus = CharCorpus.from_config(TextDataConfig(context=16))
    model = EquilibriumTransformer(TransformerConfig(vocab_size=corpus.vocab_size, context=16, width=32,
                                                     heads=2, embed_scale=1.0))
    args = (RelaxConfig(steps=30), EPConfig(steps=10), OptimizerConfig(name=optimizer, lr=lr, weight_decay=0.0),
            ScheduleConfig(name="constant", warmup=0, total_steps=STEPS), StabilizerConfig(jacreg=0.0))
    return corpus, model, args


@torch.no_grad()
def mean_loss(twin, batches):
    return sum(float(twin.model.loss(twin_relax(twin, x), y)) for x, y in batches) / len(batches)


def twin_relax(twin, x):
    from analog_ep.relax.solvers import relax
    with torch.no_grad():
        x_in = twin.model.drive(x)
        return relax(lambda z: twin.model.force(z, x_in), twin.model.initial_state(x_in), twin.relax_config).z


@pytest.mark.parametrize("chip_seed", [0, 1])
def test_sign_pulse_lion_on_constant_step_devices_lowers_the_training_loss(chip_seed):
    corpus, model, args = setup()
    # One pulse moves a weight by dw_min x scale ~ 5e-4 model units here: Lion's lr in device terms.
    # No cycle-to-cycle noise here: aihwkit draws it from an unseeded C++ generator, which would make
    # this test's margin a matter of luck (its physics is tested in test_hardware.py).
    chip = ChipConfig(device=DeviceConfig(model="ConstantStep", overrides=dict(dw_min=2.5e-4, dw_min_std=0.0)),
                      periphery=PeripheryConfig(dac_bits=8, adc_bits=8, read_noise=0.01), write="sign_pulse",
                      seed=chip_seed)
    twin = AnalogTwin(model, chip, *args)
    gen = torch.Generator().manual_seed(0)
    train = [corpus.batch("train", 16, gen) for _ in range(STEPS)]
    probe = train[:8]  # the loss is read through noisy relaxations: average several batches
    before = mean_loss(twin, probe)
    for step, (x, y) in enumerate(train, 1):
        twin.step(x, y, step)
    after = mean_loss(twin, probe)
    pulses = twin.chip.pulses
    print(f"\nanalog twin (ConstantStep, sign-pulse Lion): training loss {before:.3f} -> {after:.3f}, "
          f"{pulses} pulses in {len(twin.chip.ledger)} ledger rounds")
    assert after < before - 0.25
    assert pulses > 0 and pulses == sum(u + d for u, d in twin.chip.ledger.pulse_counts("train").values())


def test_ideal_chip_tracks_the_digital_twin():
    # float64 and SGD: in float32 the EP estimate itself scatters by ~1% with rounding (the nudge
    # moves z by ~1e-5 of its norm), and sign-like optimizers (Lion, AdamW's first steps) turn
    # that into whole-step differences of near-zero components.
    corpus, model, args = setup(lr=0.05, optimizer="sgd")
    model = model.double()
    exact = dict(dw_min_dtod=0.0, dw_min_std=0.0, up_down_dtod=0.0, w_max_dtod=0.0, w_min_dtod=0.0)
    ideal = ChipConfig(device=DeviceConfig(model="ConstantStep", overrides=exact), write="ideal")
    analog, digital = AnalogTwin(model, ideal, *args), DigitalTwin(model, *args)
    gen = torch.Generator().manual_seed(1)
    for step in range(1, 6):
        x, y = corpus.batch("train", 8, gen)
        ra, rd = analog.step(x, y, step), digital.step(x, y, step)
        print(f"step {step}: analog {ra.loss:.6f} digital {rd.loss:.6f}")
        assert abs(ra.loss - rd.loss) < 1e-5 * max(1.0, rd.loss)
    for (n, pa), (_, pd) in zip(analog.model.named_parameters(), digital.model.named_parameters()):
        err = float((pa - pd).detach().abs().max())
        assert err < 1e-5, (n, err)


def test_trust_ratio_gain_becomes_whole_pulses_per_tensor():
    corpus, model, args = setup(lr=5e-3)  # lr_eff = lr x rms(W) ~ several pulse steps
    opt = args[2]
    opt.trust_ratio = True
    chip = ChipConfig(device=DeviceConfig(model="ConstantStep", overrides=dict(dw_min=1e-4)), max_pulses=6)
    twin = AnalogTwin(model, chip, *args)
    x, y = corpus.batch("train", 8, torch.Generator().manual_seed(2))
    twin.step(x, y, 1)
    rounds: dict[str, int] = {}
    for _, array, _, _ in twin.chip.ledger.rounds(phase="train"):
        rounds[array] = rounds.get(array, 0) + 1
    expected = {}
    for name, p in twin.model.named_parameters():
        if twin.chip.holds(name):  # lr_eff = lr * ||p|| / ||u||, u = +-1 everywhere at step 1
            gain = opt.lr * float(p.norm()) / p.numel() ** 0.5
            expected[name] = min(6, max(1, round(gain / twin.chip.step_size[name])))
    print(f"\ntrust-ratio pulses per matrix: {rounds}; expected about {expected}")
    assert max(rounds.values()) > 1
    for name, n in rounds.items():
        assert abs(n - expected[name]) <= 1, name


def test_analog_twin_on_a_circuit_reports_settles_energy_and_learns():
    from analog_ep.circuit import load_circuit
    from pathlib import Path

    spec = load_circuit(str(Path(__file__).resolve().parents[1] / "circuits" / "rc_crossbar.yaml"))
    # Above the floor this chip's 8-bit per-product converters set (residual ~2.6e-2): phases end
    # settled instead of waiting two monitor windows to diagnose the floor.
    spec.settle.monitor.threshold = 5e-2
    corpus, model, args = setup()
    args = (args[0], EPConfig(beta=0.05, steps=10), *args[2:])  # per-token nudge on a circuit
    # cycle-to-cycle noise off: aihwkit's generator for it is unseeded (see the test above)
    chip = ChipConfig(device=DeviceConfig(model="ConstantStep", overrides=dict(dw_min=2.5e-4, dw_min_std=0.0)),
                      periphery=PeripheryConfig(dac_bits=8, adc_bits=8, read_noise=0.01))
    twin = AnalogTwin(model, chip, *args, circuit=spec.dynamics, settle=spec.settle, energy=spec.energy)
    gen = torch.Generator().manual_seed(0)
    train = [corpus.batch("train", 16, gen) for _ in range(30)]
    probe = train[:6]
    before = twin.evaluate(probe)
    records = [twin.step(x, y, k) for k, (x, y) in enumerate(train, 1)]
    after = twin.evaluate(probe)
    r = records[-1]
    cost = twin.last_cost.as_dict()
    print(f"\ncircuit twin: loss {before:.3f} -> {after:.3f}; last step settle {r.settle_time:.2e} s "
          f"({r.verdict}), energy {r.energy:.2e} J {cost}, pulses {r.pulses}")
    assert after < before - 0.1
    assert r.settle_time > 0 and r.energy > 0 and r.pulses > 0 and r.verdict == "settled"
    assert cost["write_j"] == pytest.approx(spec.energy.e_pulse * r.pulses)


def test_sign_pulse_lion_writes_the_weight_decay_the_digital_twin_applies():
    """Lion's decoupled decay is not in its signs: the chip writes it as pulses toward zero, so with
    no gradient both twins' matrices shrink alike (the digital twin by 1% per step exactly)."""
    corpus, model, args = setup(lr=5e-4, optimizer="lion")
    args[2].weight_decay = 20.0  # lr x weight_decay = 1% of every weight per step
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    chip = ChipConfig(device=DeviceConfig(model="ConstantStep", overrides=dict(dw_min=2.5e-4, dw_min_std=0.0)))
    analog, digital = AnalogTwin(model, chip, *args), DigitalTwin(model, *args)
    zeros = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    steps = 30
    for _ in range(steps):
        analog._apply(zeros)
        digital._apply(zeros)
    expected = (1 - 5e-4 * 20.0) ** steps
    for name, arr in analog.chip.arrays.items():
        W, D, W0 = arr.read(), digital.model.get_parameter(name).detach(), w0[name]
        slope_a, slope_d = (float((M * W0).sum() / W0.pow(2).sum()) for M in (W, D))
        print(f"\n{name}: analog {slope_a:.4f} x W0, digital {slope_d:.4f} x W0 (exact {expected:.4f}), "
              f"{analog.chip.pulses} pulses")
        assert slope_d == pytest.approx(expected, rel=1e-5) and abs(slope_a - slope_d) < 0.01, name


@pytest.mark.parametrize("kind", ["digital", "analog"])
def test_twins_follow_the_documented_schedule_from_step_one_without_warnings(kind):
    """Step s (1-based) uses lr x ScheduleConfig.factor(s - 1), warmup included, on both twins;
    torch's lr_scheduler warns when optimizer.step() was bypassed, which also means its schedule
    skipped a value: no warning may be raised."""
    import warnings

    corpus, model, args = setup(lr=1e-3)
    schedule = ScheduleConfig(name="cosine", warmup=3, total_steps=8, min_ratio=0.1)
    args = (*args[:3], schedule, args[4])
    if kind == "analog":  # sign-pulse Lion: the held matrices are pulsed, the rest stepped digitally
        chip = ChipConfig(device=DeviceConfig(model="ConstantStep", overrides=dict(dw_min=2.5e-4, dw_min_std=0.0)))
        twin = AnalogTwin(model, chip, *args)
        assert twin.chip.holds("W_q") and not twin.chip.holds("b_fc")
    else:
        twin = DigitalTwin(model, *args)
    bias = dict(twin.model.named_parameters())["b_fc"]  # a digital parameter in both twins
    gen = torch.Generator().manual_seed(3)
    used, moved = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(1, 9):
            x, y = corpus.batch("train", 8, gen)
            used.append(twin.optimizer.param_groups[0]["lr"])
            before = bias.detach().clone()
            twin.step(x, y, step)
            moved.append(float((bias.detach() - before).abs().max()))  # Lion, no decay: exactly the lr
    expected = [1e-3 * schedule.factor(s) for s in range(8)]
    print(f"\n{kind} twin: lr used per step {used}")
    assert used[:3] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])  # warmup from its first value
    assert used == pytest.approx(expected) and moved == pytest.approx(expected, rel=1e-5)
    assert used[-1] == pytest.approx(1e-4)  # min_ratio at the last step


def test_analog_twin_without_a_circuit_reports_no_settle_time_or_energy():
    corpus, model, args = setup()
    chip = ChipConfig(device=DeviceConfig(model="ConstantStep", overrides=dict(dw_min=2.5e-4, dw_min_std=0.0)))
    x, y = corpus.batch("train", 4, torch.Generator().manual_seed(4))
    record = AnalogTwin(model, chip, *args).step(x, y, 1)
    assert record.settle_time is None and record.energy is None  # not a silent 0.0
    assert record.pulses > 0
