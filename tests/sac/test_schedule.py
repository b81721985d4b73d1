"""Delayed momentum through the agent: 0 before start_step updates, the configured value after."""

from __future__ import annotations

import pytest
import torch
from flatrl.agents.sac.sac import SACAgent
from flatrl.agents.sac.settings import load_settings
from flatrl.optim import get_momentum

from .conftest import compose_config

OBS, ACT, START = 4, 2, 3


def _batch(n: int = 8) -> dict[str, torch.Tensor]:
    return {
        "obs": torch.randn(n, OBS),
        "action": torch.rand(n, ACT) * 2 - 1,
        "reward": torch.randn(n, 1),
        "next_obs": torch.randn(n, OBS),
        "not_done": torch.ones(n, 1),
    }


def _momenta(net_opt) -> dict[str, float]:
    return {g["optimizer_kind"]: get_momentum(g) for g in net_opt.base.param_groups}


@pytest.mark.parametrize("case", ["muon", "adam", "adamw"])
def test_schedule_zero_before_start_then_default(case: str) -> None:
    s = load_settings(
        compose_config(
            "model.hidden_dim=16",
            f"training.actor_optimizer.case={case}",
            f"training.critic_optimizer.case={case}",
            "training.actor_optimizer.muon.momentum=0.8",
            "training.critic_optimizer.muon.momentum=0.7",
            "training.actor_optimizer.betas=[0.6,0.999]",
            "training.critic_optimizer.betas=[0.5,0.999]",
            "training.actor_momentum_schedule.enabled=true",
            f"training.actor_momentum_schedule.start_step={START}",
            "training.critic_momentum_schedule.enabled=true",
            f"training.critic_momentum_schedule.start_step={START}",
        )
    )
    agent = SACAgent(OBS, ACT, s.model, s.training)
    fallback = "adamw" if case == "muon" else case
    actor_default = {"muon": 0.8, fallback: 0.6}
    critic_default = {"muon": 0.7, fallback: 0.5}
    if case != "muon":
        actor_default.pop("muon")
        critic_default.pop("muon")
    torch.manual_seed(0)
    for update in range(START + 2):
        # The momentum the optimizers are about to use for update number `update`.
        on = update >= START
        assert _momenta(agent.actor_opt) == {k: v if on else 0.0 for k, v in actor_default.items()}
        assert _momenta(agent.critic_opt) == {
            k: v if on else 0.0 for k, v in critic_default.items()
        }
        agent.update(_batch())


def test_zero_momentum_really_reaches_muon() -> None:
    """With the schedule off-phase, Muon's buffer after one update is exactly that gradient."""
    s = load_settings(
        compose_config(
            "model.hidden_dim=16",
            "training.critic_optimizer.case=muon",
            "training.critic_momentum_schedule.enabled=true",
            "training.critic_momentum_schedule.start_step=5",
        )
    )
    agent = SACAgent(OBS, ACT, s.model, s.training)
    agent.update(_batch())
    agent.update(_batch())
    muon = agent.critic_opt.base.optimizers[0]
    for p, state in muon.state.items():
        assert torch.equal(state["momentum_buffer"], p.grad)


def test_actor_schedule_counts_actor_updates() -> None:
    s = load_settings(
        compose_config(
            "model.hidden_dim=16",
            "training.actor_optimizer.case=muon",
            "training.actor_update_freq=2",
            "training.actor_momentum_schedule.enabled=true",
            "training.actor_momentum_schedule.start_step=2",
        )
    )
    agent = SACAgent(OBS, ACT, s.model, s.training)
    for _ in range(3):  # the actor is updated at critic updates 0 and 2 only
        agent.update(_batch())
    assert agent.actor_opt.schedule.current_step == 2
    assert _momenta(agent.actor_opt) == {"muon": 0.95, "adamw": 0.9}
    assert agent.critic_opt.schedule is None
