"""flatrl.distributions: the tanh-squashed Gaussian's log-density, one helper for every policy."""

from __future__ import annotations

import math

import pytest
import torch
from flatrl.distributions import tanh_log_abs_det_jacobian, tanh_normal_log_prob
from torch.distributions import Normal, TanhTransform, TransformedDistribution

torch.set_num_threads(1)


def _params(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(16, 3, generator=g, dtype=dtype)
    log_std = torch.rand(16, 3, generator=g, dtype=dtype) * 2 - 1.5
    return mean, log_std


def test_matches_torch_transformed_distribution() -> None:
    mean, log_std = _params()
    u = Normal(mean, log_std.exp()).sample()
    expected = TransformedDistribution(Normal(mean, log_std.exp()), TanhTransform())
    want = expected.log_prob(torch.tanh(u)).sum(-1)
    got = tanh_normal_log_prob(u, mean, log_std)
    assert got.shape == (16,)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_noise_gives_the_reparameterised_form() -> None:
    mean, log_std = _params()
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1), dtype=mean.dtype)
    u = mean + log_std.exp() * noise
    with_noise = tanh_normal_log_prob(u, mean, log_std, noise=noise)
    torch.testing.assert_close(with_noise, tanh_normal_log_prob(u, mean, log_std))
    # exactly the arithmetic of a reparameterised sampler that keeps its noise
    gaussian = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert torch.equal(with_noise, gaussian - tanh_log_abs_det_jacobian(u).sum(-1))


@pytest.mark.parametrize("u", [9.5, 20.0, -30.0])
def test_saturated_actions_keep_a_finite_log_prob_and_gradient(u: float) -> None:
    pre = torch.full((1, 2), u, dtype=torch.float32, requires_grad=True)
    naive = torch.log(1 - torch.tanh(pre.detach()) ** 2)
    assert torch.isinf(naive).all()  # what the textbook form gives in float32
    jac = tanh_log_abs_det_jacobian(pre)
    exact = 2 * (math.log(2) - abs(u) - math.log1p(math.exp(-2 * abs(u))))
    torch.testing.assert_close(jac, torch.full_like(jac, exact))
    logp = tanh_normal_log_prob(pre, torch.zeros(1, 2), torch.zeros(1, 2))
    logp.sum().backward()
    assert torch.isfinite(logp).all() and torch.isfinite(pre.grad).all()
