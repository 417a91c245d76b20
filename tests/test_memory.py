"""PeakTensorMemory measures retained tensor storage, on CPU."""
import gc

import pytest
import torch

from analog_ep.diagnostics.memory import PeakTensorMemory, peak_bytes

MB = 2**20
FLOATS_PER_MB = MB // 4


def keep_all(n: int) -> list[torch.Tensor]:
    return [torch.randn(FLOATS_PER_MB) for _ in range(n)]


def keep_last(n: int) -> torch.Tensor:
    x = None
    for _ in range(n):
        x = torch.randn(FLOATS_PER_MB)
    return x


def unrolled(n: int) -> torch.Tensor:
    """n steps of a relaxation; under autograd each tanh saves its 1 MB output."""
    x = torch.randn(FLOATS_PER_MB, requires_grad=True)
    z = x
    for _ in range(n):
        z = torch.tanh(0.9 * z + 0.1)
    return z.sum()


def unrolled_no_grad(n: int) -> torch.Tensor:
    with torch.no_grad():
        return unrolled(n)


def test_list_retains_everything_overwrite_retains_one():
    kept, peak_list = peak_bytes(keep_all, 100)
    assert 100 * MB <= peak_list <= 101 * MB
    _, peak_overwrite = peak_bytes(keep_last, 100)
    assert MB <= peak_overwrite <= 2 * MB  # the new tensor exists before the old one is dropped
    assert len(kept) == 100


def test_current_bytes_follows_frees():
    with PeakTensorMemory() as mem:
        kept = keep_all(10)
        assert mem.current_bytes == 10 * MB
        view = kept[3][:10]  # a view keeps its whole storage alive
        del kept
        gc.collect()
        assert mem.current_bytes == MB
    del view
    assert mem.current_bytes == 0  # finalizers keep working after exit
    assert mem.peak_bytes == 10 * MB and mem.allocations == 10


def test_autograd_graph_grows_with_steps_no_grad_stays_flat():
    steps = (10, 20, 40)
    with_grad = [peak_bytes(unrolled, n)[1] for n in steps]
    without = [peak_bytes(unrolled_no_grad, n)[1] for n in steps]
    # Roughly 1 MB saved per step: linear growth.
    for (n0, p0), (n1, p1) in zip(zip(steps, with_grad), zip(steps[1:], with_grad[1:])):
        assert (p1 - p0) / (n1 - n0) == pytest.approx(MB, rel=0.1)
    assert max(without) == min(without) <= 4 * MB
    assert with_grad[-1] > 8 * max(without)


def test_backward_frees_saved_tensors():
    with PeakTensorMemory() as mem:
        loss = unrolled(20)
        before = mem.current_bytes
        loss.backward()
        after = mem.current_bytes
    assert before >= 20 * MB
    assert after <= 3 * MB  # the leaf and its .grad remain


def test_tensors_from_outside_are_not_counted():
    outside = torch.randn(FLOATS_PER_MB)
    with PeakTensorMemory() as mem:
        outside.mul_(2)  # in place
        view = outside.view(2, -1).t()  # views
        outside[:10] = 0.0
        made = torch.tensor([1.0] * 1000)  # built from Python data: counted
        like = torch.empty_like(outside)  # factory function: counted
    assert mem.peak_bytes < 2 * MB
    assert mem.peak_bytes >= MB + 4000
    assert view.shape == (FLOATS_PER_MB // 2, 2) and made.numel() == 1000 and like.numel()


def test_nested_meters_both_count():
    with PeakTensorMemory() as outer:
        a = torch.zeros(FLOATS_PER_MB)
        with PeakTensorMemory() as inner:
            b = torch.ones(FLOATS_PER_MB)
    assert inner.peak_bytes == MB and outer.peak_bytes == 2 * MB
    assert a.numel() == b.numel()
