"""``training.critic_optimizer.sam.variant``: LookSAM, Momentum-SAM and AE-SAM on the critic.

Each variant with rho = 0 trains the parameters of the run without SAM (plain critic and the
Muon critic); with a real radius Momentum-SAM's actor and target update see the unperturbed
critic (checked against the weights the optimizer holds), and a run of N + resume N updates
equals 2N. Errors name the Hydra key.
"""

from __future__ import annotations

import pytest
import torch
from flatrl.agents.sac.sac import SACAgent
from flatrl.agents.sac.settings import ConfigError, load_settings
from flatrl.optim import MomentumSAM
from flatrl.runtime import rng_state, set_rng_state

from .conftest import compose_config

OBS, ACT, UPDATES, BATCH = 5, 2, 6, 16
KEY = "training.critic_optimizer.sam"
VARIANTS = {
    "looksam": [f"{KEY}.variant=looksam", f"{KEY}.every_k=2", f"{KEY}.looksam_alpha=0.5"],
    "msam": [f"{KEY}.variant=msam"],
    "aesam": [f"{KEY}.variant=aesam", f"{KEY}.aesam_c=0.0", f"{KEY}.aesam_decay=0.5"],
}


def _batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        {
            "obs": torch.randn(BATCH, OBS, generator=g),
            "action": torch.rand(BATCH, ACT, generator=g) * 2 - 1,
            "reward": torch.randn(BATCH, 1, generator=g),
            "next_obs": torch.randn(BATCH, OBS, generator=g),
            "not_done": torch.ones(BATCH, 1),
        }
        for _ in range(UPDATES)
    ]


def _agent(overrides: list[str]) -> SACAgent:
    settings = load_settings(compose_config("model.hidden_dim=16", *overrides))
    torch.manual_seed(0)
    return SACAgent(OBS, ACT, settings.model, settings.training)


def _train(overrides: list[str]) -> tuple[SACAgent, list[dict]]:
    agent = _agent(overrides)
    return agent, [agent.update(batch) for batch in _batches()]


@pytest.mark.parametrize("muon", [False, True], ids=["adamw", "muon"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_zero_radius_variant_is_the_base_optimizer(variant: str, muon: bool) -> None:
    extra = ["training.critic_optimizer.case=muon"] if muon else []
    base, _ = _train(extra)
    agent, _ = _train(extra + VARIANTS[variant] + [f"{KEY}.rho=0.0"])
    assert (
        type(agent.critic_opt.optimizer).__name__
        == {
            "looksam": "LookSAM",
            "msam": "MomentumSAM",
            "aesam": "AESAM",
        }[variant]
    )
    reference, state = base.state_dict(), agent.state_dict()
    for net in ("actor", "critic", "critic_target"):
        for name, value in reference[net].items():
            torch.testing.assert_close(state[net][name], value, atol=1e-6, rtol=0, msg=name)


def test_msam_actor_and_target_see_the_unperturbed_critic() -> None:
    agent, metrics = _train(VARIANTS["msam"] + [f"{KEY}.rho=0.5", "training.tau=1.0"])
    opt = agent.critic_opt.optimizer
    assert isinstance(opt, MomentumSAM) and opt.perturbed
    assert all("train/critic_sam_sharpness" not in m for m in metrics)  # no pass at w
    with opt.unperturbed():
        w = {k: v.clone() for k, v in agent.critic.state_dict().items()}
    # tau = 1: the target is a copy of the critic taken inside unperturbed(): it equals w.
    for name, value in agent.critic_target.state_dict().items():
        assert torch.equal(value, w[name]), name
    assert any(not torch.equal(v, w[k]) for k, v in agent.critic.state_dict().items()), (
        "the critic should stand at its perturbed weights between updates"
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resume_is_exact(variant: str) -> None:
    overrides = VARIANTS[variant] + [f"{KEY}.rho=0.1"]
    batches = _batches()
    full = _agent(overrides)
    torch.manual_seed(7)
    for batch in batches:
        full.update(batch)
    half = _agent(overrides)
    torch.manual_seed(7)
    for batch in batches[: len(batches) // 2]:
        half.update(batch)
    saved, draws = half.state_dict(), rng_state()  # the trainer's checkpoint keeps both
    resumed = _agent(overrides)
    resumed.load_state_dict(saved)
    set_rng_state(draws)
    for batch in batches[len(batches) // 2 :]:
        resumed.update(batch)
    for net in ("actor", "critic", "critic_target"):
        for name, value in full.state_dict()[net].items():
            assert torch.equal(resumed.state_dict()[net][name], value), (variant, net, name)


def test_bad_variant_names_the_hydra_key() -> None:
    with pytest.raises(ConfigError, match=f"{KEY}.variant='fast' is not one of"):
        load_settings(compose_config(f"{KEY}.rho=0.05", f"{KEY}.variant=fast"))
    with pytest.raises(ConfigError, match=f"{KEY}.every_k=2 does not apply"):
        load_settings(compose_config(f"{KEY}.rho=0.05", f"{KEY}.variant=msam", f"{KEY}.every_k=2"))
