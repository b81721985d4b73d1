"""The rho -> 0 law through the SAC agent: SAM on the critic with rho 0 or 1e-9 (every_k 1 and
3, ASAM on and off) trains the same parameters as the run without SAM and reports a sharpness
of ~0, for every critic variant the agent builds (layer norm, spectral norm, L2, residual,
gradient clipping, Muon)."""

from __future__ import annotations

import itertools

import pytest
import torch
from flatrl.agents.sac.sac import SACAgent
from flatrl.agents.sac.settings import load_settings

from .conftest import compose_config

OBS, ACT, UPDATES, BATCH = 5, 2, 6, 16

VARIANTS = {
    "plain": [],
    "layernorm": ["model.norm=layernorm"],
    "spectral": ["model.spectral_norm=true", "model.num_layers=3"],
    "layernorm+spectral+clip": [
        "model.norm=layernorm",
        "model.spectral_norm=true",
        "model.num_layers=3",
        "training.grad_clip=0.5",
    ],
    "l2+residual+muon": [
        "model.norm=l2",
        "model.residual=true",
        "model.num_layers=3",
        "training.critic_optimizer.case=muon",
    ],
}
SAM_CASES = list(itertools.product([0.0, 1e-9], [1, 3], [False, True]))


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


def _train(overrides: list[str]) -> tuple[SACAgent, list[dict]]:
    settings = load_settings(compose_config("model.hidden_dim=16", *overrides))
    torch.manual_seed(0)
    agent = SACAgent(OBS, ACT, settings.model, settings.training)
    metrics = [agent.update(batch) for batch in _batches()]
    return agent, metrics


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sam_with_vanishing_rho_is_the_base_optimizer(variant: str) -> None:
    base, base_metrics = _train(VARIANTS[variant])
    assert not base.critic_opt.uses_sam
    reference = base.state_dict()
    for rho, every_k, adaptive in SAM_CASES:
        case = f"{variant} rho={rho} every_k={every_k} adaptive={adaptive}"
        agent, metrics = _train(
            VARIANTS[variant]
            + [
                f"training.critic_optimizer.sam.rho={rho}",
                f"training.critic_optimizer.sam.every_k={every_k}",
                f"training.critic_optimizer.sam.adaptive={str(adaptive).lower()}",
            ]
        )
        assert agent.critic_opt.uses_sam, case
        sharpness = [m.get("train/critic_sam_sharpness") for m in metrics]
        # A SAM step on updates 0, k, 2k, ... and plain steps in between.
        assert [s is not None for s in sharpness] == [i % every_k == 0 for i in range(UPDATES)], (
            case
        )
        assert all(abs(s) < 1e-6 for s in sharpness if s is not None), (case, sharpness)
        if rho == 0.0:
            assert all(s == 0.0 for s in sharpness if s is not None), (case, sharpness)
        state = agent.state_dict()
        for net in ("actor", "critic", "critic_target"):
            for name, value in reference[net].items():
                torch.testing.assert_close(
                    state[net][name], value, atol=1e-6, rtol=0, msg=f"{case}: {net}.{name}"
                )
        torch.testing.assert_close(state["log_alpha"], reference["log_alpha"], atol=1e-6, rtol=0)
        for got, want in zip(metrics, base_metrics, strict=True):
            torch.testing.assert_close(
                got["train/critic_loss"], want["train/critic_loss"], atol=1e-6, rtol=0
            )
