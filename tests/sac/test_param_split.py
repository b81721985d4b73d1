"""Which tensors Muon gets, per case and first/last-layer toggle, through the agent's wiring."""

from __future__ import annotations

import itertools

import pytest
import torch
from flatrl.agents.sac.sac import SACAgent
from flatrl.agents.sac.settings import load_settings

from .conftest import compose_config

OBS, ACT = 5, 2

ACTOR_HIDDEN = {"fcs.1.weight"}
ACTOR_FIRST = {"fcs.0.weight"}
ACTOR_LAST = {"mean.weight", "log_std.weight"}
CRITIC_HIDDEN = {"q1.fcs.1.weight", "q2.fcs.1.weight"}
CRITIC_FIRST = {"q1.fcs.0.weight", "q2.fcs.0.weight"}
CRITIC_LAST = {"q1.out.weight", "q2.out.weight"}
# The Q heads are (1, hidden): a weight with a size-1 dimension never goes to Muon.
CRITIC_LAST_MUON: set[str] = set()


def _agent(*overrides: str) -> SACAgent:
    s = load_settings(compose_config("model.hidden_dim=16", *overrides))
    return SACAgent(OBS, ACT, s.model, s.training)


def _split(net_opt, module: torch.nn.Module) -> dict[str, set[str]]:
    """Parameter names per optimizer kind, read from the optimizer's own param groups."""
    names = {id(p): n for n, p in module.named_parameters()}
    out: dict[str, set[str]] = {}
    for group in net_opt.base.param_groups:
        out.setdefault(group["optimizer_kind"], set()).update(names[id(p)] for p in group["params"])
    return out


@pytest.mark.parametrize("first,last", list(itertools.product([False, True], repeat=2)))
def test_muon_case_split_follows_toggles(first: bool, last: bool) -> None:
    toggles = []
    for net in ("actor", "critic"):
        toggles += [
            f"training.{net}_optimizer.case=muon",
            f"training.{net}_optimizer.muon.apply_first_layer={str(first).lower()}",
            f"training.{net}_optimizer.muon.apply_last_layer={str(last).lower()}",
        ]
    agent = _agent(*toggles)
    for net, module, hidden, first_set, last_set in (
        ("actor", agent.actor, ACTOR_HIDDEN, ACTOR_FIRST, ACTOR_LAST),
        ("critic", agent.critic, CRITIC_HIDDEN, CRITIC_FIRST, CRITIC_LAST_MUON),
    ):
        split = _split(getattr(agent, f"{net}_opt"), module)
        expected_muon = hidden | (first_set if first else set()) | (last_set if last else set())
        all_names = {n for n, _ in module.named_parameters()}
        assert split["muon"] == expected_muon, net
        assert split["adamw"] == all_names - expected_muon, net
        assert all("bias" in n for n in split["adamw"] - first_set - ACTOR_LAST - CRITIC_LAST)


def test_muon_covers_first_and_last_layers_unless_excluded() -> None:
    """Defaults: Muon on the first and last layers (the "exclude the heads" ablation
    sets apply_last_layer=false, so it must differ from the plain Muon run)."""
    muon = ("training.actor_optimizer.case=muon", "training.critic_optimizer.case=muon")
    default = _agent(*muon)
    assert default.cfg.actor_optimizer.muon.apply_first_layer
    assert default.cfg.actor_optimizer.muon.apply_last_layer
    assert default.cfg.critic_optimizer.muon.apply_first_layer
    assert default.cfg.critic_optimizer.muon.apply_last_layer
    assert _split(default.actor_opt, default.actor)["muon"] == (
        ACTOR_HIDDEN | ACTOR_FIRST | ACTOR_LAST
    )
    # The critic's (1, hidden) Q heads stay on the fallback even with apply_last_layer=true.
    critic = _split(default.critic_opt, default.critic)
    assert critic["muon"] == CRITIC_HIDDEN | CRITIC_FIRST
    assert CRITIC_LAST <= critic["adamw"]
    no_heads = _agent(*muon, "training.actor_optimizer.muon.apply_last_layer=false")
    assert _split(no_heads.actor_opt, no_heads.actor)["muon"] == ACTOR_HIDDEN | ACTOR_FIRST


@pytest.mark.parametrize("case", ["adam", "adamw"])
def test_adam_cases_put_everything_in_one_optimizer(case: str) -> None:
    agent = _agent(
        f"training.actor_optimizer.case={case}", f"training.critic_optimizer.case={case}"
    )
    for net_opt, module in ((agent.actor_opt, agent.actor), (agent.critic_opt, agent.critic)):
        assert isinstance(net_opt.base, torch.optim.AdamW if case == "adamw" else torch.optim.Adam)
        assert _split(net_opt, module) == {case: {n for n, _ in module.named_parameters()}}


def test_mixed_cases_and_fallback_choice() -> None:
    agent = _agent(
        "training.actor_optimizer.case=adamw",
        "training.critic_optimizer.case=muon",
        "training.critic_optimizer.fallback=adam",
        "training.critic_optimizer.muon.apply_first_layer=false",
    )
    assert set(_split(agent.actor_opt, agent.actor)) == {"adamw"}
    split = _split(agent.critic_opt, agent.critic)
    assert split["muon"] == CRITIC_HIDDEN
    assert "adamw" not in split and CRITIC_FIRST | CRITIC_LAST <= split["adam"]


def test_norm_and_spectral_norm_params_are_split_correctly() -> None:
    agent = _agent(
        "training.critic_optimizer.case=muon",
        "training.critic_optimizer.muon.apply_first_layer=false",
        "model.norm=layernorm",
        "model.spectral_norm=true",
        "model.num_layers=3",
    )
    split = _split(agent.critic_opt, agent.critic)
    # Spectral norm re-registers hidden weights as parametrizations.weight.original (still 2-D).
    expected = {f"q{i}.fcs.{j}.parametrizations.weight.original" for i in (1, 2) for j in (1, 2)}
    assert split["muon"] == expected
    assert {f"q{i}.norms.{j}.weight" for i in (1, 2) for j in range(3)} <= split["adamw"]


def test_muon_momentum_buffers_exist_exactly_for_muon_params() -> None:
    agent = _agent(
        "training.critic_optimizer.case=muon",
        "training.actor_optimizer.case=muon",
        "training.critic_optimizer.muon.apply_first_layer=false",
    )
    batch = {
        "obs": torch.randn(8, OBS),
        "action": torch.rand(8, ACT) * 2 - 1,
        "reward": torch.randn(8, 1),
        "next_obs": torch.randn(8, OBS),
        "not_done": torch.ones(8, 1),
    }
    agent.update(batch)
    names = {id(p): n for n, p in agent.critic.named_parameters()}
    muon = agent.critic_opt.base.optimizers[0]
    assert isinstance(muon, torch.optim.Muon)
    with_buffer = {names[id(p)] for p, st in muon.state.items() if "momentum_buffer" in st}
    assert with_buffer == CRITIC_HIDDEN
