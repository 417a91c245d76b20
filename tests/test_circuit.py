"""The circuit: integrators against scipy's solve_ivp, noise, bandwidth, rails, measured settles."""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from analog_ep.circuit.dynamics import CircuitConfig, CircuitTerm, integrate
from analog_ep.circuit.energy import EnergyConfig, StepCost, settle_cost, write_cost
from analog_ep.circuit.measure import SettleConfig, circuit_ep_gradient, sample, settle
from analog_ep.errors import ConfigError
from analog_ep.estimator.ep import EPConfig, ep_gradient
from analog_ep.hardware.chip import AnalogChip, ChipConfig
from analog_ep.hardware.device import DeviceConfig
from analog_ep.model.transformer import EquilibriumTransformer, TransformerConfig
from analog_ep.relax.solvers import RelaxConfig, relax

TAU = 1e-8
EXACT = dict(dw_min_dtod=0.0, dw_min_std=0.0, up_down_dtod=0.0, w_max_dtod=0.0, w_min_dtod=0.0,
             w_max=1.0, w_min=-1.0)


def block(dtype=torch.float64, seed=0):
    model = EquilibriumTransformer(TransformerConfig(vocab_size=12, context=4, width=8, heads=2, embed_scale=1.0,
                                                     seed=seed)).to(dtype)
    x = torch.randint(0, 12, (2, 4), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        x_in = model.drive(x)
    return model, x, x_in


@pytest.fixture(scope="module")
def oracle():
    model, x, x_in = block()

    def rhs(t, y):
        with torch.no_grad():
            return (model.force(torch.from_numpy(y).view_as(x_in), x_in) / TAU).reshape(-1).numpy()

    end = 3 * TAU
    sols = {m: solve_ivp(rhs, (0, end), x_in.reshape(-1).numpy(), method=m, rtol=1e-12, atol=1e-14).y[:, -1]
            for m in ("RK45", "LSODA")}
    return model, x_in, end, sols


@pytest.mark.parametrize("integrator,dt", [("euler", TAU * 2e-4), ("rk4", TAU / 20), ("dopri5", TAU / 10)])
def test_integrators_agree_with_solve_ivp(oracle, integrator, dt):
    model, x_in, end, sols = oracle
    cfg = CircuitConfig(tau=TAU, integrator=integrator, dt=dt, rtol=1e-9, atol=1e-12, max_steps=10 ** 6)
    term = CircuitTerm(lambda z: model.force(z, x_in), cfg)
    state, stats = integrate(term, term.initial(x_in), end)
    for method, ref in sols.items():
        err = np.linalg.norm(state.z.reshape(-1).numpy() - ref) / np.linalg.norm(ref)
        print(f"\n{integrator} vs solve_ivp {method}: relative difference {err:.2e} "
              f"({term.evals} force evaluations, {stats.steps} steps, {stats.rejected} rejected)")
        assert err < 1e-5
    assert abs(state.t - end) < 1e-20


def test_ideal_chip_settles_to_the_digital_fixed_point():
    model, x, x_in = block(torch.float64)
    digital = relax(lambda z: model.force(z, x_in), x_in, RelaxConfig(steps=600)).z
    AnalogChip(model, ChipConfig(device=DeviceConfig(overrides=EXACT)))  # ideal periphery
    with torch.no_grad():
        x_in = model.drive(x)
    term = CircuitTerm(lambda z: model.force(z, x_in), CircuitConfig(tau=TAU, integrator="dopri5", rtol=1e-10, atol=1e-13))
    result = settle(term, term.initial(x_in), SettleConfig(cap=400 * TAU, check_every=2 * TAU,
                                                          monitor=dict(threshold=1e-9)))
    err = float((result.sample - digital).norm() / digital.norm())
    print(f"\nideal chip: settled in {result.settle_time:.2e} s ({result.verdict}), |z - z*_digital|/|z*| = {err:.2e}")
    assert result.verdict == "settled" and err < 1e-5  # float32 tiles hold the weights


def test_thermal_noise_spread_does_not_depend_on_dt():
    model, x, x_in = block(torch.float64)
    z_star = relax(lambda z: model.force(z, x_in), x_in, RelaxConfig(steps=600)).z
    spreads = {}
    for dt in (TAU / 10, TAU / 20):
        cfg = CircuitConfig(tau=TAU, integrator="euler", dt=dt, noise=0.01, max_steps=10 ** 6)
        term = CircuitTerm(lambda z: model.force(z, x_in), cfg)
        state = term.initial(z_star)
        gen = torch.Generator().manual_seed(0)
        devs = []
        for _ in range(400):  # sample every 2 tau for 800 tau at stationarity
            state, _ = integrate(term, state, 2 * TAU, gen)
            devs.append(state.z - z_star)
        spreads[dt] = float(torch.stack(devs).std())
    ratio = spreads[TAU / 20] / spreads[TAU / 10]
    print(f"\nstationary spread: dt=tau/10 {spreads[TAU / 10]:.5f}, dt=tau/20 {spreads[TAU / 20]:.5f}, ratio {ratio:.3f}")
    assert abs(ratio - 1) < 0.05


def test_amplifier_pole_keeps_the_fixed_point_and_slows_the_settle():
    model, x, x_in = block(torch.float64)
    z_star = relax(lambda z: model.force(z, x_in), x_in, RelaxConfig(steps=600)).z
    times = {}
    for amp in (0.0, 0.5 * TAU):
        term = CircuitTerm(lambda z: model.force(z, x_in), CircuitConfig(tau=TAU, integrator="dopri5", amp_tau=amp, rtol=1e-9, atol=1e-12))
        result = settle(term, term.initial(x_in), SettleConfig(cap=400 * TAU, check_every=TAU,
                                                              monitor=dict(threshold=1e-7)))
        times[amp] = result.settle_time
        err = float((result.sample - z_star).norm() / z_star.norm())
        print(f"\namp_tau={amp:.1e}: settled in {result.settle_time:.2e} s, fixed-point error {err:.1e}")
        assert err < 1e-5
    assert times[0.5 * TAU] > times[0.0]


def test_rails_clip_the_nodes():
    model, x, x_in = block(torch.float64)
    term = CircuitTerm(lambda z: model.force(z, x_in) + 5.0, CircuitConfig(tau=TAU, v_rail=0.8, integrator="rk4"))
    state, _ = integrate(term, term.initial(x_in), 20 * TAU)
    print(f"\nrails at 0.8: max |z| = {float(state.z.abs().max()):.3f}")
    assert float(state.z.abs().max()) <= 0.8 + 1e-12 and bool((state.z == 0.8).any())


def test_loop_kind_is_the_euler_map_per_pass():
    model, x, x_in = block(torch.float64)
    cfg = CircuitConfig(kind="loop", tau=TAU, loop_eps=0.1, pass_time=2e-9)
    term = CircuitTerm(lambda z: model.force(z, x_in), cfg)
    state, stats = integrate(term, term.initial(x_in), 50 * 2e-9)
    ref = relax(lambda z: model.force(z, x_in), x_in, RelaxConfig(steps=50)).z
    assert stats.steps == 50 and torch.allclose(state.z, ref) and math.isclose(state.t, 1e-7)


def test_adaptive_steps_with_noise_are_refused():
    with pytest.raises(ConfigError, match="integrator"):
        CircuitConfig(integrator="dopri5", noise=0.01)


def test_adc_sampling_and_lockin():
    z = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    s = sample(z, SettleConfig(adc_bits=6, adc_range=4.0), None)
    step = 8.0 / 62
    assert float(s.abs().max()) <= 4.0 and float((s[z.abs() < 3.9] - z[z.abs() < 3.9]).abs().max()) <= step / 2 + 1e-12
    # lock-in averaging of a noisy ADC shrinks the noise by sqrt(window)
    model, x, x_in = block(torch.float64)
    z_star = relax(lambda z: model.force(z, x_in), x_in, RelaxConfig(steps=600)).z
    spread = {}
    for window in (1, 16):
        term = CircuitTerm(lambda z: model.force(z, x_in), CircuitConfig(tau=TAU, integrator="dopri5"))
        errs = [settle(term, term.initial(z_star), SettleConfig(time=TAU, adc_noise=0.05, lockin=window),
                       torch.Generator().manual_seed(k)).sample - z_star for k in range(40)]
        spread[window] = float(torch.stack(errs).std())
    print(f"\nADC noise 0.05: single sample spread {spread[1]:.4f}, lock-in of 16 {spread[16]:.4f}")
    assert abs(spread[16] / spread[1] - 0.25) < 0.06


def test_circuit_ep_matches_digital_ep_on_an_ideal_circuit():
    model, x, x_in = block(torch.float64)
    y = torch.randint(0, 12, (2, 4), generator=torch.Generator().manual_seed(3))
    ep = EPConfig(steps=150, aep_clip=0)
    digital = ep_gradient(model, x, y, RelaxConfig(steps=600), ep).grads
    circuit = CircuitConfig(tau=TAU, integrator="dopri5", rtol=1e-10, atol=1e-13)
    result = circuit_ep_gradient(model, x, y, circuit, SettleConfig(cap=300 * TAU, check_every=2 * TAU,
                                                                    monitor=dict(threshold=1e-9)), ep)
    names = list(digital)
    a = torch.cat([result.grads[n].reshape(-1) for n in names])
    b = torch.cat([digital[n].reshape(-1) for n in names])
    cos = float(a @ b / (a.norm() * b.norm()))
    print(f"\ncircuit EP vs digital EP: cos {cos:.6f}; phases {result.phases}")
    assert cos > 0.999
    assert result.phases["free"]["settle_time"] > 0 and result.phases["nudged"]["force_evals"] > 0


def test_energy_model_adds_up():
    cfg = EnergyConfig(v_read=0.2, g_max=1e-5, e_pulse=1e-12, t_pulse=1e-7, e_adc=2e-12, t_adc=1e-8)
    cost = StepCost()
    settle_cost(cost, cfg, conductance=1e-2, settle_time=1e-7, copies=2, samples=100)
    write_cost(cost, cfg, pulses=1000, rounds=1)
    assert math.isclose(cost.read_j, 0.04 * 1e-2 * 1e-7 * 2)
    assert math.isclose(cost.adc_j, 2e-10) and math.isclose(cost.write_j, 1e-9)
    assert math.isclose(cost.latency_s, 1e-7 + 1e-8 + 1e-7)


def hopf_block(gain):
    """A block whose attention is a rotation of LN(z) with `gain`: a Hopf pair once gain > 1."""
    model, x, x_in = block(torch.float64, seed=1)
    C = 8
    with torch.no_grad():
        model.W_q.zero_()
        model.W_k.zero_()
        model.W_v.copy_(torch.eye(C))
        rot = torch.zeros(C, C, dtype=torch.float64)
        for i, angle in enumerate((1.3, 1.1, 0.9, 0.7)):  # 2x2 rotations at distinct angles
            c, s = math.cos(angle), math.sin(angle)
            rot[2 * i:2 * i + 2, 2 * i:2 * i + 2] = torch.tensor([[c, -s], [s, c]])
        model.W_o.copy_(gain * rot)
        model.W_proj.zero_()
        model.b_proj.zero_()
        model.config.damping = 0.0
    return model, x_in


@pytest.mark.parametrize("gain,expected", [(0.3, "settled"), (4.0, "oscillating")])
def test_monitor_tells_a_limit_cycle_from_a_settle_on_the_circuit(gain, expected):
    from analog_ep.diagnostics.spectrum import SpectrumConfig, leading_eigenvalues

    model, x_in = hopf_block(gain)
    circuit = CircuitConfig(tau=TAU, integrator="rk4", dt=0.05 * TAU, v_rail=10.0)
    term = CircuitTerm(lambda z: model.force(z, x_in), circuit)
    # Checks every 1.5 tau: the 16-check window spans several periods of the ~6 tau cycle.
    result = settle(term, term.initial(x_in), SettleConfig(cap=300 * TAU, check_every=1.5 * TAU,
                                                           monitor=dict(threshold=1e-6)))
    spec = leading_eigenvalues(lambda z: model.force(z, x_in), result.state.z, SpectrumConfig(k=2))
    print(f"\ngain {gain}: {result.verdict} -- {result.explanation}; leading mu at the end "
          f"{spec.eig_re[0]:+.3f}{spec.eig_im[0]:+.3f}j")
    assert result.verdict == expected


@pytest.mark.parametrize("name", ["rc_crossbar", "optical_loop", "euler"])
def test_shipped_circuit_files_load(name):
    from pathlib import Path

    from analog_ep.circuit import load_circuit

    path = Path(__file__).resolve().parents[1] / "circuits" / f"{name}.yaml"
    spec = load_circuit(str(path))
    assert spec.dynamics.kind in ("rc", "loop")


def test_broken_circuit_file_names_file_and_key(tmp_path):
    from analog_ep.circuit import load_circuit

    bad = tmp_path / "bad.yaml"
    bad.write_text("dynamics:\n  tua: 1.0e-8\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: dynamics.tua=.*did you mean 'tau'"):
        load_circuit(str(bad))
    bad.write_text("dynamics:\n  integrator: dopri5\n  noise: 0.01\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: dynamics.integrator"):
        load_circuit(str(bad))


def test_fingerprint_reports_the_hardware_operators_eigenvalues():
    import copy

    from analog_ep.diagnostics.spectrum import SpectrumConfig, leading_eigenvalues
    from analog_ep.hardware.periphery import PeripheryConfig

    model, x, x_in = block(torch.float64, seed=2)
    digital = copy.deepcopy(model)
    AnalogChip(model, ChipConfig(device=DeviceConfig(overrides=EXACT), periphery=PeripheryConfig(weight_bits=3,
                                                                                                 mismatch=0.2)))
    cfg = SpectrumConfig(k=3)
    hw = leading_eigenvalues(lambda z: model.force(z, x_in), x_in, cfg)
    ideal = leading_eigenvalues(lambda z: digital.force(z, x_in), x_in, cfg)
    # The same operator rebuilt digitally from what the tiles hold:
    rebuilt = copy.deepcopy(digital)
    with torch.no_grad():
        for name, _ in rebuilt.weight_matrices():
            rebuilt.get_parameter(name).copy_(model.get_parameter(name))
    same = leading_eigenvalues(lambda z: rebuilt.force(z, x_in), x_in, cfg)
    print(f"\nleading mu: digital {ideal.eig_re[0]:+.4f}{ideal.eig_im[0]:+.4f}j, chip (3-bit levels, 20% mismatch) "
          f"{hw.eig_re[0]:+.4f}{hw.eig_im[0]:+.4f}j")
    assert abs(hw.eig_re[0] - same.eig_re[0]) < 1e-6 and abs(hw.eig_im[0] - same.eig_im[0]) < 1e-6
    assert abs(hw.eig_re[0] - ideal.eig_re[0]) > 1e-3
