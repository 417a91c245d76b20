"""The in-memory rank-1 update of analog SGD: stochastic pulse trains on rows and columns.

A crossbar updates W += lr * sum_n x_n d_n^T without any per-weight digital work: for each rank-1
term (x, d) the row drivers send stochastic pulse trains of BL slots, row i pulsing in a slot with
probability p_i proportional to |x_i|, column j with probability q_j proportional to |d_j|, and a
device moves by one pulse (sign(x_i) sign(d_j)) in every slot where its row and its column both
pulse. The expected number of coincidences is BL p_i q_j = lr |x_i d_j| / dw, so the expected
change is exactly lr x_i d_j (dw: the weight moved by one pulse).

This is aihwkit's `StochasticCompressed` pulse type (Gokmen & Vlasov, Front. Neurosci. 2016), with
its bit-length and update management (`ChipConfig.pulse_bits`, `bl_management`,
`update_management`), per rank-1 term:

    BL = min(pulse_bits, ceil(lr max|x| max|d| / dw))   (bl_management; else BL = pulse_bits)
    k  = lr / (dw BL)
    p_i = |x_i| sqrt(k max|d| / max|x|),  q_j = |d_j| sqrt(k max|x| / max|d|)   (update_management)
    p_i = |x_i| sqrt(k),                  q_j = |d_j| sqrt(k)                   (without)

probabilities clipped at 1 (a term larger than BL pulses saturates, as on the chip).

aihwkit draws its trains from an unseeded C++ generator and counts pulses only on GPU, so here the
trains come from the chip's own seeded generator, and each device's coincidences are sent as
pulse rounds through the device model (`CrossbarArray.pulse`): the ledger records every pulse and
a run re-runs bit for bit. aihwkit's own `tile.update(x, d)` is the statistical oracle
(tests/test_outer_product.py: the same mean and spread of every device's change).

Within one step a device receives U potentiating and D depressing coincidences summed over the
batch; they are sent as max(U + D) rounds, alternating up and down while both remain (the order
of a batch's samples interleaves them on a chip), then the rest.
"""
from __future__ import annotations

import torch


def coincidences(x: torch.Tensor, d: torch.Tensor, lr: float, dw: float, pulse_bits: int, bl_management: bool,
                 update_management: bool, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Up and down coincidence counts, each (in, out) int64, of the rank-1 terms x_n d_n^T.

    x: (N, in), d: (N, out), one rank-1 term per row; the intended change is lr * x^T d in the
    units of `dw` (the weight one pulse moves). Zero terms (all-zero x or d) send nothing.
    """
    x, d = x.double(), d.double()
    n_in, n_out = x.shape[1], d.shape[1]
    up = torch.zeros(n_in, n_out, dtype=torch.int64)
    down = torch.zeros(n_in, n_out, dtype=torch.int64)
    x_max, d_max = x.abs().amax(dim=1), d.abs().amax(dim=1)  # (N,)
    live = (x_max > 0) & (d_max > 0) & (lr > 0)
    if not bool(live.any()):
        return up, down
    x, d, x_max, d_max = x[live], d[live], x_max[live], d_max[live]
    if bl_management:
        bl = torch.ceil(lr * x_max * d_max / dw).clamp(1, pulse_bits)
    else:
        bl = torch.full_like(x_max, float(pulse_bits))
    k = lr / (dw * bl)  # (N,) expected coincidences per slot = k |x_i d_j|
    if update_management:
        ax, ad = torch.sqrt(k * d_max / x_max), torch.sqrt(k * x_max / d_max)
    else:
        ax = ad = torch.sqrt(k)
    p = (x.abs() * ax[:, None]).clamp(max=1.0)  # (N, in) row probabilities
    q = (d.abs() * ad[:, None]).clamp(max=1.0)  # (N, out) column probabilities
    slots = int(bl.max())
    used = (torch.arange(slots, dtype=torch.float64)[None, :] < bl[:, None]).double()  # (N, BL) live slots
    rows = (torch.rand(len(x), slots, n_in, generator=generator, dtype=torch.float64)
            < p[:, None, :]).double() * used[:, :, None]  # (N, BL, in) row trains
    cols = (torch.rand(len(x), slots, n_out, generator=generator, dtype=torch.float64)
            < q[:, None, :]).double()  # (N, BL, out) column trains
    hits = torch.einsum("nti,ntj->nij", rows, cols)  # (N, in, out) coincidences per term
    sign = torch.sign(x)[:, :, None] * torch.sign(d)[:, None, :]  # (N, in, out) pulse direction
    up = (hits * (sign > 0)).sum(0).round().long()
    down = (hits * (sign < 0)).sum(0).round().long()
    return up, down


def rounds(up: torch.Tensor, down: torch.Tensor):
    """Sign matrices (int8, (in, out)) of the pulse rounds that deliver `up` and `down` pulses:
    alternating up and down while a device owes both, then the rest (module docstring)."""
    both = torch.minimum(up, down)
    total = up + down
    for k in range(1, int(total.max()) + 1 if total.numel() else 1):
        paired = k <= 2 * both
        alternate = torch.where(torch.tensor(k % 2 == 1), 1, -1)
        rest = torch.where(up > down, 1, -1)
        signs = torch.where(paired, alternate, rest) * (k <= total)
        yield signs.to(torch.int8)


def expected_change(x: torch.Tensor, d: torch.Tensor, lr: float) -> torch.Tensor:
    """lr * x^T d: what the trains realise on average (before the device's own step noise)."""
    return lr * x.double().t() @ d.double()


__all__ = ["coincidences", "expected_change", "rounds"]
