"""The thick block's closed-form J_nc products agree with autograd's."""
import pytest
import torch

from analog_ep.estimator.linear import JacobianProducts
from analog_ep.model.transformer import EquilibriumTransformer, TransformerConfig


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_closed_form_products_match_autograd(dtype, tol):
    model = EquilibriumTransformer(TransformerConfig(vocab_size=20, context=16, width=32, heads=2,
                                                     embed_scale=1.0, seed=3)).to(dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 20, (3, 16), generator=gen)
    with torch.no_grad():
        x_in = model.drive(x)
    z = x_in + 0.3 * torch.randn(x_in.shape, generator=gen, dtype=dtype)  # off the fixed point too
    closed, auto = model.linearize_nc(z), JacobianProducts(lambda u: model.nc_force(u, x_in), z)
    v = torch.randn(z.shape, generator=gen, dtype=dtype)
    for name in ("jvp", "vjp", "antisymmetric"):
        a, b = getattr(closed, name)(v), getattr(auto, name)(v)
        err = float((a - b).norm() / b.norm())
        print(f"{dtype} {name}: relative difference {err:.2e}")
        assert err < tol, (name, err)
    assert closed.products == 4  # jvp, vjp, and one of each inside antisymmetric


def test_closed_form_is_declined_where_it_does_not_apply():
    base = dict(vocab_size=20, context=8, width=16, heads=2, embed_scale=0.02)
    z = torch.randn(2, 8, 16)
    assert EquilibriumTransformer(TransformerConfig(**base, qk_norm=True)).linearize_nc(z) is None
    assert EquilibriumTransformer(TransformerConfig(**base, mode="real")).linearize_nc(z) is None
    assert EquilibriumTransformer(TransformerConfig(**base)).linearize_nc(z.to(torch.complex64)) is None
