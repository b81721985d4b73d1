"""DMC wrapper (flattening, action repeat, RNG state) and the torchrl replay memory's save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flatrl.agents.sac.buffer import ReplayMemory
from flatrl.agents.sac.env import DMCEnv, parse_task


def _rollout(env: DMCEnv, actions: np.ndarray) -> tuple[list[float], int, bool]:
    env.reset()
    rewards, steps, done = [], 0, False
    for a in actions:
        _, r, terminated, done = env.step(a)
        assert not terminated  # DMC time limits never cut the bootstrap
        rewards.append(r)
        steps += 1
        if done:
            break
    return rewards, steps, done


def test_action_repeat_sums_rewards_and_shortens_episodes() -> None:
    actions = np.random.default_rng(0).uniform(-1, 1, (1000, 1))
    env1 = DMCEnv("cartpole-balance", seed=3, action_repeat=1)
    env4 = DMCEnv("cartpole-balance", seed=3, action_repeat=4)
    assert env1.obs_dim == 5 and env1.action_dim == 1
    r1, n1, _ = _rollout(env1, np.repeat(actions[:250], 4, axis=0))
    r4, n4, done = _rollout(env4, actions[:250])
    assert (n1, n4, done) == (1000, 250, True)
    assert sum(r4) == pytest.approx(sum(r1))
    assert r4[0] == pytest.approx(sum(r1[:4]))


def test_task_rng_state_fixes_the_next_reset() -> None:
    env = DMCEnv("cartpole-swingup", seed=0)
    state = env.rng_state()
    first = env.reset()
    assert not np.array_equal(first, env.reset())
    env.set_rng_state(state)
    np.testing.assert_array_equal(env.reset(), first)
    assert env.reset().dtype == np.float32


def test_parse_task_handles_underscored_domains() -> None:
    assert parse_task("ball_in_cup-catch") == ("ball_in_cup", "catch")
    with pytest.raises(ValueError, match="domain-task"):
        parse_task("walker_walk")


def test_replay_memory_roundtrip_continues_the_same_samples(tmp_path: Path) -> None:
    mem = ReplayMemory(capacity=50, batch_size=8, seed=1)
    for i in range(70):  # wraps around the ring buffer
        mem.add(np.full(3, i), np.full(2, -i), float(i), np.full(3, i + 1), i % 10 == 9)
    assert len(mem) == 50
    mem.save(tmp_path / "rb")
    expected = [mem.sample() for _ in range(3)]
    restored = ReplayMemory(capacity=50, batch_size=8, seed=999)
    restored.load(tmp_path / "rb")
    for want in expected:
        got = restored.sample()
        for key in want:
            np.testing.assert_array_equal(got[key].numpy(), want[key].numpy())
    batch = expected[0]
    assert batch["obs"].min() >= 20  # the oldest 20 transitions were overwritten
    np.testing.assert_array_equal(batch["next_obs"][:, 0], batch["obs"][:, 0] + 1)
    np.testing.assert_array_equal(
        batch["not_done"][:, 0].numpy(), (batch["reward"][:, 0].numpy() % 10 != 9).astype(float)
    )


def test_replay_memory_rejects_capacity_below_batch() -> None:
    with pytest.raises(ValueError, match="replay_capacity=4"):
        ReplayMemory(capacity=4, batch_size=8, seed=0)
