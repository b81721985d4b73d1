"""Gradient flow, planning, the tanh log-prob correction and the VQ straight-through estimator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from flatrl.agents.world_model.controllers import (
    ImprovedContinuousController,
    ImprovedDiscreteController,
    PlanningModel,
    plan_discrete,
    tanh_log_prob,
)
from flatrl.agents.world_model.memory import TemporalTransformer
from flatrl.agents.world_model.vision import VQVAE, VectorQuantizer
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform


def test_memory_loss_reaches_current_latent_but_not_history():
    torch.manual_seed(0)
    mem = TemporalTransformer(z_dim=6, action_dim=2, d_model=16, n_layers=1, n_heads=2, window=4)
    z_hist = torch.randn(5, 3, 6, requires_grad=True)
    a_hist = torch.zeros(5, 3, 2)
    history = mem.token(z_hist.flatten(0, 1), a_hist.flatten(0, 1)).view(5, 3, 16)
    z_t = torch.randn(5, 6, requires_grad=True)
    a_t = F.one_hot(torch.tensor([0, 1, 0, 1, 1]), 2).float()
    h = mem.hidden(history, mem.token(z_t, torch.zeros(5, 2)), torch.full((5,), 3))
    z_next = torch.randn(5, 6)
    loss = F.mse_loss(mem.predict_next(z_t, a_t, h), z_next)
    loss.backward()
    assert z_t.grad is not None and z_t.grad.abs().sum() > 0
    assert z_hist.grad is None  # history tokens are detached inside hidden()
    # the token projection still learns, through the current step
    assert mem.memory_input_proj.weight.grad.abs().sum() > 0


def test_masked_history_does_not_change_h():
    torch.manual_seed(0)
    mem = TemporalTransformer(z_dim=4, action_dim=2, d_model=8, n_layers=1, n_heads=2, window=4)
    cur = torch.randn(1, 8)
    hist_a, hist_b = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    hist_b[:, 2] = hist_a[:, 2]  # same newest entry, different older ones
    one = torch.tensor([1])
    torch.testing.assert_close(mem.hidden(hist_a, cur, one), mem.hidden(hist_b, cur, one))
    assert not torch.allclose(
        mem.hidden(hist_a, cur, torch.tensor([3])), mem.hidden(hist_b, cur, torch.tensor([3]))
    )


def _hand_model(best: int, n_actions: int = 3) -> tuple[PlanningModel, callable, callable]:
    """Latent = one-hot position; action k moves to state k; only state `best` pays reward 1
    and the value of state `best` is 10. The greedy policy afterwards stays put (action = state)."""

    def dynamics(z, a, h):
        return a.clone()

    def reward(z, h, a):
        return a[:, best]

    def value(z, h):
        return 10.0 * z[:, best]

    def policy_logits(z, h):
        return z * 5.0

    return PlanningModel(dynamics, reward, horizon=3, gamma=0.9), value, policy_logits


def test_discrete_planning_picks_the_best_action_on_a_hand_made_model():
    z = torch.eye(3)[[0, 1, 2, 0]]
    h = torch.zeros(4, 2)
    for best in range(3):
        model, value, logits = _hand_model(best)
        scores = plan_discrete(z, h, 3, model, value, logits)
        assert scores.argmax(-1).tolist() == [best] * 4
        # reward 1 at t=0,1,2 then value 10 at t=3: 1 + .9 + .81 + .729 * 10
        torch.testing.assert_close(scores[0, best], torch.tensor(2.71 + 7.29))


def test_blended_policy_is_the_trained_one():
    torch.manual_seed(0)
    ctrl = ImprovedDiscreteController(in_dim=5, n_actions=3, plan_weight=0.3)
    z, h = torch.randn(4, 3), torch.randn(4, 2)
    plan = torch.tensor([[2.0], [0.0], [-1.0], [1.0]])  # -1: no planner for that row
    action = torch.tensor([2, 1, 0, 1])
    logp, entropy, _ = ctrl.evaluate(z, h, action, plan)
    pi = ctrl.logits(z, h).softmax(-1)
    mix = 0.7 * pi + 0.3 * F.one_hot(plan.view(-1).clamp_min(0).long(), 3).float()
    mix[2] = pi[2]
    torch.testing.assert_close(logp, mix[torch.arange(4), action].log())
    torch.testing.assert_close(entropy, -(mix * mix.log()).sum(-1))
    logp.sum().backward()  # the policy network is what gets the gradient
    assert ctrl.policy[0].weight.grad.abs().sum() > 0


def test_tanh_log_prob_matches_transformed_distribution():
    torch.manual_seed(0)
    mu, log_std = torch.randn(64, 3), torch.randn(64, 3) * 0.5
    u = mu + log_std.exp() * torch.randn(64, 3)
    ref = TransformedDistribution(Normal(mu, log_std.exp()), [TanhTransform()])
    expected = ref.log_prob(torch.tanh(u)).sum(-1)
    torch.testing.assert_close(tanh_log_prob(u, mu, log_std), expected, rtol=1e-4, atol=1e-4)


def test_continuous_controller_evaluates_the_action_it_sampled():
    torch.manual_seed(0)
    ctrl = ImprovedContinuousController(in_dim=6, action_dim=2, plan_weight=0.3)
    z, h = torch.randn(5, 4), torch.randn(5, 2)
    model = PlanningModel(lambda z, a, h: z, lambda z, h, a: -(a**2).sum(-1), 2, 0.9)
    res = ctrl.act(z, h, model, deterministic=False)
    assert res.env_action.abs().max() < 1 and not torch.isnan(res.plan).any()
    logp, _, _ = ctrl.evaluate(z, h, res.action, res.plan)
    mu, log_std = ctrl.mean_log_std(z, h)
    mean = 0.7 * mu + 0.3 * res.plan
    ref = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()])
    torch.testing.assert_close(logp, ref.log_prob(res.env_action).sum(-1), rtol=1e-3, atol=1e-3)


def test_vq_straight_through_passes_gradient_to_encoder():
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=8, code_dim=4)
    z_e = torch.randn(10, 4, requires_grad=True)
    z_q, vq_loss, idx = vq(z_e)
    torch.testing.assert_close(z_q, vq.codebook(idx))  # forward value: the nearest codes
    (z_q * torch.arange(4.0)).sum().backward()
    # straight-through: d(z_q)/d(z_e) is the identity
    torch.testing.assert_close(z_e.grad, torch.arange(4.0).expand(10, 4))
    model = VQVAE(z_dim=8, num_codes=16, code_dim=4)
    frames = torch.randint(0, 255, (2, 96, 96, 3), dtype=torch.uint8)
    out = model(frames)
    out.recon_loss.backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0
    assert out.vq_loss > 0
