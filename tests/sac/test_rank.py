"""Effective-rank logging of the critic's penultimate features, on features of known rank."""

from __future__ import annotations

import math

import pytest
import torch
from flatrl.agents.sac.models import Critic, MLPConfig
from flatrl.agents.sac.rank import critic_rank_metrics, feature_rank_metrics


def _equal_spectrum(n: int, d: int, rank: int, seed: int) -> torch.Tensor:
    """n x d features with exactly `rank` equal non-zero singular values."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, rank, generator=g, dtype=torch.float64))
    return (3.0 * u @ v.T).float()


def test_feature_rank_metrics_on_known_ranks() -> None:
    metrics = feature_rank_metrics(
        [_equal_spectrum(200, 32, 4, 0), _equal_spectrum(200, 32, 12, 1)], top_k=3
    )
    assert metrics["repr/q1_effective_rank"] == pytest.approx(4.0, rel=1e-4)
    assert metrics["repr/q2_effective_rank"] == pytest.approx(12.0, rel=1e-4)
    assert metrics["repr/q_effective_rank_mean"] == pytest.approx(8.0, rel=1e-4)
    assert metrics["repr/q1_top3_sv_mass"] == pytest.approx(3 / 4, rel=1e-4)
    assert metrics["repr/q2_top3_sv_mass"] == pytest.approx(3 / 12, rel=1e-4)
    assert metrics["repr/q_top3_sv_mass_mean"] == pytest.approx((3 / 4 + 3 / 12) / 2, rel=1e-4)


def test_critic_hook_sees_a_collapsed_q_network() -> None:
    """Zeroing all but r units of q1's last hidden layer caps its feature rank at r."""
    torch.manual_seed(0)
    critic = Critic(6, 2, MLPConfig(hidden_dim=32, num_layers=2))
    r = 3
    with torch.no_grad():
        critic.q1.fcs[1].weight[r:] = 0.0
        critic.q1.fcs[1].bias[r:] = 0.0
    obs, act = torch.randn(400, 6), torch.rand(400, 2) * 2 - 1
    m = critic_rank_metrics(critic, obs, act, max_samples=256, top_k=r)
    assert 1.0 < m["repr/q1_effective_rank"] <= r + 1e-6
    assert m["repr/q1_top3_sv_mass"] == pytest.approx(1.0, abs=1e-6)
    assert m["repr/q2_effective_rank"] > 2 * r
    assert m["repr/q2_top3_sv_mass"] < 0.9
    assert math.isclose(
        m["repr/q_effective_rank_mean"],
        (m["repr/q1_effective_rank"] + m["repr/q2_effective_rank"]) / 2,
    )


def test_critic_hook_uses_at_most_max_samples() -> None:
    critic = Critic(6, 2, MLPConfig(hidden_dim=64, num_layers=2))
    obs, act = torch.randn(500, 6), torch.rand(500, 2) * 2 - 1
    # With only 5 samples the feature matrix has rank <= 5 whatever the width.
    m = critic_rank_metrics(critic, obs, act, max_samples=5, top_k=5)
    assert m["repr/q1_effective_rank"] <= 5 + 1e-6
    assert m["repr/q1_top5_sv_mass"] == pytest.approx(1.0, abs=1e-6)
