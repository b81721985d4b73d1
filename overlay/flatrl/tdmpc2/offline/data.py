"""Fixed offline datasets of DeepMind Control tasks, collected once and cached.

A dataset is a set of whole episodes in TD-MPC2's own layout (what its online trainer stores
and ``common.buffer.Buffer.load`` takes): ``obs`` ``[E, T+1, obs_dim]``, ``action``
``[E, T+1, action_dim]`` and ``reward`` ``[E, T+1]`` where index 0 of ``action``/``reward`` is
NaN (no action led to the first observation) and ``action[t+1]`` is taken in ``obs[t]``. The
environment is TD-MPC2's (``envs.make_env``: action repeat 2, 500 steps), so observations are
exactly what the online agent sees.

Behaviour policies (per task, on the state vector):

* ``random``: uniform actions in [-1, 1] (TD-MPC2's seed data);
* ``scripted``: a hand-written controller plus Gaussian noise (cartpole: energy pumping,
  then a PD balance near upright; reacher: Jacobian-transpose reaching with damping);
* ``scripted_ou``: the held-out policy, deliberately *different*: the same kind of controller
  at half the gain with temporally correlated (Ornstein-Uhlenbeck) noise, from other
  environment seeds, so held-out errors measure generalisation to another state distribution.

Each dataset is keyed by all of its settings (task, policies, episode counts, noise, seed and
the format version): the file name holds a hash of them, so a change of any setting collects a
new dataset and the same settings always load the same file from
``$FLATRL_CACHE/datasets`` (default ``~/.cache/flatrl/datasets``), written atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flatrl.runtime import atomic_save

FORMAT = "flatrl-tdmpc2-offline-dataset-1"
POLICIES = ("random", "scripted", "scripted_ou")
TASKS = ("cartpole-swingup", "cartpole-balance", "reacher-easy", "reacher-hard")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What to collect: ``episodes`` maps a behaviour policy to its number of episodes."""

    task: str
    episodes: tuple[tuple[str, int], ...]
    noise: float = 0.3  # std of the Gaussian (scripted) / OU (scripted_ou) action noise
    seed: int = 0  # environment and policy seed of the first episode (+1 per episode)

    def key(self) -> str:
        text = json.dumps({"format": FORMAT, **dataclasses.asdict(self)}, sort_keys=True)
        return f"{self.task}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def train_spec(task: str, random: int = 10, scripted: int = 30, noise: float = 0.3) -> DatasetSpec:
    """The training set: seed (random) data plus a noisy scripted behaviour policy."""
    return DatasetSpec(task, (("random", random), ("scripted", scripted)), noise, seed=0)


def heldout_spec(task: str, episodes: int = 10, noise: float = 0.5) -> DatasetSpec:
    """The held-out set: another behaviour policy (``scripted_ou``) from other env seeds."""
    return DatasetSpec(task, (("scripted_ou", episodes),), noise, seed=10_000)


def cache_dir() -> Path:
    root = os.environ.get("FLATRL_CACHE") or Path.home() / ".cache" / "flatrl"
    return Path(root) / "datasets"


# -- behaviour policies ------------------------------------------------------------------------
def _cartpole(gain: float) -> Callable[[np.ndarray], np.ndarray]:
    def act(o: np.ndarray) -> np.ndarray:
        x, cos, sin, x_dot, w = o[:5]
        if cos > 0.8:  # near upright: PD on the pole angle, weak centring of the cart
            return np.array([gain * (20 * sin + 3 * w + 0.5 * x + x_dot)])
        return np.array([-0.6 * gain * np.sign(w * cos + 1e-6)])  # pump energy

    return act


def _reacher(gain: float) -> Callable[[np.ndarray], np.ndarray]:
    link = 0.12

    def act(o: np.ndarray) -> np.ndarray:
        q1, q2, dx, dy, w1, w2 = o[:6]
        s1, c1, s12, c12 = np.sin(q1), np.cos(q1), np.sin(q1 + q2), np.cos(q1 + q2)
        jac = np.array([[-link * (s1 + s12), -link * s12], [link * (c1 + c12), link * c12]])
        return gain * (50 * jac.T @ np.array([dx, dy]) - 0.1 * np.array([w1, w2]))

    return act


CONTROLLERS: dict[str, Callable[[float], Callable[[np.ndarray], np.ndarray]]] = {
    "cartpole": _cartpole,
    "reacher": _reacher,
}


class Behaviour:
    """One behaviour policy for one episode (its own numpy generator, so episodes are
    reproducible one by one)."""

    def __init__(self, policy: str, task: str, action_dim: int, noise: float, seed: int) -> None:
        if policy not in POLICIES:
            raise ValueError(f"behaviour policy {policy!r} is not one of {', '.join(POLICIES)}.")
        domain = task.split("-")[0]
        if policy != "random" and domain not in CONTROLLERS:
            raise ValueError(
                f"no scripted controller for task {task}; scripted data exists for "
                f"{', '.join(TASKS)} (use only 'random' episodes for other tasks)."
            )
        self.policy, self.noise, self.action_dim = policy, noise, action_dim
        self.rng = np.random.RandomState(seed)
        self.controller = (
            CONTROLLERS[domain](0.5 if policy == "scripted_ou" else 1.0)
            if (policy != "random")
            else None
        )
        self.ou = np.zeros(action_dim)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self.controller is None:
            return self.rng.uniform(-1, 1, self.action_dim)
        base = self.controller(obs)
        if self.policy == "scripted":
            return base + self.noise * self.rng.randn(self.action_dim)
        # Ornstein-Uhlenbeck: theta 0.15, stationary std = noise
        self.ou += -0.15 * self.ou + self.noise * np.sqrt(1 - 0.85**2) * self.rng.randn(
            self.action_dim
        )
        return base + self.ou


# -- collection ---------------------------------------------------------------------------------
def _env(task: str, seed: int) -> Any:
    from flatrl.tdmpc2.offline.tree import import_tree, make_cfg

    import_tree()
    from envs import make_env

    cfg = make_cfg(
        {
            "task": task,
            "seed": seed,
            "model_size": 1,
            "device": "cpu",
            "compile": False,
            "enable_wandb": False,
        },
        {},
    )
    return make_env(cfg)


def collect(spec: DatasetSpec, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the behaviour policies; returns the dataset (see the module doc for its layout)."""
    obs_eps, act_eps, rew_eps, policies, returns = [], [], [], [], []
    episode = 0
    for policy, count in spec.episodes:
        for _ in range(count):
            seed = spec.seed + episode
            env = _env(spec.task, seed)  # dm_control draws initial states from the task seed
            behave = Behaviour(policy, spec.task, env.action_space.shape[0], spec.noise, seed)
            obs = [env.reset()]
            actions = [torch.full((env.action_space.shape[0],), float("nan"))]
            rewards = [torch.tensor(float("nan"))]
            done = False
            while not done:
                a = np.clip(behave(obs[-1].numpy()), -1.0, 1.0).astype(np.float32)
                o, r, done, _ = env.step(torch.from_numpy(a))
                obs.append(o)
                actions.append(torch.from_numpy(a))
                rewards.append(r.float())
            obs_eps.append(torch.stack(obs))
            act_eps.append(torch.stack(actions))
            rew_eps.append(torch.stack(rewards))
            policies.append(policy)
            returns.append(float(torch.stack(rewards[1:]).sum()))
            episode += 1
            if progress is not None:
                progress(f"{spec.task} {policy} episode {episode}: return {returns[-1]:.1f}")
    obs_t = torch.stack(obs_eps)
    return {
        "format": FORMAT,
        "spec": dataclasses.asdict(spec),
        "obs": obs_t,
        "action": torch.stack(act_eps),
        "reward": torch.stack(rew_eps),
        "policy": policies,
        "returns": returns,
        "facts": {
            "obs_shape": {"state": tuple(obs_t.shape[2:])},
            "action_dim": int(act_eps[0].shape[-1]),
            "episode_length": int(obs_t.shape[1] - 1),
        },
    }


def load_or_collect(
    spec: DatasetSpec, root: Path | None = None, progress: Callable[[str], None] | None = None
) -> tuple[dict[str, Any], Path]:
    """The cached dataset of ``spec`` (collected and written atomically the first time)."""
    path = (root or cache_dir()) / f"{spec.key()}.pt"
    if path.is_file():
        data = torch.load(path, map_location="cpu", weights_only=False)
        if data.get("format") == FORMAT and data.get("spec") == dataclasses.asdict(spec):
            return data, path
    data = collect(spec, progress)
    atomic_save(data, path)
    return data, path


def as_tensordict(data: dict[str, Any]) -> Any:
    """The episodes as the TensorDict ``[E, T+1]`` that ``Buffer.load`` takes."""
    from tensordict.tensordict import TensorDict

    e, t = data["obs"].shape[:2]
    return TensorDict(
        obs=data["obs"].clone(),
        action=data["action"].clone(),
        reward=data["reward"].clone(),
        terminated=torch.zeros(e, t),
        batch_size=(e, t),
    )
