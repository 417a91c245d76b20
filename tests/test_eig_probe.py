"""The eigenvalue probe on the thick transformer block's force, checked against the dense Jacobian.

(a) A small converged block is contractive at its fixed point: leading Re mu < 0.
(b) A block built to have an unstable complex pair: W_q = W_k = 0 (uniform causal attention, no
    score feedback), W_v = I, W_o = g R with R block-diagonal 2x2 rotations by angles theta_i, the
    FFN output switched off (W_proj = 0, b_proj = 0) and no damping. The Jacobian is then block
    lower-triangular over tokens; token i's diagonal block is -I + P_ii J_LN(z_i) (g R)^T, whose
    eigenvalues are ~ -1 + g s_i exp(+-i theta) (s_i = 1/std of z_i): a complex pair that is
    unstable for g cos(theta) s > 1. The probe's state is x_in (an unstable operator has no settled
    z*); the dense check uses the same state.
"""
import math

import numpy as np
import pytest
import torch

from analog_ep.linear import SpectrumConfig, leading_eigenvalues
from analog_ep.model.transformer import EquilibriumTransformer, TransformerConfig
from analog_ep.relax.solvers import RelaxConfig, relax




def tiny_block(T=4, C=8, **kw):
    cfg = TransformerConfig(vocab_size=10, context=T, width=C, heads=2, seed=1, embed_scale=1.0, **kw)
    model = EquilibriumTransformer(cfg).double()
    idx = (torch.arange(T) * 3 % 10).reshape(1, T)
    with torch.no_grad():
        x_in = model.drive(idx)
    return model, x_in


def rotations(C, gain, theta0, spread=0.15):
    """gain * block-diagonal 2x2 rotations with distinct angles (distinct eigenvalue pairs)."""
    R = torch.zeros(C, C, dtype=torch.float64)
    for b, i in enumerate(range(0, C, 2)):
        th = theta0 + spread * b
        c, s = math.cos(th), math.sin(th)
        R[i, i] = R[i + 1, i + 1] = c
        R[i, i + 1], R[i + 1, i] = s, -s
    return gain * R


def make_unstable(model, gain=4.0, theta=1.0):
    C = model.config.width
    with torch.no_grad():
        model.W_q.zero_()
        model.W_k.zero_()
        model.W_v.copy_(torch.eye(C, dtype=torch.float64))
        model.W_o.copy_(rotations(C, gain, theta))
        model.W_proj.zero_()
        model.b_proj.zero_()
    return model


def dense_spectrum(force, z):
    n = z.numel()
    jac = torch.autograd.functional.jacobian(force, z).reshape(n, n).numpy()
    ev = np.linalg.eigvals(jac)
    ev = ev[np.lexsort((-ev.imag, -ev.real))]
    return ev, float(np.linalg.eigvalsh((jac + jac.T) / 2)[-1])


def probe_vs_dense(force, z, k):
    s = leading_eigenvalues(force, z, SpectrumConfig(k=k, tol=1e-10))
    ev, abscissa = dense_spectrum(force, z)
    got = np.array(s.eig_re) + 1j * np.array(s.eig_im)
    return s, got, ev[: len(got)], abscissa


def test_contractive_block_is_stable_at_its_fixed_point():
    model, x_in = tiny_block()
    force = lambda z: model.force(z, x_in)  # noqa: E731
    with torch.no_grad():
        free = relax(force, x_in, RelaxConfig(steps=300))
    assert free.residual <= 1e-10
    s, got, want, abscissa = probe_vs_dense(force, free.z, k=4)
    print(f"\ncontractive block (n={free.z.numel()}): residual {free.residual:.1e}; probe leading "
          f"{np.round(got, 5)}, dense {np.round(want, 5)}, abscissa {s.abscissa:.4f}")
    np.testing.assert_allclose(got, want, atol=1e-8)
    assert s.abscissa == pytest.approx(abscissa, abs=1e-8)
    assert s.leading_re < 0 and s.is_stable
    assert s.leading_re <= -0.5  # damping 1 gives a wide margin


@pytest.mark.parametrize("T,C", [(4, 8), (8, 16)], ids=["dense-path n=32", "arpack n=128"])
def test_unstable_complex_pair_matches_dense_jacobian(T, C):
    model, x_in = tiny_block(T, C, damping=0.0)
    make_unstable(model)
    force = lambda z: model.force(z, x_in)  # noqa: E731
    s, got, want, abscissa = probe_vs_dense(force, x_in, k=4)
    print(f"\nunstable block (n={x_in.numel()}): probe leading {np.round(got, 5)}; dense {np.round(want, 5)}; "
          f"abscissa {s.abscissa:.4f} (dense {abscissa:.4f}); {s.jvp_evals} Jacobian products")
    np.testing.assert_allclose(got, want, atol=1e-7)
    assert s.abscissa == pytest.approx(abscissa, abs=1e-7)
    assert s.has_hopf_pair and not s.is_stable
    assert s.leading_re > 0.3
    assert s.leading.imag > 1.0
    assert complex(s.eig_re[1], s.eig_im[1]) == pytest.approx(s.leading.conjugate(), abs=1e-8)
    assert s.abscissa >= s.leading_re - 1e-9


def test_gain_moves_the_pair_across_the_imaginary_axis():
    # Same construction, low gain: the pair is back in the left half plane (and still complex).
    model, x_in = tiny_block(damping=0.0)
    make_unstable(model, gain=1.0)
    s, got, want, _ = probe_vs_dense(lambda z: model.force(z, x_in), x_in, k=2)
    print(f"\nlow-gain block: probe leading {np.round(got, 5)}; dense {np.round(want, 5)}")
    np.testing.assert_allclose(got, want, atol=1e-8)
    assert s.is_stable and s.has_hopf_pair
