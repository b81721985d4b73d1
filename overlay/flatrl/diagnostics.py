"""Cheap numbers that tell whether training went flat or collapsed.

* ``effective_rank``: how many directions a batch of features really spans (Roy & Vetterli,
  2007), the usual probe for representation collapse in deep RL.
* ``top_k_singular_mass``: the share of the spectrum held by the top k directions.
* ``first_order_sharpness``: ``rho * ||grad L||``, the first-order estimate of
  ``max_{||e|| <= rho} L(w + e) - L(w)`` that the paper's bounds use.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def _singular_values(features: Tensor) -> Tensor:
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a torch.Tensor of shape [N, D], got {type(features)}.")
    if features.ndim != 2:
        raise ValueError(
            f"features must be 2-D [N, D], got shape {tuple(features.shape)}; flatten the "
            "batch dimensions first (features.reshape(-1, D))."
        )
    with torch.no_grad():
        return torch.linalg.svdvals(features.detach().to(torch.float64))


def effective_rank(features: Tensor) -> float:
    """``exp(H(p))`` with ``p`` the singular values normalised to sum 1 (Roy & Vetterli, 2007).

    A matrix with k equal non-zero singular values has effective rank k; the identity of size
    n has n. An all-zero matrix spans nothing and gives 0.
    """
    s = _singular_values(features)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    entropy = -(p * p.log()).sum()
    return float(entropy.exp())


def top_k_singular_mass(features: Tensor, k: int) -> float:
    """Sum of the k largest singular values over the sum of all (NaN for an all-zero matrix)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}.")
    s = _singular_values(features)
    total = s.sum()
    if total <= 0:
        return float("nan")
    return float(s[:k].sum() / total)


def first_order_sharpness(params: Iterable[Tensor], rho: float) -> float:
    """``rho * ||g||`` with ``g`` the gradients of ``params`` that have one (0 if none has)."""
    if not rho >= 0:
        raise ValueError(f"rho must be >= 0, got {rho}.")
    norms = [p.grad.detach().norm(p=2) for p in params if p.grad is not None]
    if not norms:
        return 0.0
    device = norms[0].device
    return float(rho * torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms])))
