"""Lion against hand-computed updates, optimizer configs, schedules and the parameter EMA."""
import pytest
import torch
from torch import nn

from analog_ep.errors import ConfigError
from analog_ep.train.optim import (Lion, OptimizerConfig, ParameterEMA, ScheduleConfig,
                                   build_optimizer, build_scheduler, clip_gradients)


def _lion_reference(p, grads, lr, b1, b2, wd, trust):
    """Lion written out in plain tensor arithmetic, one step per gradient."""
    p, m = p.clone(), torch.zeros_like(p)
    for g in grads:
        u = torch.sign(b1 * m + (1 - b1) * g)
        lr_eff = lr * (p.norm() / u.norm()).item() if trust else lr
        p = p * (1 - lr * wd) - lr_eff * u
        m = b2 * m + (1 - b2) * g
    return p


@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("trust", [False, True])
def test_lion_matches_hand_computed(wd, trust):
    p0 = torch.tensor([0.5, -1.0, 2.0, 0.0])
    # The second gradient flips sign on some entries, so the momentum decides the sign there.
    grads = [torch.tensor([1.0, -2.0, 0.5, 3.0]), torch.tensor([-0.05, 1.0, 0.3, -4.0])]
    lr, b1, b2 = 0.1, 0.9, 0.99
    p = nn.Parameter(p0.clone())
    opt = Lion([p], lr=lr, betas=(b1, b2), weight_decay=wd, trust_ratio=trust)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = _lion_reference(p0, grads, lr, b1, b2, wd, trust)
    assert torch.allclose(p.detach(), expected, atol=1e-6)
    # First step by hand for the plainest case: p - lr*sign(g).
    if wd == 0 and not trust:
        q = nn.Parameter(p0.clone())
        q.grad = grads[0].clone()
        Lion([q], lr=lr).step()
        assert torch.allclose(q.detach(), p0 - lr * torch.sign(grads[0]))


def test_lion_trust_ratio_scales_by_norms():
    p0 = torch.tensor([3.0, 4.0, 0.0, 0.0])  # ||p|| = 5, ||sign(g)|| = 2
    p = nn.Parameter(p0.clone())
    p.grad = torch.tensor([1.0, -1.0, 1.0, -1.0])
    opt = Lion([p], lr=0.01, trust_ratio=True)
    (u, lr_eff), = opt.sign_updates().values()
    assert lr_eff == pytest.approx(0.01 * 5 / 2)
    assert torch.equal(u, torch.tensor([1.0, -1.0, 1.0, -1.0]))


def test_sign_updates_match_step_and_change_nothing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))
    twin = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))
    twin.load_state_dict(model.state_dict())
    opt_a = Lion(model.parameters(), lr=0.01, weight_decay=0.5, trust_ratio=True)
    opt_b = Lion(twin.parameters(), lr=0.01, weight_decay=0.5, trust_ratio=True)
    x = torch.randn(8, 5)
    for _ in range(3):
        for net in (model, twin):
            net.zero_grad()
            net(x).square().sum().backward()
        opt_a.step()
        # The analog path: read the signs, write them "by hand", then advance the momentum.
        before = [p.detach().clone() for p in twin.parameters()]
        updates = opt_b.sign_updates()
        assert all(torch.equal(p, b) for p, b in zip(twin.parameters(), before))
        assert len(updates) == 4
        with torch.no_grad():
            for p, (u, lr_eff) in updates.items():
                assert set(u.unique().tolist()) <= {-1.0, 0.0, 1.0}
                p.mul_(1 - 0.01 * 0.5).sub_(lr_eff * u)
        opt_b.update_momentum()
    for pa, pb in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_lion_decreases_quadratic():
    torch.manual_seed(0)
    a = torch.diag(torch.linspace(0.5, 5.0, 10))
    target = torch.randn(10)
    p = nn.Parameter(torch.zeros(10))
    opt = Lion([p], lr=0.02)

    def loss():
        d = p - target
        return 0.5 * d @ a @ d

    start = loss().item()
    for _ in range(300):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.01 * start


def test_lion_skips_params_without_grad():
    p, q = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    opt = Lion([p, q], lr=0.1, weight_decay=1.0)
    opt.step()
    assert torch.equal(q.detach(), torch.ones(3))
    assert q not in opt.state or "exp_avg" not in opt.state[q]


# ---- optimizer config ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,cls", [("lion", Lion), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_build_optimizer(name, cls):
    p = nn.Parameter(torch.ones(2))
    cfg = OptimizerConfig(name=name, lr=0.05, trust_ratio=name == "lion")
    opt = build_optimizer([p], cfg)
    assert isinstance(opt, cls) and opt.param_groups[0]["lr"] == 0.05
    if name == "lion":
        assert opt.param_groups[0]["betas"] == (0.9, 0.99) and opt.param_groups[0]["trust_ratio"]
    if name == "sgd":
        assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.95


@pytest.mark.parametrize("kwargs,key", [
    (dict(name="adam"), "optim.name"), (dict(lr=0.0), "optim.lr"),
    (dict(betas=(0.9, 1.0)), "optim.betas"), (dict(momentum=1.0), "optim.momentum"),
    (dict(trust_ratio=True), "optim.trust_ratio"), (dict(grad_clip=-1.0), "optim.grad_clip"),
    (dict(weight_decay=-0.1), "optim.weight_decay"),
])
def test_optimizer_config_validation(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        OptimizerConfig(**kwargs)


def test_optimizer_config_betas_from_list():
    assert OptimizerConfig(betas=[0.8, 0.95]).betas == (0.8, 0.95)


def test_clip_gradients():
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    assert clip_gradients([p], 0) == pytest.approx(5.0)
    assert torch.equal(p.grad, torch.tensor([3.0, 4.0]))
    assert clip_gradients([p], 1.0) == pytest.approx(5.0)
    assert p.grad.norm().item() == pytest.approx(1.0, rel=1e-5)


# ---- schedules ---------------------------------------------------------------------------------------
def _factors(cfg, n=None):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = build_scheduler(opt, cfg)
    out = []
    for _ in range(n or cfg.total_steps):
        out.append(opt.param_groups[0]["lr"] / 2.0)
        opt.step()
        sched.step()
    return out


def test_warmup_ramps_linearly_then_cosine_to_min():
    cfg = ScheduleConfig(name="cosine", warmup=4, total_steps=20, min_ratio=0.1)
    f = _factors(cfg, 25)
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f[4] < 1.0 and all(a >= b for a, b in zip(f[3:20], f[4:20]))
    assert f[19] == pytest.approx(0.1) and f[24] == pytest.approx(0.1)
    # Half-way through the decay the cosine is at the mean of peak and floor.
    mid = ScheduleConfig(name="cosine", warmup=0, total_steps=11, min_ratio=0.0)
    assert mid.factor(0) == 1.0 and mid.factor(5) == pytest.approx(0.5) and mid.factor(10) == pytest.approx(0.0)


def test_constant_schedule():
    assert _factors(ScheduleConfig(name="constant", warmup=2, total_steps=6)) == pytest.approx(
        [0.5, 1, 1, 1, 1, 1])


def test_wsd_holds_peak_then_decays():
    cfg = ScheduleConfig(name="wsd", warmup=2, total_steps=20, decay_fraction=0.25, min_ratio=0.05)
    f = _factors(cfg)
    assert f[:2] == pytest.approx([0.5, 1.0])
    assert f[2:15] == pytest.approx([1.0] * 13)  # hold until the last 5 steps
    tail = f[15:]
    assert len(tail) == 5 and all(a > b for a, b in zip([1.0] + tail, tail))
    assert tail[-1] == pytest.approx(0.05)


@pytest.mark.parametrize("kwargs,key", [
    (dict(name="linear"), "schedule.name"), (dict(warmup=10, total_steps=10), "schedule.warmup"),
    (dict(min_ratio=1.5), "schedule.min_ratio"), (dict(total_steps=0), "schedule.total_steps"),
    (dict(name="wsd", warmup=8, total_steps=10, decay_fraction=0.5), "schedule.decay_fraction"),
])
def test_schedule_config_validation(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        ScheduleConfig(**kwargs)


# ---- EMA --------------------------------------------------------------------------------------------
def test_ema_average_and_applied_round_trip():
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(0.0)
        model.bias.fill_(0.0)
    ema = ParameterEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update()
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update(model)
    # 0 -> 0.5*0 + 0.5*1 = 0.5 -> 0.5*0.5 + 0.5*2 = 1.25
    assert torch.allclose(ema.shadow[0], torch.full((2, 3), 1.25))
    live = [p.detach().clone() for p in model.parameters()]
    with ema.applied(model):
        assert torch.allclose(model.weight, torch.full((2, 3), 1.25))
        assert torch.is_grad_enabled()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), live))
    # Restored even when the body raises.
    with pytest.raises(RuntimeError):
        with ema.applied():
            raise RuntimeError("boom")
    assert torch.equal(model.weight, live[0])


def test_ema_state_dict_round_trip():
    model = nn.Linear(2, 2)
    ema = ParameterEMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    state = {k: ([t.clone() for t in v] if k == "shadow" else v) for k, v in ema.state_dict().items()}
    other = ParameterEMA(nn.Linear(2, 2), decay=0.5)
    other.load_state_dict(state)
    assert other.decay == 0.9 and other.num_updates == 1
    assert all(torch.equal(a, b) for a, b in zip(other.shadow, ema.shadow))
    with pytest.raises(ValueError):
        ParameterEMA(nn.Linear(3, 2)).load_state_dict(state)
    with pytest.raises(ConfigError, match="ema.decay"):
        ParameterEMA(model, decay=1.0)
