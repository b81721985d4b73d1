"""The plumbing SAM and CompositeOptimizer share (flatrl.optim.delegating): one contract, three
wrappers (SAM around Adam, a Muon+Adam composite, SAM around that composite)."""

from __future__ import annotations

import collections
import pickle
from collections.abc import Callable

import pytest
import torch
from flatrl.optim import SAM, CompositeOptimizer, build_optimizer
from flatrl.optim.delegating import DelegatingOptimizer
from torch import nn

torch.set_num_threads(1)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))


def _sam(net: nn.Module) -> torch.optim.Optimizer:
    return SAM(net.parameters(), base=torch.optim.Adam, rho=0.05, lr=1e-2)


def _composite(net: nn.Module) -> torch.optim.Optimizer:
    return build_optimizer(net, case="muon", lr=1e-2)


def _sam_composite(net: nn.Module) -> torch.optim.Optimizer:
    return SAM(_composite(net), rho=0.05)


WRAPPERS = {"sam": _sam, "composite": _composite, "sam_composite": _sam_composite}


def _leaves(opt: torch.optim.Optimizer) -> list[torch.optim.Optimizer]:
    """The optimizers that really hold groups and state under ``opt``."""
    if isinstance(opt, SAM):
        return _leaves(opt.base_optimizer)
    if isinstance(opt, CompositeOptimizer):
        return [leaf for child in opt.optimizers for leaf in _leaves(child)]
    return [opt]


def _update(net: nn.Module, opt: torch.optim.Optimizer) -> None:
    x = torch.linspace(-1, 1, 32).reshape(8, 4)

    def loss_fn() -> torch.Tensor:
        return net(x).pow(2).mean()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.zero_grad()
    loss_fn().backward()
    if isinstance(opt, SAM):
        opt.step(closure)
    else:
        opt.step()


@pytest.mark.parametrize("make", WRAPPERS.values(), ids=WRAPPERS.keys())
def test_groups_and_state_are_the_wrapped_optimizers(make: Callable) -> None:
    net = _net()
    opt = make(net)
    assert isinstance(opt, DelegatingOptimizer)
    leaves = _leaves(opt)
    # the group dicts themselves: an lr edited on the wrapper is the one the leaf applies
    assert [id(g) for g in opt.param_groups] == [
        id(g) for leaf in leaves for g in leaf.param_groups
    ]
    opt.param_groups[0]["lr"] = 0.123
    assert leaves[0].param_groups[0]["lr"] == 0.123
    _update(net, opt)
    assert len(opt.state) == sum(len(leaf.state) for leaf in leaves) > 0
    # d3rlpy's reset_optimizer_states: the leaves lose their state, the groups stay
    opt.state = collections.defaultdict(dict)
    assert all(len(leaf.state) == 0 for leaf in leaves)
    assert len(opt.param_groups) == sum(len(leaf.param_groups) for leaf in leaves)
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("make", WRAPPERS.values(), ids=WRAPPERS.keys())
def test_pickle_keeps_the_wrapped_optimizers_and_the_next_update(make: Callable) -> None:
    net = _net()
    opt = make(net)
    _update(net, opt)
    net2, opt2 = pickle.loads(pickle.dumps((net, opt)))
    _update(net, opt)
    _update(net2, opt2)
    for p, q in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(p, q)
    # the copy's groups still alias its own leaves' group dicts, not the original's
    assert [id(g) for g in opt2.param_groups] == [
        id(g) for leaf in _leaves(opt2) for g in leaf.param_groups
    ]


@pytest.mark.parametrize("make", WRAPPERS.values(), ids=WRAPPERS.keys())
def test_added_group_and_loaded_state_show_through(make: Callable) -> None:
    net = _net()
    opt = make(net)
    extra = nn.Parameter(torch.ones(3))
    group = {"params": [extra], "lr": 0.5}
    if not isinstance(opt, SAM) or isinstance(opt.base_optimizer, CompositeOptimizer):
        group["optimizer_kind"] = "adam"
    opt.add_param_group(group)
    assert any(p is extra for g in opt.param_groups for p in g["params"])
    assert any(p is extra for leaf in _leaves(opt) for g in leaf.param_groups for p in g["params"])
    _update(net, opt)
    saved = opt.state_dict()
    opt.load_state_dict(saved)  # the leaves build new group dicts: the wrapper must follow
    assert [id(g) for g in opt.param_groups] == [
        id(g) for leaf in _leaves(opt) for g in leaf.param_groups
    ]
