"""Effective-rank diagnostics of the critic's penultimate features.

A critic whose features collapse onto a few directions fits new targets poorly; tracking the
effective rank of each Q network's last hidden layer (and how much of the spectrum the top-k
directions hold) tests whether Muon's orthogonalised updates prevent that collapse.
The numbers themselves come from :mod:`flatrl.diagnostics`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from flatrl.agents.sac.models import Critic
from flatrl.diagnostics import effective_rank, top_k_singular_mass


def feature_rank_metrics(features: Sequence[torch.Tensor], top_k: int) -> dict[str, float]:
    """Per-Q effective rank and top-k singular-value mass, plus their means over the Qs."""
    metrics: dict[str, float] = {}
    ranks, masses = [], []
    for i, feats in enumerate(features, start=1):
        rank = effective_rank(feats)
        mass = top_k_singular_mass(feats, min(top_k, min(feats.shape)))
        metrics[f"repr/q{i}_effective_rank"] = rank
        metrics[f"repr/q{i}_top{top_k}_sv_mass"] = mass
        ranks.append(rank)
        masses.append(mass)
    metrics["repr/q_effective_rank_mean"] = sum(ranks) / len(ranks)
    metrics[f"repr/q_top{top_k}_sv_mass_mean"] = sum(masses) / len(masses)
    return metrics


@torch.no_grad()
def critic_rank_metrics(
    critic: Critic, obs: torch.Tensor, action: torch.Tensor, max_samples: int, top_k: int
) -> dict[str, float]:
    """Rank metrics of ``critic`` on at most ``max_samples`` (obs, action) pairs.

    A diagnostic must not change the run it observes: the critic runs in eval mode, so spectral
    normalisation does not advance its power iteration (its ``u``/``v`` buffers are training
    state), and its previous mode is restored afterwards.
    """
    was_training = critic.training
    critic.eval()
    try:
        feats = critic.features(obs[:max_samples], action[:max_samples])
    finally:
        critic.train(was_training)
    return feature_rank_metrics(feats, top_k)
