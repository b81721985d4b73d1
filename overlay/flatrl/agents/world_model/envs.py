"""Environment construction and checks for the world-model agent.

Everything that can be wrong about the environment (unknown id, missing Box2D, an observation
or action space the agent cannot model) is detected here, before any network is built, so that
a user gets one clear error instead of a stack trace halfway through training.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

BOX2D_HINT = (
    'install the Box2D extra: pip install -c requirements/constraints.txt "swig" '
    '"gymnasium[box2d]==1.0.0" (box2d-py builds with swig; put the environment\'s bin/ on PATH)'
)

# Environments whose gymnasium entry point lives in gymnasium.envs.box2d.
_BOX2D_ENTRY = "gymnasium.envs.box2d"


@dataclass(frozen=True)
class EnvSpec:
    """What the networks need to know about an environment.

    `obs_kind` is "vector" (1-D float observations) or "image" (H x W x 3 uint8 frames);
    `discrete` says whether actions are indices (`n_actions`) or a Box of `action_dim` floats
    rescaled from [-1, 1] to [`action_low`, `action_high`].
    """

    env_id: str
    obs_kind: str
    obs_shape: tuple[int, ...]
    discrete: bool
    n_actions: int
    action_dim: int
    action_low: np.ndarray | None = None
    action_high: np.ndarray | None = None

    @property
    def action_input_dim(self) -> int:
        """Width of the action vector fed to the memory and the reward predictor."""
        return self.n_actions if self.discrete else self.action_dim


def box2d_available() -> bool:
    """True when the Box2D bindings that gymnasium's box2d environments import are present."""
    return importlib.util.find_spec("Box2D") is not None


def check_env_id(env_id: str) -> None:
    """Raise ValueError for an unknown id or for a Box2D environment without Box2D installed."""
    if env_id not in gym.envs.registry:
        close = sorted(k for k in gym.envs.registry if env_id.split("-")[0].lower() in k.lower())
        hint = f" Did you mean one of {close[:5]}?" if close else ""
        raise ValueError(
            f"--env-name {env_id!r} is not a registered gymnasium environment.{hint} "
            "Pass an id from gymnasium.envs.registry, e.g. CartPole-v1 or CarRacing-v3."
        )
    entry = str(gym.envs.registry[env_id].entry_point)
    if entry.startswith(_BOX2D_ENTRY) and not box2d_available():
        raise ValueError(f"--env-name {env_id} needs Box2D, which is not installed: {BOX2D_HINT}.")


def describe_env(env_id: str) -> EnvSpec:
    """Build one instance to read its spaces, and reject spaces the agent cannot handle."""
    check_env_id(env_id)
    env = gym.make(env_id)
    try:
        return spec_from_spaces(env_id, env.observation_space, env.action_space)
    finally:
        env.close()


def spec_from_spaces(env_id: str, obs_space: gym.Space, act_space: gym.Space) -> EnvSpec:
    """Translate gymnasium spaces into an EnvSpec (split out so tests need no simulator)."""
    if not isinstance(obs_space, gym.spaces.Box):
        raise ValueError(
            f"{env_id}: observation space {obs_space} is not a Box; the world model handles "
            "flat vectors and H x W x 3 images only."
        )
    if len(obs_space.shape) == 1:
        obs_kind = "vector"
    elif len(obs_space.shape) == 3 and obs_space.shape[-1] == 3:
        obs_kind = "image"
    else:
        raise ValueError(
            f"{env_id}: observation shape {obs_space.shape} is neither a vector nor an "
            "H x W x 3 image."
        )
    if isinstance(act_space, gym.spaces.Discrete):
        return EnvSpec(env_id, obs_kind, tuple(obs_space.shape), True, int(act_space.n), 1)
    if isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
        low, high = act_space.low.astype(np.float32), act_space.high.astype(np.float32)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError(f"{env_id}: unbounded action space {act_space}; tanh needs bounds.")
        return EnvSpec(
            env_id, obs_kind, tuple(obs_space.shape), False, 0, int(act_space.shape[0]), low, high
        )
    raise ValueError(
        f"{env_id}: action space {act_space} is neither Discrete nor a 1-D Box; "
        "pick an environment with one of those."
    )


def auto_env_count(spec: EnvSpec) -> int:
    """Default for --env-batch-number auto: 16 cheap vector envs, 4 rendered image envs.

    Acting costs about the same per vector step for 8 or 16 small envs (the networks' per-call
    overhead dominates), so 16 halves the cost per env step on CPU.
    """
    return 16 if spec.obs_kind == "vector" else 4


def make_vector_env(env_id: str, num_envs: int, seed: int) -> gym.vector.VectorEnv:
    """A SyncVectorEnv (sub-process workers buy nothing on two cores).

    gymnasium 1.0 resets a finished sub-environment on the *next* step() call: that call ignores
    its action, returns the first observation of the new episode and reward 0. The rollout
    collector marks such steps invalid instead of training on them.
    """
    check_env_id(env_id)
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(num_envs)])
    envs.action_space.seed(seed)
    return envs


def to_env_action(spec: EnvSpec, squashed: np.ndarray) -> np.ndarray:
    """Map the policy output to the env: indices stay indices, tanh outputs are rescaled."""
    if spec.discrete:
        return squashed.astype(np.int64).reshape(-1)
    assert spec.action_low is not None and spec.action_high is not None
    return spec.action_low + (squashed + 1.0) * 0.5 * (spec.action_high - spec.action_low)
