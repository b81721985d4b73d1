"""DeepMind Control tasks as flat-vector environments with action repeat.

The agent sees state observations only, so no renderer is needed: unless the user chose one,
``MUJOCO_GL`` is set to ``disable`` before dm_control is imported (headless machines and
SLURM nodes have no display, and EGL is only worth it for pixels).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

os.environ.setdefault("MUJOCO_GL", "disable")

from dm_control import suite  # noqa: E402  (must follow the MUJOCO_GL default above)


def parse_task(task: str) -> tuple[str, str]:
    """Split ``domain-task`` (e.g. ``cheetah-run``, ``ball_in_cup-catch``) and check it exists."""
    domain, sep, name = task.partition("-")
    if not sep or (domain, name) not in suite.ALL_TASKS:
        known = ", ".join(sorted(f"{d}-{t}" for d, t in suite.BENCHMARKING))
        raise ValueError(
            f"env.task={task!r} is not a DeepMind Control task; write it as 'domain-task' with "
            f"one of: {known}."
        )
    return domain, name


class DMCEnv:
    """One dm_control task with flattened float32 observations and summed-reward action repeat.

    Actions are taken in [-1, 1] (the tanh policy's range) and rescaled to the task's bounds.
    ``terminated`` is true only when dm_control reports a zero discount; the time limit ends an
    episode (``done``) without cutting the bootstrap, as SAC on DMC expects.
    """

    def __init__(self, task: str, seed: int, action_repeat: int = 1) -> None:
        if action_repeat < 1:
            raise ValueError(f"env.action_repeat must be >= 1, got {action_repeat}.")
        domain, name = parse_task(task)
        self.task_name = task
        self.action_repeat = action_repeat
        self._env = suite.load(domain, name, task_kwargs={"random": seed})
        spec = self._env.action_spec()
        self._low = spec.minimum.astype(np.float64)
        self._high = spec.maximum.astype(np.float64)
        self.action_dim = int(spec.shape[0])
        self.obs_dim = int(
            sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values())
        )

    @staticmethod
    def _flatten(observation: dict[str, np.ndarray]) -> np.ndarray:
        parts = [np.asarray(v, dtype=np.float32).reshape(-1) for v in observation.values()]
        return np.concatenate(parts)

    def reset(self) -> np.ndarray:
        return self._flatten(self._env.reset().observation)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        """Returns ``(obs, reward, terminated, done)``; ``done`` covers the time limit too."""
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        scaled = self._low + (action + 1.0) * 0.5 * (self._high - self._low)
        reward = 0.0
        for _ in range(self.action_repeat):
            ts = self._env.step(scaled)
            reward += float(ts.reward or 0.0)
            if ts.last():
                break
        terminated = bool(ts.last() and ts.discount == 0.0)
        return self._flatten(ts.observation), reward, terminated, bool(ts.last())

    def rng_state(self) -> dict[str, Any]:
        """The task's RNG state: together with an episode boundary it fixes all future resets."""
        return {"task_random": self._env.task.random.get_state()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self._env.task.random.set_state(state["task_random"])
