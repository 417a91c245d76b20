"""`write: outer_product`: our seeded pulse trains against aihwkit's own `tile.update(x, d)`.

aihwkit's StochasticCompressed update is the statistical oracle: on ConstantStep devices without
cycle-to-cycle or device-to-device spread (so a device's change is its net coincidence count times
dw_min), the mean and the spread of every device's change over many draws must agree with ours,
and the mean with lr x^T d. Then the chip path: the coincidences go through the devices as pulse
rounds (`AnalogChip.write_outer`), every pulse in the ledger, and a re-run with the same seed is
bit-identical.
"""
from __future__ import annotations

import pytest
import torch
from aihwkit.simulator.configs import ConstantStepDevice, SingleRPUConfig
from aihwkit.simulator.parameters.enums import PulseType
from aihwkit.simulator.tiles import AnalogTile

from analog_ep.hardware.outer import coincidences, expected_change, rounds

DW, LR, DRAWS = 0.01, 0.05, 1500


def _terms():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 6, generator=gen) * 0.8  # 3 rank-1 terms on a 6 x 5 crossbar
    d = torch.randn(3, 5, generator=gen) * 0.8
    return x, d


def _aihwkit_changes(x, d, um: bool, blm: bool) -> torch.Tensor:
    dev = ConstantStepDevice(dw_min=DW, dw_min_dtod=0.0, dw_min_std=0.0, up_down=0.0, up_down_dtod=0.0,
                             w_max=10.0, w_min=-10.0, w_max_dtod=0.0, w_min_dtod=0.0)
    cfg = SingleRPUConfig(device=dev)
    cfg.update.pulse_type = PulseType.STOCHASTIC_COMPRESSED
    cfg.update.desired_bl = 31
    cfg.update.update_management, cfg.update.update_bl_management = um, blm
    tile = AnalogTile(d.shape[1], x.shape[1], cfg)
    tile.set_learning_rate(LR)
    out = []
    for _ in range(DRAWS):
        tile.set_weights(torch.zeros(d.shape[1], x.shape[1]))
        tile.update(x, -d)  # aihwkit: W_tile -= lr d^T x, so -d gives +lr x^T d in (in, out)
        out.append(tile.get_weights()[0].t().clone())
    return torch.stack(out).double()


def _our_changes(x, d, um: bool, blm: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(11)
    out = []
    for _ in range(DRAWS):
        up, down = coincidences(x, d, LR, DW, 31, blm, um, gen)
        out.append((up - down).double() * DW)
    return torch.stack(out)


@pytest.mark.parametrize("um,blm", [(True, True), (True, False)], ids=["managed", "fixed-bl"])
def test_pulse_trains_match_aihwkit_update_statistics(um, blm):
    x, d = _terms()
    ours, theirs = _our_changes(x, d, um, blm), _aihwkit_changes(x, d, um, blm)
    expected = expected_change(x, d, LR)
    sem = theirs.std(0) / DRAWS ** 0.5  # standard error of a device's mean change
    # every device's mean: within 5 standard errors of aihwkit's and of lr x^T d
    assert ((ours.mean(0) - theirs.mean(0)).abs() < 5 * 1.42 * sem + 1e-12).all()
    assert ((ours.mean(0) - expected).abs() < 5 * sem + 1e-12).all()
    # every device's spread: within 12% of aihwkit's (the standard error of a std is ~1.8% here)
    ratio = ours.std(0) / theirs.std(0)
    assert (ratio - 1).abs().max() < 0.12, ratio
    assert float(theirs.std(0).mean()) > 0.5 * DW  # the oracle is noisy: the spread test has teeth


def test_rounds_deliver_every_coincidence_once():
    up = torch.tensor([[3, 0], [1, 2]])
    down = torch.tensor([[1, 0], [0, 4]])
    signs = torch.stack(list(rounds(up, down))).long()  # (rounds, in, out)
    assert signs.shape[0] == int((up + down).max())
    assert torch.equal((signs > 0).sum(0), up) and torch.equal((signs < 0).sum(0), down)


def test_chip_writes_outer_products_through_the_devices_reproducibly():
    from analog_ep.hardware.chip import AnalogChip, ChipConfig
    from analog_ep.model.mlp import EquilibriumMLP, MLPConfig

    def written(seed_chip: int):
        model = EquilibriumMLP(MLPConfig(inputs=6, hidden=(5,), classes=3))
        chip = AnalogChip(model, ChipConfig(device={"model": "ConstantStep",
                                                    "overrides": {"dw_min_std": 0.0, "dw_min_dtod": 0.0,
                                                                  "up_down_dtod": 0.0, "w_max_dtod": 0.0,
                                                                  "w_min_dtod": 0.0}},
                                            learning="local", write="outer_product", seed=seed_chip))
        before = chip.arrays["weights.0"].read().clone()
        x, d = _terms()
        sent = chip.write_outer({"weights.0": (x, d[:, :5], 1.0)}, {"weights.0": LR}, step=1)
        return chip, before, sent

    chip, before, sent = written(0)
    change = chip.arrays["weights.0"].read() - before
    index = chip.ledger.index
    assert sent > 0 and sent == int(index["n_up"].sum() + index["n_down"].sum())  # every pulse recorded
    pulses = change / chip.step_size["weights.0"]
    assert torch.allclose(pulses, pulses.round(), atol=1e-3)  # whole pulses of the device's step
    again, before2, sent2 = written(0)
    assert sent2 == sent and torch.equal(again.arrays["weights.0"].read() - before2, change)  # seeded
