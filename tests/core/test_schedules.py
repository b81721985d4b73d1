"""DelayedMomentum on Muon's momentum and Adam's beta1, and the get/set helpers."""

from __future__ import annotations

import copy

import pytest
import torch
from flatrl.optim import SAM, DelayedMomentum, build_optimizer, get_momentum, set_momentum
from torch import nn

torch.set_num_threads(1)


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))


def momenta(opt: torch.optim.Optimizer) -> dict[str, float]:
    return {g["optimizer_kind"]: get_momentum(g) for g in opt.param_groups}


def test_get_and_set_momentum_for_muon_and_adam_groups() -> None:
    opt = build_optimizer(make_net(), case="muon", momentum=0.9, betas=(0.8, 0.99))
    assert momenta(opt) == {"muon": 0.9, "adam": 0.8}
    for g in opt.param_groups:
        set_momentum(g, 0.5)
    assert momenta(opt) == {"muon": 0.5, "adam": 0.5}
    assert opt.param_groups[1]["betas"] == (0.5, 0.99)
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        set_momentum(opt.param_groups[0], 1.0)
    adagrad = torch.optim.Adagrad(make_net().parameters())
    with pytest.raises(ValueError, match="neither 'momentum'"):
        get_momentum(adagrad.param_groups[0])


def test_delayed_momentum_is_zero_before_and_default_after_start_step() -> None:
    opt = build_optimizer(make_net(), case="muon", momentum=0.95, betas=(0.9, 0.999))
    sched = DelayedMomentum(opt, start_step=3)
    seen = []
    for _ in range(6):
        seen.append((sched.current_step, momenta(opt)))
        sched.step()
    assert seen == [
        (0, {"muon": 0.0, "adam": 0.0}),
        (1, {"muon": 0.0, "adam": 0.0}),
        (2, {"muon": 0.0, "adam": 0.0}),
        (3, {"muon": 0.95, "adam": 0.9}),
        (4, {"muon": 0.95, "adam": 0.9}),
        (5, {"muon": 0.95, "adam": 0.9}),
    ]
    assert opt.param_groups[1]["betas"][1] == 0.999  # beta2 untouched
    assert sched.get_last_momentum() == [0.95, 0.9]


def test_start_step_zero_keeps_defaults_and_kinds_filter() -> None:
    opt = build_optimizer(make_net(), case="muon", momentum=0.95)
    DelayedMomentum(opt, start_step=0)
    assert momenta(opt) == {"muon": 0.95, "adam": 0.9}
    sched = DelayedMomentum(opt, start_step=2, kinds=("muon",))
    assert momenta(opt) == {"muon": 0.0, "adam": 0.9}
    sched.step()
    sched.step()
    assert momenta(opt) == {"muon": 0.95, "adam": 0.9}
    with pytest.raises(ValueError, match="no param group of kinds"):
        DelayedMomentum(opt, start_step=2, kinds=("sgd",))
    with pytest.raises(ValueError, match="start_step must be an int >= 0"):
        DelayedMomentum(opt, start_step=-1)


def test_delayed_adam_updates_like_adam_with_beta1_zero_then_default() -> None:
    """The scheduled beta1 is what Adam really uses: compare to fixed-beta Adams."""
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    net = make_net()
    opt = torch.optim.Adam(net.parameters(), lr=0.01, betas=(0.9, 0.999))
    sched = DelayedMomentum(opt, start_step=2)
    ref = copy.deepcopy(net)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.01, betas=(0.0, 0.999))
    for step in range(4):
        if step == 2:
            ref_opt.param_groups[0]["betas"] = (0.9, 0.999)
        for model, o in ((net, opt), (ref, ref_opt)):
            o.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            o.step()
        sched.step()
        for p, q in zip(net.parameters(), ref.parameters(), strict=True):
            assert torch.equal(p, q)


def test_delayed_muon_momentum_is_used_by_muon() -> None:
    """Two updates in the delay equal Muon(momentum=0) and differ from Muon(momentum=0.95).

    (One update cannot tell: Newton-Schulz normalises away the scale of the first buffer.)
    """
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    net, ref, undelayed = make_net(), make_net(), make_net()
    opt = build_optimizer(net, case="muon", lr=0.01, momentum=0.95)
    sched = DelayedMomentum(opt, start_step=5, kinds=("muon",))
    ref_opt = build_optimizer(ref, case="muon", lr=0.01, momentum=0.0)
    undelayed_opt = build_optimizer(undelayed, case="muon", lr=0.01, momentum=0.95)
    for _ in range(2):
        for model, o in ((net, opt), (ref, ref_opt), (undelayed, undelayed_opt)):
            o.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            o.step()
        sched.step()
    hidden = 2  # index of the hidden weight in net.parameters()
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(list(net.parameters())[hidden], list(undelayed.parameters())[hidden])


def test_state_dict_round_trip_and_sam_and_reload() -> None:
    net = make_net()
    sam = SAM(build_optimizer(net, case="muon"), rho=0.05)
    sched = DelayedMomentum(sam, start_step=4)
    for _ in range(3):
        sched.step()
    saved = sched.state_dict()
    other = DelayedMomentum(build_optimizer(make_net(), case="muon"), start_step=100)
    other.load_state_dict(saved)
    assert other.current_step == 3 and other.start_step == 4
    assert momenta(other.optimizer) == {"muon": 0.0, "adam": 0.0}
    other.step()
    assert momenta(other.optimizer) == {"muon": 0.95, "adam": 0.9}
    # after the optimizer reloads its state (new group dicts) the schedule still drives it
    sam.load_state_dict(sam.state_dict())
    sched.step()
    assert momenta(sam) == {"muon": 0.95, "adam": 0.9}
