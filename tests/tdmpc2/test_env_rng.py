"""The environment's own random generators are found, saved and restored (exact resumes)."""

from __future__ import annotations

import numpy as np
import pytest

env_rng = pytest.importorskip("flatrl.tdmpc2.env_rng", reason="flatrl is not installed")
gym = pytest.importorskip("gymnasium", reason="gymnasium is not installed")


class _Task:
    def __init__(self, seed: int) -> None:
        self._random = np.random.RandomState(seed)


class _SlotsWrapper:
    """Like dm_control's action_scale.Wrapper: attributes in __slots__, no __dict__."""

    __slots__ = ("_env",)

    def __init__(self, env: object) -> None:
        self._env = env


class _Env:
    def __init__(self, seed: int) -> None:
        self._task = _Task(seed)


class _Outer:
    def __init__(self, seed: int) -> None:
        self.env = _SlotsWrapper(_Env(seed))
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)


def _draws(env: _Outer) -> tuple[float, list[float]]:
    task = env.env._env._task
    return float(task._random.uniform()), env.action_space.sample().tolist()


def test_generators_behind_slots_and_spaces_are_restored():
    env = _Outer(seed=3)
    env_rng.seed_action_space(env, 7)
    assert set(env_rng.env_rng_state(env)) == {
        "env.env._env._task._random",
        "env.action_space._np_random",
    }
    state = env_rng.env_rng_state(env)
    first = _draws(env)
    other = _Outer(seed=99)
    env_rng.seed_action_space(other, 99)
    env_rng.set_env_rng_state(other, state)
    assert _draws(other) == first  # a fresh environment continues the saved streams


def test_seeded_action_space_is_reproducible():
    a, b = _Outer(seed=0), _Outer(seed=0)
    for env in (a, b):
        env_rng.seed_action_space(env, 1)
    assert _draws(a) == _draws(b)


def test_other_environment_is_refused():
    env = _Outer(seed=0)
    env_rng.seed_action_space(env, 1)
    state = env_rng.env_rng_state(env)
    with pytest.raises(ValueError, match="random generators differ"):
        env_rng.set_env_rng_state(_Outer(seed=0), state)  # action space never seeded
