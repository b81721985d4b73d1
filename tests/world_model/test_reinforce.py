"""Without --use-a2c the update is what the docs say: REINFORCE with a value baseline on
Monte-Carlo returns (no bootstrapping), one pass per rollout, no PPO clip; flags that ask for
rollout reuse, a clip or GAE are refused instead of being silently applied."""

from __future__ import annotations

import pytest
import torch
from flatrl.agents.world_model.a2c import (
    A2CConfig,
    advantages_and_returns,
    encode_rollout,
    minibatch_loss,
    monte_carlo_returns,
    rollout_values,
)
from flatrl.agents.world_model.checkpoint import load
from flatrl.agents.world_model.cli import parse_config
from flatrl.agents.world_model.envs import describe_env, make_vector_env
from flatrl.agents.world_model.rollout import RolloutCollector
from flatrl.agents.world_model.train import a2c_config, train
from flatrl.agents.world_model.world_model import ModelConfig, WorldModel

CARTPOLE = ["--env-name", "CartPole-v1"]


@pytest.mark.parametrize(
    "flags",
    [["--clip-range", "0.2"], ["--update-epochs", "2"], ["--gae-lambda", "0.95"]],
)
def test_a2c_only_flags_without_use_a2c_are_refused(flags):
    with pytest.raises(ValueError, match=f"{flags[0]} need --use-a2c"):
        parse_config([*CARTPOLE, *flags])
    parse_config([*CARTPOLE, "--use-a2c", *flags])  # fine with A2C


def test_reinforce_defaults_and_consistent_flags():
    hp = a2c_config(parse_config([*CARTPOLE, "--update-epochs", "1", "--clip-range", "0"]))
    assert hp.reinforce and hp.update_epochs == 1 and hp.clip_range == 0
    a2c = a2c_config(parse_config([*CARTPOLE, "--use-a2c"]))
    assert not a2c.reinforce
    assert (a2c.update_epochs, a2c.clip_range, a2c.gae_lambda) == (4, 0.2, 0.95)
    with pytest.raises(ValueError, match="one pass per rollout"):
        A2CConfig(reinforce=True, update_epochs=4, clip_range=0.0)


def test_reinforce_run_takes_one_pass_per_rollout(tiny_cartpole, tmp_path):
    """One epoch = one pass in --num-minibatches (default 4) Adam steps, not 4 x 4."""
    result = train(parse_config(tiny_cartpole(tmp_path, tmp_path / "runs", "--max-epoch", "1")))
    state = load(result.last_checkpoint, torch.device("cpu"))
    steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {4}
    assert result.last_checkpoint.endswith("last_CartPole-v1_legacy_reinforce_adam_s0.pt")


def test_monte_carlo_returns_by_hand():
    gamma = 0.5
    # env 0: a time-limit end at t1 (no bootstrap), autoreset at t2, then an episode still
    #        running when the rollout ends at t3 (no bootstrap either).
    # env 1: terminates at t0, autoreset at t1, then t2..t3 running.
    rewards = torch.tensor([[1.0, 4.0], [2.0, 0.0], [0.0, 1.0], [3.0, 2.0]])
    dones = torch.tensor([[False, True], [True, False], [False, False], [False, False]])
    valid = torch.tensor([[True, True], [True, False], [False, True], [True, True]])
    ret = monte_carlo_returns(rewards, dones, valid, gamma)
    expected = torch.tensor([[1 + 0.5 * 2, 4.0], [2.0, 0.0], [0.0, 1 + 0.5 * 2], [3.0, 2.0]])
    torch.testing.assert_close(ret, expected)


def _rollout(timing_env_id):
    torch.manual_seed(0)
    spec = describe_env(timing_env_id)
    model = WorldModel(
        spec,
        ModelConfig(z_dim=8, d_model=16, memory_window=2, memory_heads=2, planning_horizon=0),
    )
    envs = make_vector_env(timing_env_id, 2, seed=0)
    collector = RolloutCollector(envs, model, 10, torch.device("cpu"), seed=0, gamma=0.9)
    collector.collect()
    rollout = collector.collect()
    envs.close()
    return model, rollout


def test_reinforce_never_reads_a_bootstrap_value(timing_env_id):
    """Changing V of the observation after the rollout (and after time limits) changes A2C's
    targets but not REINFORCE's."""
    model, rollout = _rollout(timing_env_id)
    z_all, tok_all = encode_rollout(model, rollout)
    values, _ = rollout_values(model, rollout, z_all, tok_all)
    other = values.clone()
    other[-1] += 100.0  # the bootstrap slot after the rollout's last step
    other[1:][rollout.truncated] += 100.0  # final observations of time-limited episodes
    reinforce = A2CConfig(gamma=0.9, reinforce=True, update_epochs=1, clip_range=0.0)
    a2c = A2CConfig(gamma=0.9)
    assert rollout.truncated.any()
    for v in (values, other):
        adv, ret = advantages_and_returns(rollout, v, reinforce)
        mc = monte_carlo_returns(rollout.scaled_rewards, rollout.dones, rollout.valid, 0.9)
        torch.testing.assert_close(ret, mc)
        torch.testing.assert_close(adv, (mc - v[:-1]) * rollout.valid)
    _, ret_a = advantages_and_returns(rollout, values, a2c)
    _, ret_b = advantages_and_returns(rollout, other, a2c)
    assert not torch.allclose(ret_a, ret_b)


def test_reinforce_policy_loss_has_no_ratio_and_no_clip(timing_env_id):
    """Even where the behaviour log-prob differs (ratio far from 1), the REINFORCE policy loss
    is -(log pi(a|s) * A): no importance ratio, no clip."""
    model, rollout = _rollout(timing_env_id)
    z_all, tok_all = encode_rollout(model, rollout)
    _, old_logp = rollout_values(model, rollout, z_all, tok_all)
    t, e = rollout.valid.nonzero(as_tuple=True)
    adv = torch.randn_like(rollout.rewards)
    ones = torch.ones_like(rollout.rewards)
    cfg = A2CConfig(reinforce=True, update_epochs=1, clip_range=0.0)
    _, parts = minibatch_loss(model, rollout, t, e, adv, ones, old_logp - 1.0, z_all, tok_all, cfg)
    _, parts_same = minibatch_loss(model, rollout, t, e, adv, ones, old_logp, z_all, tok_all, cfg)
    # log pi at the current weights equals the behaviour's (no update yet)
    expected = -(old_logp[t, e] * adv[t, e]).mean()
    torch.testing.assert_close(parts["policy_loss"], expected)
    torch.testing.assert_close(parts_same["policy_loss"], expected)
