"""Shared setup: one thread (the machine is shared) and a tiny deterministic env."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

TIMING_ENV = "FlatrlRewardTiming-v0"


class RewardTimingEnv(gym.Env):
    """Reward of step t is the action taken at step t; episodes end after 3 steps.

    The 2nd episode of each env ends by time limit (truncation) instead of termination, so
    both kinds of episode end are exercised.
    """

    observation_space = gym.spaces.Box(-10, 10, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.episode = getattr(self, "episode", -1) + 1
        return np.array([0.0, self.episode], np.float32), {}

    def step(self, action):
        self.t += 1
        reward = float(action)
        end = self.t >= 3
        terminated = end and self.episode % 2 == 0
        truncated = end and not terminated
        return np.array([self.t, self.episode], np.float32), reward, terminated, truncated, {}


if TIMING_ENV not in gym.envs.registry:
    gym.register(TIMING_ENV, entry_point=RewardTimingEnv)


@pytest.fixture
def timing_env_id() -> str:
    return TIMING_ENV


def _tiny_cartpole(save_path, log_dir, *extra: str) -> list[str]:
    return [
        "--env-name",
        "CartPole-v1",
        "--n-steps",
        "8",
        "--env-batch-number",
        "2",
        "--z-dim",
        "8",
        "--memory-window",
        "2",
        "--memory-layers",
        "1",
        "--planning-horizon",
        "0",
        "--device",
        "cpu",
        "--no-progress",
        "--save-path",
        str(save_path) + "/",
        "--log-dir",
        str(log_dir),
        *extra,
    ]


@pytest.fixture(scope="session")
def tiny_cartpole():
    """`tiny_cartpole(save_path, log_dir, *extra)`: CLI arguments of a CartPole run small enough
    for a test (2 envs x 8 steps per epoch, 8-dim latent, a 2-step memory window, no planning,
    CPU)."""
    return _tiny_cartpole
