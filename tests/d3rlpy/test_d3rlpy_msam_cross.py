"""Momentum-SAM inside one d3rlpy update: its own loss at ``w~``, every other network at ``w``.

Momentum-SAM keeps the parameters it steps perturbed between updates. Within an update the
stepping optimizer's loss must be taken at its own ``w~``, but whatever that loss reads of the
*other* networks must be their trained weights ``w``: SAC's and TD3's actor loss reads the
critic, SAC's ``compute_target`` samples the policy. Each check compares the numbers with a
plain-Adam copy of the algorithm holding those weights, fed the same batch and random draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch
from d3rlpy_support import build, optimizers_of, params_of, require_patched_d3rlpy, sample_batch

d3rlpy = require_patched_d3rlpy()

RHO = 0.05


def _networks(algo: Any) -> dict[str, torch.nn.Module]:
    modules = algo.impl.modules
    return {
        f.name: getattr(modules, f.name)
        for f in dataclasses.fields(modules)
        if isinstance(getattr(modules, f.name), torch.nn.Module)
    }


def _build(name: str, msam: tuple[str, ...], rho: float = RHO, temp: bool = False) -> Any:
    """``name`` with Momentum-SAM(Adam) on the optimizers named in ``msam`` (``critic``, ...).

    Without ``temp`` SAC's temperature is fixed, so the actor loss depends only on the networks.
    """
    from d3rlpy.optimizers import AdamFactory, SAMFactory

    overrides: dict[str, Any] = {} if temp else {"temp_learning_rate": 0.0}
    for key in msam:
        overrides[f"{key}_optim_factory"] = SAMFactory(base=AdamFactory(), variant="msam", rho=rho)
    return build(name, overrides=overrides)


def _load_at_w(ref: Any, algo: Any, stepping: str) -> None:
    """Copy ``algo``'s networks into ``ref``: the ``stepping`` optimizer's as they stand now,
    every other Momentum-SAM's at ``w``."""
    from flatrl.optim import unperturbed

    others = [w.optim for key, w in optimizers_of(algo).items() if key != stepping]
    with unperturbed(*others):
        for key, net in _networks(algo).items():
            _networks(ref)[key].load_state_dict(net.state_dict())


def _warm(algo: Any, dataset: Any, name: str, updates: int = 3) -> None:
    torch.manual_seed(0)
    for _ in range(updates):
        algo.update(sample_batch(name, dataset))
    from flatrl.optim import MomentumSAM

    msams = [w.optim for w in optimizers_of(algo).values() if isinstance(w.optim, MomentumSAM)]
    assert msams and all(o.perturbed for o in msams)  # so that w and w~ differ below


def _grads(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in net.parameters()]


def _record(
    impl: Any, attr: str, check: Callable[[Callable[..., Any], tuple[Any, ...]], Any]
) -> list[int]:
    """Replace ``impl.<attr>`` by ``check(original, args)`` for the next calls; count them."""
    original = getattr(impl, attr)
    calls: list[int] = []

    def recording(*args: Any) -> Any:
        calls.append(1)
        return check(original, args)

    setattr(impl, attr, recording)
    return calls


@pytest.mark.parametrize(
    ("name", "msam"),
    [("SAC", ("critic",)), ("SAC", ("critic", "actor")), ("TD3", ("critic",))],
)
def test_actor_loss_reads_the_critic_at_w(name: str, msam: tuple[str, ...]) -> None:
    from flatrl.runtime import TorchRNG

    algo, dataset = _build(name, msam)
    ref, _ = _build(name, ())
    _warm(algo, dataset, name)

    def check(original: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        _load_at_w(ref, algo, "actor_optim")
        rng = TorchRNG("cpu")
        out = original(*args)
        grads = _grads(algo.impl.modules.policy)
        with rng.replay():
            expected = ref.impl.compute_actor_grad(*args)
        torch.testing.assert_close(out.actor_loss, expected.actor_loss, rtol=0, atol=0)
        for got, want in zip(grads, _grads(ref.impl.modules.policy), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        return out

    calls = _record(algo.impl, "_compute_actor_grad", check)
    algo.update(sample_batch(name, dataset))
    assert calls
    assert all(w.optim.perturbed for k, w in optimizers_of(algo).items() if k[:-6] in msam)


def test_compute_target_samples_the_policy_at_w() -> None:
    from flatrl.runtime import TorchRNG

    algo, dataset = _build("SAC", ("critic", "actor"))
    ref, _ = _build("SAC", ())
    _warm(algo, dataset, "SAC")

    def check(original: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        _load_at_w(ref, algo, "critic_optim")
        rng = TorchRNG("cpu")
        value = original(*args)
        with rng.replay():
            expected = ref.impl.compute_target(*args)
        torch.testing.assert_close(value, expected, rtol=0, atol=0)
        return value

    calls = _record(algo.impl, "compute_target", check)
    algo.update(sample_batch("SAC", dataset))
    assert calls


@pytest.mark.parametrize("name", ["SAC", "TD3"])
def test_zero_rho_is_adam(name: str) -> None:
    """rho = 0: holding the other optimizers at w and letting the temperature go change nothing."""
    msam = ("actor", "critic", "temp") if name == "SAC" else ("actor", "critic")
    runs = []
    for chosen in (msam, ()):
        algo, dataset = _build(name, chosen, rho=0.0, temp=True)
        torch.manual_seed(0)
        metrics = [algo.update(sample_batch(name, dataset)) for _ in range(4)]
        runs.append((params_of(algo), [m[k] for m in metrics for k in sorted(m) if "loss" in k]))
    (params, losses), (adam_params, adam_losses) = runs
    assert losses == adam_losses
    for a, b in zip(params, adam_params, strict=True):
        assert torch.equal(a, b)
