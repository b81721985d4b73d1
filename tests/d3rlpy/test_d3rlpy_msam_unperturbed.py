"""``SAMFactory(variant="msam")``: d3rlpy acts, evaluates and syncs targets at the weights w.

Momentum-SAM keeps the parameters it steps at the perturbed ``w~`` between updates. The patched
``eval_api`` (``predict``, ``sample_action``, ``predict_value``) and ``soft_sync`` /
``hard_sync`` (target networks, ``copy_*_from``) must read the trained weights ``w``: the same
numbers as a plain Adam copy of the algorithm with ``w`` loaded, with ``w~`` back afterwards.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from d3rlpy_support import build, optimizers_of, params_of, require_patched_d3rlpy, sample_batch

d3rlpy = require_patched_d3rlpy()

MSAM = {"variant": "msam", "rho": 0.5}


def _msam(algo: Any) -> list[Any]:
    from flatrl.optim import MomentumSAM

    opts = [w.optim for w in optimizers_of(algo).values()]
    assert all(isinstance(o, MomentumSAM) for o in opts)
    return opts


def _networks(algo: Any) -> dict[str, torch.nn.Module]:
    modules = algo.impl.modules
    return {
        f.name: getattr(modules, f.name)
        for f in dataclasses.fields(modules)
        if isinstance(getattr(modules, f.name), torch.nn.Module)
    }


def _trained(name: str, updates: int = 3) -> tuple[Any, Any]:
    algo, dataset = build(name, sam=MSAM)
    torch.manual_seed(0)
    for _ in range(updates):
        algo.update(sample_batch(name, dataset))
    assert all(o.perturbed for o in _msam(algo))
    return algo, dataset


def _copy_at_w(name: str, algo: Any) -> Any:
    """A plain-Adam build of ``name`` holding ``algo``'s trained weights w."""
    from flatrl.optim import unperturbed

    ref, _ = build(name)
    with unperturbed(*_msam(algo)):
        for key, net in _networks(algo).items():
            _networks(ref)[key].load_state_dict(net.state_dict())
    return ref


@pytest.mark.parametrize("name", ["SAC", "DQN"])
def test_predict_sample_and_value_use_w(name: str) -> None:
    algo, dataset = _trained(name)
    ref = _copy_at_w(name, algo)
    w_tilde = params_of(algo)
    assert any(not torch.equal(a, b) for a, b in zip(w_tilde, params_of(ref), strict=True))
    x = np.asarray(dataset.episodes[0].observations[:5])
    action = algo.predict(x)
    np.testing.assert_array_equal(action, ref.predict(x))
    np.testing.assert_array_equal(algo.predict_value(x, action), ref.predict_value(x, action))
    torch.manual_seed(7)
    sampled = algo.sample_action(x)
    torch.manual_seed(7)
    np.testing.assert_array_equal(sampled, ref.sample_action(x))
    for a, b in zip(params_of(algo), w_tilde, strict=True):
        assert torch.equal(a, b)  # w~ back, bit for bit


def test_hard_target_sync_copies_w() -> None:
    from flatrl.optim import unperturbed

    algo, dataset = build("DQN", sam=MSAM, overrides={"target_update_interval": 1})
    torch.manual_seed(0)
    for _ in range(3):
        algo.update(sample_batch("DQN", dataset))
    nets = _networks(algo)
    (opt,) = _msam(algo)
    assert opt.perturbed
    with unperturbed(opt):
        w = [p.detach().clone() for p in nets["q_funcs"].parameters()]
    for target, online in zip(nets["targ_q_funcs"].parameters(), w, strict=True):
        assert torch.equal(target, online)


def test_soft_target_sync_moves_towards_w() -> None:
    from flatrl.optim import unperturbed

    algo, dataset = _trained("SAC")
    nets = _networks(algo)
    tau = algo.config.tau
    before = [p.detach().clone() for p in nets["targ_q_funcs"].parameters()]
    algo.update(sample_batch("SAC", dataset))
    with unperturbed(*_msam(algo)):
        w = [p.detach().clone() for p in nets["q_funcs"].parameters()]
    for target, old, online in zip(nets["targ_q_funcs"].parameters(), before, w, strict=True):
        expected = old.mul_(1 - tau).add_(tau * online)  # soft_sync's own arithmetic
        assert torch.equal(target, expected)


def test_copy_q_function_from_copies_w() -> None:
    algo, _ = _trained("SAC")
    other, _ = build("SAC")
    other.copy_q_function_from(algo)
    ref = _copy_at_w("SAC", algo)
    for a, b in zip(
        _networks(other)["q_funcs"].parameters(),
        _networks(ref)["q_funcs"].parameters(),
        strict=True,
    ):
        assert torch.equal(a, b)


def test_no_momentum_sam_changes_nothing() -> None:
    from flatrl.d3rlpy.unperturbed import unperturbed_modules

    algo, dataset = build("SAC", sam={"rho": 0.5})
    algo.update(sample_batch("SAC", dataset))
    before = params_of(algo)
    with unperturbed_modules(algo.impl.modules):
        inside = params_of(algo)
    assert all(torch.equal(a, b) for a, b in zip(before, inside, strict=True))


def test_saved_policy_is_that_of_w(tmp_path) -> None:
    algo, dataset = _trained("SAC")
    ref = _copy_at_w("SAC", algo)
    algo.save_policy(str(tmp_path / "policy.pt"))
    policy = torch.jit.load(str(tmp_path / "policy.pt"))
    x = np.asarray(dataset.episodes[0].observations[:5])
    np.testing.assert_array_equal(policy(torch.from_numpy(x)).numpy(), ref.predict(x))
