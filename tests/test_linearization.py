"""The thick block's closed-form J_nc products agree with autograd's, and pass the dot-product test."""
import pytest
import torch

from analog_ep.linear import antisymmetric, check_adjoint, linearize
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
    closed = linearize(model, x_in, z, part="nc")
    auto = linearize(model, x_in, z, part="nc", closed_form=False)
    assert type(closed).__name__ == "ThickLinearization" and type(auto).__name__ == "JacobianProducts"
    v = torch.randn(z.shape, generator=gen, dtype=dtype)
    for name, fn in (("jvp", lambda op: op.jvp(v)), ("vjp", lambda op: op.vjp(v)),
                     ("antisymmetric", lambda op: antisymmetric(op, v))):
        a, b = fn(closed), fn(auto)
        err = float((a - b).norm() / b.norm())
        print(f"{dtype} {name}: relative difference {err:.2e}")
        assert err < tol, (name, err)
    assert closed.products == 4  # jvp, vjp, and one of each inside antisymmetric
    lhs, rhs = check_adjoint(closed, z)  # the closed-form J^T is the adjoint of its J
    assert abs(lhs - rhs) <= 10 * tol * max(abs(lhs), 1.0)


def test_closed_form_is_declined_where_it_does_not_apply():
    base = dict(vocab_size=20, context=8, width=16, heads=2, embed_scale=0.02)
    z = torch.randn(2, 8, 16)
    assert EquilibriumTransformer(TransformerConfig(**base, qk_norm=True)).linearize_nc(z) is None
    assert EquilibriumTransformer(TransformerConfig(**base, mode="real")).linearize_nc(z) is None
    assert EquilibriumTransformer(TransformerConfig(**base)).linearize_nc(z.to(torch.complex64)) is None
