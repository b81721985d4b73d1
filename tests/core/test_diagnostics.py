"""effective_rank, top_k_singular_mass and first_order_sharpness against known answers."""

from __future__ import annotations

import math

import pytest
import torch
from flatrl.diagnostics import effective_rank, first_order_sharpness, top_k_singular_mass
from flatrl.optim import SAM
from torch import nn

torch.set_num_threads(1)


def matrix_with_spectrum(
    n: int, d: int, singular_values: list[float], seed: int = 0
) -> torch.Tensor:
    """U diag(s) V' with random orthonormal U [n, r] and V [d, r]."""
    g = torch.Generator().manual_seed(seed)
    r = len(singular_values)
    u, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))
    return (u * torch.tensor(singular_values, dtype=torch.float64)) @ v.T


@pytest.mark.parametrize("k", [1, 3, 7])
def test_rank_k_with_equal_singular_values_has_effective_rank_k(k: int) -> None:
    features = matrix_with_spectrum(64, 16, [2.5] * k).float()
    assert effective_rank(features) == pytest.approx(k, abs=1e-4)
    assert top_k_singular_mass(features, k) == pytest.approx(1.0, abs=1e-5)


def test_random_rank_k_matrix_is_about_k() -> None:
    g = torch.Generator().manual_seed(0)
    k = 5
    features = torch.randn(200, k, generator=g) @ torch.randn(k, 32, generator=g)
    erank = effective_rank(features)
    assert k - 1.0 < erank <= k + 1e-4


@pytest.mark.parametrize("n", [1, 4, 10])
def test_identity_has_effective_rank_n(n: int) -> None:
    assert effective_rank(torch.eye(n)) == pytest.approx(n, rel=1e-6)


def test_effective_rank_follows_entropy_formula() -> None:
    s = [4.0, 2.0, 1.0, 1.0]
    p = [x / sum(s) for x in s]
    expected = math.exp(-sum(q * math.log(q) for q in p))
    assert effective_rank(matrix_with_spectrum(10, 6, s)) == pytest.approx(expected, rel=1e-9)
    assert top_k_singular_mass(matrix_with_spectrum(10, 6, s), 2) == pytest.approx(0.75)


def test_degenerate_and_bad_inputs() -> None:
    assert effective_rank(torch.zeros(5, 3)) == 0.0
    assert math.isnan(top_k_singular_mass(torch.zeros(5, 3), 1))
    assert top_k_singular_mass(torch.eye(3), 10) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2-D"):
        effective_rank(torch.ones(3))
    with pytest.raises(ValueError, match="k must be"):
        top_k_singular_mass(torch.eye(3), 0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        effective_rank([[1.0, 0.0]])


def test_features_with_grad_are_fine() -> None:
    features = torch.randn(8, 4, requires_grad=True)
    assert 1.0 <= effective_rank(features) <= 4.0


def test_first_order_sharpness_is_rho_times_grad_norm() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    unused = nn.Parameter(torch.ones(3))
    assert first_order_sharpness(net.parameters(), 0.1) == 0.0
    net(torch.randn(5, 3)).pow(2).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in net.parameters()])
    expected = 0.1 * grads.norm().item()
    params = [*net.parameters(), unused]
    assert first_order_sharpness(params, 0.1) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="rho must be >= 0"):
        first_order_sharpness(params, -1.0)
    # SAM records the same norm when it perturbs every parameter without ASAM scaling
    sam = SAM(net.parameters(), base=torch.optim.SGD, rho=0.1, lr=0.0)
    sam.step(lambda: net(torch.randn(5, 3)).pow(2).sum())
    assert 0.1 * sam.last_grad_norm == pytest.approx(expected, rel=1e-6)
