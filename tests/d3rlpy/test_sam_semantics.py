"""What a SAM update means in the patched d3rlpy: same randoms, nested steps once, rho->0 = Adam."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch
from d3rlpy_support import build, optimizers_of, params_of, require_patched_d3rlpy, sample_batch

require_patched_d3rlpy()

TINY_RHO = 1e-10


def _count_base_steps(wrapper: Any) -> dict[str, int]:
    """Count the steps of the torch optimizer that actually updates ``wrapper``'s parameters."""
    from flatrl.optim import SAM

    optim = wrapper.optim.base_optimizer if isinstance(wrapper.optim, SAM) else wrapper.optim
    counter = {"steps": 0}
    original: Callable[..., Any] = optim.step

    def counting(*args: Any, **kwargs: Any) -> Any:
        counter["steps"] += 1
        return original(*args, **kwargs)

    optim.step = counting
    return counter


@pytest.mark.parametrize(
    ("name", "nested", "n_steps"),
    [
        ("SAC", ["temp_optim"], 3),
        ("CQL", ["temp_optim", "alpha_optim"], 3),
        ("BEAR", ["temp_optim", "alpha_optim"], 2),  # its first update is the actor warm-up
        ("DiscreteSAC", ["temp_optim"], 3),
    ],
)
@pytest.mark.parametrize("nested_on_sam", [False, True], ids=["nested-adam", "nested-sam"])
def test_nested_temperature_and_alpha_step_once_per_update(
    name: str, nested: list[str], n_steps: int, nested_on_sam: bool
) -> None:
    algo, dataset = build(name, sam={"rho": 0.05})
    wrappers = optimizers_of(algo)
    if not nested_on_sam:  # the usual setup: SAM for the networks, Adam for the scalars
        from d3rlpy.optimizers import OptimizerWrapper
        from torch.optim import Adam

        for field in nested:
            sam_wrapper = wrappers[field]
            params = list(sam_wrapper._params)
            plain = OptimizerWrapper(params, Adam(params, lr=1e-3), compiled=False)
            object.__setattr__(algo.impl.modules, field, plain)
        wrappers = optimizers_of(algo)
    counters = {field: _count_base_steps(wrappers[field]) for field in nested}
    for _ in range(3):
        algo.update(sample_batch(name, dataset))
    for field in nested:
        assert counters[field]["steps"] == n_steps, field


def _updates(name: str, sam: dict | None, batches: list[Any]) -> tuple[list[Any], list[dict]]:
    algo, _ = build(name, sam=sam, seed=0)
    torch.manual_seed(1234)
    metrics = [algo.update(batch) for batch in batches]
    return params_of(algo), metrics


STOCHASTIC = ["SAC", "CQL", "TD3", "BEAR", "BCQ", "DiscreteSAC", "DecisionTransformer", "IQL"]


@pytest.mark.parametrize("name", STOCHASTIC)
def test_sam_with_tiny_rho_equals_adam(name: str) -> None:
    """With rho -> 0 the SAM update is the Adam update, random draws and all.

    This only holds if the closure replays the first pass's random numbers (otherwise its
    gradient is taken on other samples) and leaves the RNG where plain training would.
    """
    _, dataset = build(name)
    torch.manual_seed(0)
    batches = [sample_batch(name, dataset) for _ in range(3)]
    adam_params, _ = _updates(name, None, batches)
    sam_params, _ = _updates(name, {"rho": TINY_RHO}, batches)
    assert len(adam_params) == len(sam_params)
    for a, s in zip(adam_params, sam_params, strict=True):
        torch.testing.assert_close(s, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_second_pass_sees_the_same_random_draws(name: str) -> None:
    """At (almost) the same weights the closure's loss equals the first pass's exactly."""
    algo, dataset = build(name, sam={"rho": TINY_RHO})
    for _ in range(3):
        metrics = algo.update(sample_batch(name, dataset))
    sharpness = {k: v for k, v in metrics.items() if k.endswith("_sharpness")}
    assert sharpness
    for key, value in sharpness.items():
        assert abs(value) < 1e-4, (key, value)


def test_real_rho_gives_a_positive_sharpness() -> None:
    # The ascent step raises the loss to first order: a working closure shows it.
    algo, dataset = build("BC", sam={"rho": 0.05})
    values = [algo.update(sample_batch("BC", dataset))["loss_sharpness"] for _ in range(3)]
    assert all(v > 0 for v in values), values


def test_every_k_reports_sharpness_only_on_sam_steps() -> None:
    algo, dataset = build("DQN", sam={"rho": 0.05, "every_k": 2})
    seen = ["loss_sharpness" in algo.update(sample_batch("DQN", dataset)) for _ in range(4)]
    assert seen == [True, False, True, False]


def test_clipping_applies_to_the_gradient_of_the_base_step() -> None:
    from d3rlpy.optimizers import SAMFactory, SGDFactory

    clip, lr = 1e-4, 0.5
    algo, dataset = build("BC")
    config = dataclasses.replace(
        algo.config,
        learning_rate=lr,
        optim_factory=SAMFactory(base=SGDFactory(), rho=0.05, clip_grad_norm=clip),
    )
    algo = config.create(device="cpu:0")
    algo.build_with_dataset(dataset)
    before = params_of(algo)
    algo.update(sample_batch("BC", dataset))
    after = params_of(algo)
    step = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(after, before, strict=True)))
    # plain SGD: the parameter change is lr * (clipped gradient), whose norm is exactly clip
    assert float(step) == pytest.approx(lr * clip, rel=1e-3)


def test_lr_scheduler_steps_once_per_update() -> None:
    from d3rlpy.optimizers import CosineAnnealingLRFactory, SAMFactory

    algo, dataset = build("BC")
    config = dataclasses.replace(
        algo.config,
        optim_factory=SAMFactory(lr_scheduler_factory=CosineAnnealingLRFactory(T_max=10)),
    )
    algo = config.create(device="cpu:0")
    algo.build_with_dataset(dataset)
    for _ in range(3):
        algo.update(sample_batch("BC", dataset))
    wrapper = algo.impl.modules.optim
    assert wrapper._lr_scheduler.last_epoch == 3
    initial = config.learning_rate
    expected = initial * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 3 / 10))).item()
    assert wrapper.optim.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-6)


def test_decision_transformer_manual_lr_schedule_reaches_the_base_optimizer() -> None:
    # Discrete DT sets param_group["lr"] by hand after each step; SAM shares its base's groups.
    algo, dataset = build("DiscreteDecisionTransformer", sam={"rho": 0.05})
    metrics = algo.update(sample_batch("DiscreteDecisionTransformer", dataset))
    base = algo.impl.modules.optim.optim.base_optimizer
    assert {g["lr"] for g in base.param_groups} == {metrics["learning_rate"]}
    assert "loss_sharpness" in metrics


def test_closure_leaves_other_networks_gradients_as_the_first_pass_left_them() -> None:
    """The actor's closure backpropagates through the Q-functions without adding to their
    .grad: after the update they hold the first pass's gradient, exactly as with Adam."""
    _, dataset = build("SAC")
    torch.manual_seed(0)
    batch = sample_batch("SAC", dataset)
    grads = {}
    for label, sam in (("adam", None), ("sam", {"rho": TINY_RHO})):
        algo, _ = build("SAC", sam=sam)
        torch.manual_seed(5)
        algo.update(batch)
        grads[label] = [p.grad.clone() for p in algo.impl.modules.q_funcs.parameters()]
        assert all(p.requires_grad for p in algo.impl.modules.q_funcs.parameters())
        assert all(p.requires_grad for p in algo.impl.modules.policy.parameters())
    for a, s in zip(grads["adam"], grads["sam"], strict=True):
        torch.testing.assert_close(s, a, rtol=1e-5, atol=1e-7)


def test_parameters_frozen_by_the_user_stay_frozen_and_unchanged() -> None:
    """Freezing after the first SAM update (fine-tuning a part) survives the closures.

    The closures freeze other optimizers' parameters for their second pass and must give each
    back the flag it had, not True (the old closures unfroze both parameters below).
    """
    algo, dataset = build("SAC", sam={"rho": 0.05})
    algo.update(sample_batch("SAC", dataset))
    modules = algo.impl.modules
    frozen = [
        next(modules.q_funcs.parameters()),  # another optimizer's, seen by the actor closure
        next(modules.policy.parameters()),  # the actor's own
    ]
    for p in frozen:
        p.requires_grad_(False)
    values = [p.detach().clone() for p in frozen]
    for _ in range(2):
        algo.update(sample_batch("SAC", dataset))
    assert [p.requires_grad for p in frozen] == [False, False]
    for p, before in zip(frozen, values, strict=True):
        torch.testing.assert_close(p.detach(), before)
    others = [p for p in modules.q_funcs.parameters() if all(p is not f for f in frozen)]
    assert all(p.requires_grad for p in others)
