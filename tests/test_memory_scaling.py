"""EP's memory does not depend on the relaxation lengths T1 and T2; BPTT's grows with T1.

Measured with the dispatcher-level meter `peak_bytes` (tensor storages allocated inside the call
and alive at the same time), on a tiny float64 thick block.
"""
import gc

import pytest
import torch

from analog_ep.diagnostics.memory import peak_bytes
from analog_ep.estimator.ep import EPConfig, ep_gradient
from analog_ep.estimator.exact import bptt_gradient
from analog_ep.model.transformer import EquilibriumTransformer, TransformerConfig
from analog_ep.relax.solvers import RelaxConfig




@pytest.fixture(scope="module")
def setup():
    model = EquilibriumTransformer(TransformerConfig(vocab_size=20, context=8, width=16, heads=2, seed=1,
                                                     embed_scale=1.0)).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 20, (2, 8), generator=gen)
    y = torch.randint(0, 20, (2, 8), generator=gen)
    return model, x, y


def measure(fn, *args):
    gc.collect()
    result, peak = peak_bytes(fn, *args)
    assert peak > 0
    return result, peak


def ep_peak(setup, t1, t2, **kw):
    model, x, y = setup
    res, peak = measure(ep_gradient, model, x, y, RelaxConfig(steps=t1), EPConfig(steps=t2, aep_clip=0, **kw))
    assert all(torch.isfinite(g).all() for g in res.grads.values())
    return res, peak


def test_ep_peak_memory_independent_of_t1(setup):
    short, p50 = ep_peak(setup, 50, 15)
    long, p400 = ep_peak(setup, 400, 15)
    ratio = p400 / p50
    print(f"\nEP peak bytes: T1=50 {p50}, T1=400 {p400}, ratio {ratio:.3f}")
    assert long.free.steps == 400 and short.free.steps == 50
    assert ratio <= 1.1


@pytest.mark.parametrize("aep", ["frozen", "tracking"])
def test_ep_peak_memory_independent_of_t2(setup, aep):
    short, p10 = ep_peak(setup, 50, 10, aep=aep)
    long, p80 = ep_peak(setup, 50, 80, aep=aep)
    ratio = p80 / p10
    print(f"\nEP ({aep} AEP) peak bytes: T2=10 {p10}, T2=80 {p80}, ratio {ratio:.3f}")
    assert long.adjoint.nudge_steps == 80 and short.adjoint.nudge_steps == 10
    assert ratio <= 1.1


def test_bptt_peak_memory_grows_with_t1(setup):
    model, x, y = setup
    _, p50 = measure(bptt_gradient, model, x, y, 50, 0.1)
    _, p400 = measure(bptt_gradient, model, x, y, 400, 0.1)
    _, ep400 = ep_peak(setup, 400, 15)
    ratio = p400 / p50
    print(f"\nBPTT peak bytes: T1=50 {p50}, T1=400 {p400}, ratio {ratio:.2f}; EP at T1=400 {ep400} "
          f"({p400 / ep400:.1f}x less than BPTT)")
    assert ratio >= 3.0
    assert ep400 < p400
