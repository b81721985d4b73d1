"""Optimizer state across algorithms and resets, with SAM and Muon on either side.

``copy_policy_optim_from`` / ``copy_q_function_optim_from`` (CQL pre-training -> SAC
fine-tuning) and ``reset_optimizer_states`` must reach the optimizers that actually hold the
state: the base under SAM, each child of Muon's composite.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from d3rlpy_support import make_dataset, require_patched_d3rlpy

d3rlpy = require_patched_d3rlpy()

from d3rlpy.models import VectorEncoderFactory  # noqa: E402
from d3rlpy.optimizers import AdamFactory, MuonFactory, SAMFactory  # noqa: E402
from flatrl.optim import SAM, CompositeOptimizer  # noqa: E402

ENCODER = VectorEncoderFactory(hidden_units=[16, 16])
FACTORIES = {
    "adam": AdamFactory,
    "sam-adam": lambda: SAMFactory(base=AdamFactory(), rho=0.05),
    "muon": MuonFactory,
    "sam-muon": lambda: SAMFactory(base=MuonFactory(), rho=0.05),
}


def _trained(algo_name: str, factory: str, n_updates: int) -> Any:
    config_cls = getattr(d3rlpy.algos, f"{algo_name}Config")
    config = config_cls(
        batch_size=8,
        actor_encoder_factory=ENCODER,
        critic_encoder_factory=ENCODER,
        actor_optim_factory=FACTORIES[factory](),
        critic_optim_factory=FACTORIES[factory](),
    )
    algo = config.create(device="cpu:0")
    dataset = make_dataset(discrete=False)
    algo.build_with_dataset(dataset)
    torch.manual_seed(0)
    for _ in range(n_updates):
        algo.update(dataset.sample_transition_batch(8))
    return algo


def _leaves(optim: torch.optim.Optimizer) -> list[torch.optim.Optimizer]:
    base = optim.base_optimizer if isinstance(optim, SAM) else optim
    return list(base.optimizers) if isinstance(base, CompositeOptimizer) else [base]


def _moments(optim: torch.optim.Optimizer, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every state tensor of ``params`` (Adam's exp_avg/exp_avg_sq, Muon's momentum)."""
    state = {p: s for leaf in _leaves(optim) for p, s in leaf.state.items()}
    return [
        v
        for p in params
        for _, v in sorted(state.get(p, {}).items())
        if isinstance(v, torch.Tensor) and v.ndim > 0
    ]


PAIRS = [
    ("adam", "sam-adam"),
    ("sam-adam", "adam"),
    ("sam-adam", "sam-adam"),
    ("muon", "muon"),
    ("sam-muon", "muon"),
    ("muon", "sam-muon"),
]


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{s}->{t}" for s, t in PAIRS])
def test_cql_to_sac_copies_optimizer_state_for_every_compatible_pairing(
    source: str, target: str
) -> None:
    cql = _trained("CQL", source, n_updates=2)
    sac = _trained("SAC", target, n_updates=0)
    sac.copy_policy_from(cql)
    sac.copy_q_function_from(cql)
    sac.copy_policy_optim_from(cql)
    sac.copy_q_function_optim_from(cql)

    for field in ("actor_optim", "critic_optim"):
        src = getattr(cql.impl.modules, field).optim
        dst = getattr(sac.impl.modules, field).optim
        dst_params = [p for g in dst.param_groups for p in g["params"]]
        src_params = [p for g in src.param_groups for p in g["params"]]
        copied, original = _moments(dst, dst_params), _moments(src, src_params)
        assert copied and len(copied) == len(original), field
        for c, o in zip(copied, original, strict=True):
            torch.testing.assert_close(c, o)
            assert c.data_ptr() != o.data_ptr()  # a copy: the two train on independently
        if isinstance(dst, SAM):  # SAM still shares its group dicts with its base
            assert dst.param_groups is dst.base_optimizer.param_groups
    # SAC goes on training from the copied state.
    metrics = sac.update(make_dataset(discrete=False).sample_transition_batch(8))
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())


@pytest.mark.parametrize(("source", "target"), [("adam", "muon"), ("sam-muon", "adam")])
def test_incompatible_optimizers_fail_with_one_clear_error(source: str, target: str) -> None:
    cql = _trained("CQL", source, n_updates=1)
    sac = _trained("SAC", target, n_updates=0)
    with pytest.raises(ValueError, match="Cannot copy the policy optimizer state from .* into"):
        sac.copy_policy_optim_from(cql)
    with pytest.raises(ValueError, match="same base optimizer"):
        sac.copy_q_function_optim_from(cql)


@pytest.mark.parametrize("factory", ["adam", "sam-adam", "muon", "sam-muon"])
def test_reset_optimizer_states_clears_the_wrapped_optimizers(factory: str) -> None:
    algo = _trained("SAC", factory, n_updates=2)
    optims = [getattr(algo.impl.modules, f).optim for f in ("actor_optim", "critic_optim")]
    assert all(leaf.state for optim in optims for leaf in _leaves(optim))
    algo.reset_optimizer_states()
    assert not any(leaf.state for optim in optims for leaf in _leaves(optim))
    algo.update(make_dataset(discrete=False).sample_transition_batch(8))  # trains on afresh
    assert all(leaf.state for optim in optims for leaf in _leaves(optim))
