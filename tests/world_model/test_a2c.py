"""GAE/returns by hand, and that rollouts pair reward t with action t across autoresets."""

from __future__ import annotations

import pytest
import torch
from flatrl.agents.world_model.a2c import compute_gae
from flatrl.agents.world_model.envs import describe_env, make_vector_env
from flatrl.agents.world_model.rollout import RolloutCollector
from flatrl.agents.world_model.world_model import ModelConfig, WorldModel


def test_gae_matches_hand_computation_with_dones():
    gamma, lam = 0.9, 0.8
    # env 0: t1 ends by time limit (bootstrap from the final obs, no chaining), t2 is the
    #        autoreset slot (invalid), t3 is a normal step of the next episode.
    # env 1: t1 terminates (no bootstrap), t2 autoreset, t3 normal.
    rewards = torch.tensor([[1.0, 1.0], [1.0, 2.0], [0.0, 0.0], [1.0, 3.0]])
    values = torch.tensor([[0.5, 1.0], [0.6, 1.5], [9.0, 9.0], [0.8, 0.2]])
    next_values = torch.tensor([[0.6, 1.5], [2.0, 7.0], [9.0, 9.0], [1.0, 0.5]])
    terminated = torch.tensor([[False, False], [False, True], [False, False], [False, False]])
    truncated = torch.tensor([[False, False], [True, False], [False, False], [False, False]])
    valid = torch.tensor([[True, True], [True, True], [False, False], [True, True]])
    adv, ret = compute_gae(
        rewards, values, next_values, terminated, terminated | truncated, valid, gamma, lam
    )
    # env 0: d3 = 1 + .9*1 - .8 = 1.1; d1 = 1 + .9*2 - .6 = 2.2 (no chain past the end);
    #        d0 = 1 + .9*.6 - .5 = 1.04; A0 = 1.04 + .72*2.2 = 2.624
    # env 1: d3 = 3 + .9*.5 - .2 = 3.25; d1 = 2 - 1.5 = 0.5 (terminated: no bootstrap of 7.0);
    #        d0 = 1 + .9*1.5 - 1 = 1.35; A0 = 1.35 + .72*.5 = 1.71
    expected = torch.tensor([[2.624, 1.71], [2.2, 0.5], [0.0, 0.0], [1.1, 3.25]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)


def test_gae_lambda_one_is_discounted_return_minus_value():
    rewards = torch.ones(5, 1)
    values = torch.zeros(5, 1)
    nxt = torch.zeros(5, 1)
    done = torch.zeros(5, 1, dtype=torch.bool)
    done[-1] = True
    adv, _ = compute_gae(rewards, values, nxt, done, done, torch.ones_like(done), 0.5, 1.0)
    torch.testing.assert_close(adv[:, 0], torch.tensor([1.9375, 1.875, 1.75, 1.5, 1.0]))


@pytest.mark.parametrize("window", [1, 4])
def test_rollout_pairs_reward_with_its_action_across_autoreset(timing_env_id, window):
    torch.manual_seed(0)
    spec = describe_env(timing_env_id)
    model = WorldModel(
        spec,
        ModelConfig(z_dim=8, d_model=16, memory_window=window, memory_heads=2, planning_horizon=2),
    )
    envs = make_vector_env(timing_env_id, 2, seed=0)
    collector = RolloutCollector(
        envs, model, n_steps=12, device=torch.device("cpu"), seed=0, gamma=0.99
    )
    r = collector.collect()
    c = r.context
    # every 4th slot (3 steps + the autoreset step) is invalid; the env rewards the action
    assert r.valid[:, 0].tolist() == [True, True, True, False] * 3
    ok = r.valid
    torch.testing.assert_close(r.rewards[ok], r.actions[ok].float())
    assert (r.rewards[~ok] == 0).all()
    # episode ends sit on every 3rd step; episodes 0 and 2 terminate, episode 1 truncates
    end = [False, False, True, False]
    assert r.terminated[:, 0].tolist() == end + [False] * 4 + end
    assert r.truncated[:, 0].tolist() == [False] * 6 + [True] + [False] * 5
    # the obs after a done step is the final obs (t=3); the slot after the autoreset starts over
    assert r.obs[c + 3, 0, 0] == 3 and r.obs[c + 4, 0, 0] == 0
    assert r.hist_len[c + 4, 0] == 0 and r.hist_len[c + 3, 0] == min(3, c)
    assert (r.prev_action[c + 4] == 0).all()
    torch.testing.assert_close(
        r.prev_action[c + 1, 0], torch.nn.functional.one_hot(r.actions[0, 0], 2).float()
    )
    # a second rollout continues the same stream (context carried over)
    r2 = collector.collect()
    assert r2.obs[c, 0, 0] == r.obs[c + 12, 0, 0]
    envs.close()


def test_training_windows_reproduce_the_behaviour_log_prob(timing_env_id):
    """Before any update the ratio pi/pi_behaviour is 1 on every transition: the memory
    windows rebuilt for training match the ones the rollout was scored with, so the first
    gradient step is exactly A2C's -(log pi * A)."""
    from flatrl.agents.world_model.a2c import (
        A2CConfig,
        encode_rollout,
        minibatch_loss,
        rollout_values,
    )

    torch.manual_seed(0)
    spec = describe_env(timing_env_id)
    model = WorldModel(
        spec, ModelConfig(z_dim=8, d_model=16, memory_window=4, memory_heads=2, planning_horizon=2)
    )
    envs = make_vector_env(timing_env_id, 3, seed=1)
    collector = RolloutCollector(envs, model, 10, torch.device("cpu"), seed=1, gamma=0.99)
    collector.collect()
    r = collector.collect()  # the second rollout starts with a carried-over history
    z_all, tok_all = encode_rollout(model, r)
    values, old_logp = rollout_values(model, r, z_all, tok_all)
    t, e = r.valid.nonzero(as_tuple=True)
    ones = torch.ones_like(r.rewards)
    _, parts = minibatch_loss(
        model, r, t, e, ones, ones, old_logp, z_all, tok_all, A2CConfig(clip_range=0.0)
    )
    torch.testing.assert_close(parts["policy_loss"], torch.tensor(-1.0))
    assert values.shape == (11, 3)
    envs.close()
