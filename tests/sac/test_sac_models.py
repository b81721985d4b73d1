"""The networks: tanh-Gaussian log-probabilities, log_std bounds, residual/norm options."""

from __future__ import annotations

import pytest
import torch
from flatrl.agents.sac.models import Actor, Critic, MLPConfig
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform


def test_tanh_gaussian_log_prob_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    actor = Actor(5, 3, MLPConfig(hidden_dim=16), log_std_min=-3.0, log_std_max=0.5).double()
    obs = torch.randn(64, 5, dtype=torch.float64)
    action, logp = actor.sample(obs)
    mean, log_std = actor(obs)
    dist = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()])
    expected = dist.log_prob(action.clamp(-1 + 1e-12, 1 - 1e-12)).sum(-1, keepdim=True)
    assert logp.shape == (64, 1)
    torch.testing.assert_close(logp, expected, rtol=1e-6, atol=1e-6)
    assert torch.all((log_std >= -3.0) & (log_std <= 0.5))
    assert torch.all(action.abs() < 1)


def test_deterministic_action_is_tanh_of_mean() -> None:
    actor = Actor(4, 2, MLPConfig(hidden_dim=8))
    obs = torch.randn(3, 4)
    torch.testing.assert_close(actor.act(obs, deterministic=True), torch.tanh(actor(obs)[0]))


def test_residual_layers_add_their_input() -> None:
    torch.manual_seed(0)
    cfg = MLPConfig(hidden_dim=8, num_layers=3, residual=True)
    critic = Critic(4, 2, cfg)
    with torch.no_grad():
        for fc in critic.q1.fcs[1:]:
            fc.weight.zero_()
            fc.bias.fill_(-1.0)  # relu(-1) = 0: the residual branches contribute nothing
    obs, act = torch.randn(5, 4), torch.randn(5, 2)
    first = torch.relu(critic.q1.fcs[0](torch.cat([obs, act], -1)))
    torch.testing.assert_close(critic.features(obs, act)[0], first)


@pytest.mark.parametrize("norm", ["layernorm", "l2"])
def test_activation_norms(norm: str) -> None:
    mlp_cfg = MLPConfig(hidden_dim=16, num_layers=1, norm=norm)
    actor = Actor(6, 2, mlp_cfg)
    x = torch.randn(10, 6) * 50
    pre = actor.norms[0](actor.fcs[0](x))
    if norm == "l2":
        torch.testing.assert_close(pre.norm(dim=-1), torch.ones(10))
    else:
        torch.testing.assert_close(pre.mean(-1), torch.zeros(10), atol=1e-5, rtol=0)


def test_spectral_norm_bounds_hidden_layers_only() -> None:
    torch.manual_seed(0)
    critic = Critic(4, 2, MLPConfig(hidden_dim=16, num_layers=2, spectral_norm=True))
    for _ in range(30):  # power iteration converges in training-mode forwards
        critic(torch.randn(8, 4), torch.randn(8, 2))
    hidden = critic.q1.fcs[1].weight
    assert float(torch.linalg.matrix_norm(hidden.detach(), ord=2)) == pytest.approx(1.0, rel=1e-2)
    assert not hasattr(critic.q1.fcs[0], "parametrizations")


def test_bad_model_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="model.norm='batch'"):
        MLPConfig(norm="batch")
    with pytest.raises(ValueError, match="must be >= 1"):
        MLPConfig(num_layers=0)
