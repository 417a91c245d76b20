"""Leading eigenvalues and numerical abscissa of a force's Jacobian, against dense numpy."""
import warnings

import numpy as np
import pytest
import torch

from analog_ep.linear import Spectrum, SpectrumConfig, leading_eigenvalues
from analog_ep.errors import ConfigError, ConvergenceError

N = 200


def block_matrix(pair_re: float, nonnormal: float = 0.0, n: int = N, seed: int = 0) -> np.ndarray:
    """Q T Q^T: T has a 2x2 block with eigenvalues pair_re +- 2i, then a real diagonal in
    [-3, -0.5], plus (optionally) a strictly upper part that keeps the eigenvalues but makes the
    matrix non-normal. Q is a random rotation, so nothing is diagonal in the probe's basis."""
    rng = np.random.default_rng(seed)
    t = np.diag(np.r_[pair_re, pair_re, np.linspace(-3.0, -0.5, n - 2)])
    t[0, 1], t[1, 0] = 2.0, -2.0
    upper = np.triu(rng.standard_normal((n, n)), 1) * nonnormal / np.sqrt(n)
    upper[0, 1] = 0.0
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return q @ (t + upper) @ q.T


def linear_force(a: np.ndarray, dtype=torch.float64):
    at = torch.tensor(a, dtype=dtype)
    return lambda z: z @ at.T


def dense_leading(jac: np.ndarray, k: int) -> np.ndarray:
    ev = np.linalg.eigvals(jac)
    return ev[np.lexsort((-ev.imag, -ev.real))][:k]


def as_complex(s: Spectrum) -> np.ndarray:
    return np.array(s.eig_re) + 1j * np.array(s.eig_im)


def test_finds_unstable_hopf_pair():
    a = block_matrix(0.3)
    s = leading_eigenvalues(linear_force(a), torch.zeros(N, dtype=torch.float64))
    assert s.leading == pytest.approx(0.3 + 2j, abs=1e-4)
    assert complex(s.eig_re[1], s.eig_im[1]) == pytest.approx(0.3 - 2j, abs=1e-4)
    assert s.eig_re[2] == pytest.approx(-0.5, abs=1e-4)
    assert s.has_hopf_pair and not s.is_stable
    assert s.eig_re == sorted(s.eig_re, reverse=True)
    assert len(s.eig_re) == len(s.eig_im) == 6
    assert s.abscissa == pytest.approx(np.linalg.eigvalsh((a + a.T) / 2)[-1], abs=1e-6)
    assert 0 < s.jvp_evals < 2000  # matrix-free: far fewer than a dense build would need per solve


def test_contractive_operator_is_stable():
    a = block_matrix(-0.2)
    s = leading_eigenvalues(linear_force(a), torch.zeros(N, dtype=torch.float64))
    assert s.leading_re == pytest.approx(-0.2, abs=1e-4) and s.leading_re < 0
    assert s.is_stable
    assert s.abscissa == pytest.approx(-0.2, abs=1e-6)  # normal matrix: abscissa = leading_re


def test_nonnormal_stable_operator_has_positive_abscissa():
    # Same eigenvalues, but a strong non-normal part: stable yet with transient growth.
    a = block_matrix(-0.2, nonnormal=2.0)
    s = leading_eigenvalues(linear_force(a), torch.zeros(N, dtype=torch.float64))
    assert s.is_stable and s.leading_re == pytest.approx(-0.2, abs=1e-4)
    assert s.abscissa == pytest.approx(np.linalg.eigvalsh((a + a.T) / 2)[-1], abs=1e-6)
    assert s.abscissa > 0


def test_float32_state():
    a = block_matrix(0.3)
    s = leading_eigenvalues(linear_force(a, torch.float32), torch.zeros(N, dtype=torch.float32),
                            SpectrumConfig(k=3, tol=1e-5))
    assert s.leading == pytest.approx(0.3 + 2j, abs=1e-4)
    assert s.has_hopf_pair


def test_nonlinear_force_matches_dense_jacobian():
    torch.manual_seed(0)
    w = 1.3 * torch.randn(N, N, dtype=torch.float64) / N**0.5

    def force(z):
        return -z + torch.tanh(z @ w)

    z_star = torch.zeros(1, N, dtype=torch.float64)
    assert torch.equal(force(z_star), torch.zeros_like(z_star))  # z* = 0 is a fixed point
    jac = torch.autograd.functional.jacobian(force, z_star).reshape(N, N).numpy()
    np.testing.assert_allclose(jac, -np.eye(N) + w.T.numpy(), atol=1e-12)

    k = 4
    s = leading_eigenvalues(force, z_star, SpectrumConfig(k=k, tol=1e-10))
    got = as_complex(s)
    np.testing.assert_allclose(got, dense_leading(jac, len(got)), atol=1e-6)
    assert not s.is_stable  # spectral radius of W ~ 1.3 > 1
    assert s.abscissa == pytest.approx(np.linalg.eigvalsh((jac + jac.T) / 2)[-1], abs=1e-6)


def test_small_batched_state_uses_dense_path_with_multiplicity():
    # A batch on dim 0 gives a block-diagonal J; the dense path keeps repeated eigenvalues.
    torch.manual_seed(1)
    w = torch.randn(5, 5, dtype=torch.float64)
    z_star = 0.3 * torch.randn(3, 5, dtype=torch.float64)

    def force(z):
        return -z + torch.tanh(z @ w)

    jac = torch.autograd.functional.jacobian(force, z_star).reshape(15, 15).numpy()
    s = leading_eigenvalues(force, z_star, SpectrumConfig(k=15))
    np.testing.assert_allclose(as_complex(s), dense_leading(jac, 15), atol=1e-10)
    assert s.abscissa == pytest.approx(np.linalg.eigvalsh((jac + jac.T) / 2)[-1], abs=1e-10)
    assert s.jvp_evals == 15 + 2  # one JVP per column, plus the adjoint check's two products


def test_k_larger_than_small_problem_and_pair_not_split():
    a = np.array([[0.1, 1.0, 0.0], [-1.0, 0.1, 0.0], [0.0, 0.0, -1.0]])
    z = torch.zeros(3, dtype=torch.float64)
    s = leading_eigenvalues(linear_force(a), z, SpectrumConfig(k=1))
    assert len(s.eig_re) == 2  # k=1 hits a pair: its conjugate is kept
    assert s.has_hopf_pair and s.leading == pytest.approx(0.1 + 1j)
    s = leading_eigenvalues(linear_force(a), z, SpectrumConfig(k=10))
    assert len(s.eig_re) == 3 and s.eig_re[-1] == pytest.approx(-1.0)


def test_real_leading_eigenvalue_is_not_hopf():
    a = np.diag(np.r_[0.5, np.linspace(-2, -1, N - 1)])
    s = leading_eigenvalues(linear_force(a), torch.zeros(N, dtype=torch.float64))
    assert s.leading_re == pytest.approx(0.5, abs=1e-6) and not s.has_hopf_pair


def test_reproducible_and_works_under_no_grad():
    a = block_matrix(0.3, nonnormal=1.0)
    z = torch.zeros(N, dtype=torch.float64)
    s1 = leading_eigenvalues(linear_force(a), z, SpectrumConfig(k=4, seed=3))
    with torch.no_grad():
        s2 = leading_eigenvalues(linear_force(a), z, SpectrumConfig(k=4, seed=3))
    assert s1 == s2


class _TanhNoForwardAD(torch.autograd.Function):
    """Old-style Function (no setup_context): torch.func cannot trace it, plain autograd can."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)  # torch ops: differentiable in g, so double-vjp works


class _TanhDetachedBackward(_TanhNoForwardAD):
    """Backward that drops the graph, as aihwkit's analog tiles do: double-vjp would be wrong."""

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return (g * (1 - y * y)).detach()


def test_double_vjp_fallback_matches_dense():
    torch.manual_seed(2)
    w = 1.2 * torch.randn(N, N, dtype=torch.float64) / N**0.5
    z_star = 0.5 * torch.randn(N, dtype=torch.float64)  # any point: J = -I + diag(tanh') W^T

    def force(z):
        return -z + _TanhNoForwardAD.apply(w @ z)

    with pytest.raises(RuntimeError), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch's own, as in spectrum.jvp_t
        torch.func.jvp(force, (z_star,), (z_star,))
    jac = torch.autograd.functional.jacobian(force, z_star).numpy()
    s = leading_eigenvalues(force, z_star, SpectrumConfig(k=3, tol=1e-10))
    np.testing.assert_allclose(as_complex(s), dense_leading(jac, len(s.eig_re)), atol=1e-6)


def test_silently_wrong_double_vjp_is_rejected():
    w = torch.eye(N, dtype=torch.float64) * 0.5

    def force(z):
        return -z + _TanhDetachedBackward.apply(w @ z)

    with pytest.raises(ConfigError, match="disagree"):
        leading_eigenvalues(force, torch.zeros(N, dtype=torch.float64))


@pytest.mark.parametrize("kwargs", [dict(k=0), dict(tol=0.0), dict(tol=float("nan")),
                                    dict(maxiter=0), dict(seed=-1)])
def test_config_validation(kwargs):
    with pytest.raises(ConfigError) as err:
        SpectrumConfig(**kwargs)
    assert err.value.key == next(iter(kwargs))


def test_bad_inputs():
    with pytest.raises(ConfigError, match="z_star"):
        leading_eigenvalues(lambda z: -z, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ConfigError, match="force"):
        leading_eigenvalues(lambda z: z.sum(), torch.zeros(4, dtype=torch.float64))


def test_arpack_non_convergence_raises():
    a = block_matrix(0.3, nonnormal=1.0)
    with pytest.raises(ConvergenceError, match="maxiter"):
        leading_eigenvalues(linear_force(a), torch.zeros(N, dtype=torch.float64),
                            SpectrumConfig(k=6, tol=1e-14, maxiter=1))


def test_forward_mode_products_warn_nothing_in_a_fresh_process():
    """The first forward-mode product loads torch's jvp decompositions, which warn that
    torch.jit.script is deprecated; analog-ep filters exactly that (a user sees no warning)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('error')\n"
        "from analog_ep.linear import SpectrumConfig, leading_eigenvalues\n"
        "class Tanh(torch.autograd.Function):  # backward drops its graph, as aihwkit's tiles do\n"
        "    @staticmethod\n"
        "    def forward(x):\n"
        "        return torch.tanh(x)\n"
        "    @staticmethod\n"
        "    def backward(ctx, g):\n"
        "        (y,) = ctx.saved_tensors; return (g * (1 - y * y)).detach()\n"
        "    @staticmethod\n"
        "    def jvp(ctx, t):\n"
        "        return t * (1 - ctx.y * ctx.y)\n"
        "    @staticmethod\n"
        "    def setup_context(ctx, inputs, output):\n"
        "        ctx.y = output; ctx.save_for_backward(output)\n"
        "torch.manual_seed(0)\n"
        "w = torch.randn(12, 12, dtype=torch.float64) / 12 ** 0.5\n"
        "s = leading_eigenvalues(lambda z: -z + Tanh.apply(w @ z), torch.zeros(12, dtype=torch.float64),\n"
        "                        SpectrumConfig(k=2))\n"
        "print(s.jvp_evals > 0)\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.strip() == "True"  # forward mode was used
