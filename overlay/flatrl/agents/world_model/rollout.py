"""n-step rollouts from a gymnasium 1.0 vector env, with correct timing and masks.

Slot layout per environment: `C = window - 1` context slots carried over from the previous
rollout (so the memory sees the same history at training time as it did while acting), then
`T = n_steps` acted slots, then one bootstrap observation. Slot t stores o_t, the action a_t
sampled at o_t, and the reward r_t that env.step(a_t) returned, so reward t pairs with action t.

gymnasium 1.0 autoresets on the *next* step: after a step that ends an episode, the returned
observation is the episode's last one, and the following step() ignores its action and returns
the new episode's first observation with reward 0. That slot is marked `valid=False`: it is not
a transition of the environment, so it gets no policy, value, reward or dynamics loss, and the
memory history is cut there.
"""

from __future__ import annotations

import pickle
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium.utils import EzPickle

from .controllers import ActResult
from .envs import to_env_action
from .world_model import WorldModel


@dataclass
class Rollout:
    """Tensors of one rollout; S = C + T + 1 slots for observations, T for transitions."""

    obs: torch.Tensor  # (S, N, *obs_shape)
    prev_action: torch.Tensor  # (S, N, action_input_dim): the action input before each obs
    hist_len: torch.Tensor  # (S, N): preceding slots of the same episode, capped at C
    actions: torch.Tensor  # (T, N) indices or (T, N, D) pre-tanh u
    plans: torch.Tensor  # (T, N, k) planner output the behaviour used
    rewards: torch.Tensor  # (T, N) raw env rewards (0 on invalid slots)
    scaled_rewards: torch.Tensor  # (T, N) rewards / running return std (what A2C trains on)
    terminated: torch.Tensor  # (T, N) bool: true end, no bootstrap
    truncated: torch.Tensor  # (T, N) bool: time limit, bootstrap from the final observation
    valid: torch.Tensor  # (T, N) bool: False on the autoreset step
    context: int  # C

    @property
    def dones(self) -> torch.Tensor:
        return self.terminated | self.truncated


class ReturnNormalizer:
    """Scales rewards by the running std of the discounted return (as VecNormalize does).

    Without it CartPole's values reach ~100 and the value loss swamps the clipped gradient that
    policy, value, vision and memory share.
    """

    def __init__(self, num_envs: int, gamma: float, enabled: bool = True) -> None:
        self.gamma, self.enabled = gamma, enabled
        self.returns = np.zeros(num_envs)
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def update(self, rewards: np.ndarray, dones: np.ndarray, valid: np.ndarray) -> None:
        self.returns = np.where(valid, self.returns * self.gamma + rewards, self.returns)
        batch = self.returns[valid]
        if batch.size:
            b_mean, b_var, b_count = batch.mean(), batch.var(), batch.size
            delta, total = b_mean - self.mean, self.count + b_count
            self.mean += delta * b_count / total
            m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
            self.var, self.count = m2 / total, total
        self.returns = np.where(dones, 0.0, self.returns)

    def scale(self, rewards: np.ndarray) -> np.ndarray:
        """r / std(return), clipped to +-10: early on the variance estimate is tiny (all returns
        of the first steps are alike) and unclipped scaled rewards would be huge."""
        if not self.enabled:
            return rewards
        return np.clip(rewards / np.sqrt(self.var + 1e-8), -10.0, 10.0)

    def state_dict(self) -> dict:
        """Running statistics and each env's return so far (the latter only means something
        together with the environments' own state)."""
        return {
            "mean": self.mean,
            "var": self.var,
            "count": self.count,
            "returns": self.returns.copy(),
        }

    def load_state_dict(self, state: dict, episodes_in_flight: bool = True) -> None:
        """episodes_in_flight=False: the environments start fresh episodes, so the per-env
        returns restart at 0."""
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]
        if episodes_in_flight and "returns" in state:
            self.returns = np.array(state["returns"], dtype=np.float64)


class EpisodeTracker:
    """Raw (unscaled) returns and lengths of finished episodes, last 100 kept."""

    def __init__(self, num_envs: int, keep: int = 100) -> None:
        self.ret = np.zeros(num_envs)
        self.len = np.zeros(num_envs, dtype=np.int64)
        self.returns: deque[float] = deque(maxlen=keep)
        self.lengths: deque[int] = deque(maxlen=keep)
        self.finished = 0

    def update(self, rewards: np.ndarray, dones: np.ndarray, valid: np.ndarray) -> None:
        self.ret += np.where(valid, rewards, 0.0)
        self.len += valid.astype(np.int64)
        for i in np.flatnonzero(dones):
            self.returns.append(float(self.ret[i]))
            self.lengths.append(int(self.len[i]))
            self.finished += 1
        self.ret[dones] = 0.0
        self.len[dones] = 0

    def mean_return(self) -> float | None:
        return float(np.mean(self.returns)) if self.returns else None

    def state_dict(self) -> dict:
        return {
            "ret": self.ret.copy(),
            "len": self.len.copy(),
            "returns": list(self.returns),
            "lengths": list(self.lengths),
            "finished": self.finished,
        }

    def load_state_dict(self, state: dict, episodes_in_flight: bool = True) -> None:
        """Finished episodes always; the running ones only if the environments resume them."""
        self.returns.clear()
        self.returns.extend(state["returns"])
        self.lengths.clear()
        self.lengths.extend(state["lengths"])
        self.finished = state["finished"]
        if episodes_in_flight:
            self.ret, self.len = state["ret"].copy(), state["len"].copy()


def _capturable(env: Any) -> bool:
    """Whether pickling `env` keeps its state: EzPickle envs (Box2D ones, e.g. CarRacing)
    pickle their constructor arguments and come back as fresh environments."""
    while env is not None:
        if isinstance(env, EzPickle):
            return False
        env = getattr(env, "env", None)
    return True


def env_snapshot(envs: Any) -> bytes | None:
    """The sub-environments of a SyncVectorEnv (simulator state, time limit, RNG) and which of
    them reset on the next step, pickled; None when they cannot be captured exactly."""
    subs = getattr(envs, "envs", None)
    flags = getattr(envs, "_autoreset_envs", None)
    if subs is None or flags is None or not all(_capturable(e) for e in subs):
        return None
    try:
        return pickle.dumps({"envs": subs, "autoreset": np.array(flags)})
    except Exception:  # e.g. an env holding a render window; resume then starts fresh episodes
        return None


def restore_envs(envs: Any, snapshot: bytes) -> None:
    """Put the sub-environments of `env_snapshot` back into a SyncVectorEnv of the same size."""
    state = pickle.loads(snapshot)
    if len(state["envs"]) != len(envs.envs):
        raise ValueError(
            f"the checkpoint holds {len(state['envs'])} environments, this run has "
            f"{len(envs.envs)}; pass the same --env-batch-number to resume."
        )
    for env in envs.envs:
        env.close()
    envs.envs = state["envs"]
    envs._autoreset_envs = state["autoreset"]


class RolloutCollector:
    """Steps the vector env with the current model and fills `Rollout`s."""

    def __init__(
        self,
        envs,
        model: WorldModel,
        n_steps: int,
        device: torch.device,
        seed: int,
        gamma: float,
        normalize_rewards: bool = True,
    ) -> None:
        self.envs, self.model, self.spec = envs, model, model.spec
        self.n_steps, self.device = n_steps, device
        self.num_envs = envs.num_envs
        self.C = model.cfg.memory_window - 1
        slots = self.C + n_steps + 1
        n, a_dim = self.num_envs, self.spec.action_input_dim
        obs_dtype = torch.uint8 if self.spec.obs_kind == "image" else torch.float32
        self.obs = torch.zeros((slots, n, *self.spec.obs_shape), dtype=obs_dtype, device=device)
        self.prev_action = torch.zeros(slots, n, a_dim, device=device)
        self.hist_len = torch.zeros(slots, n, dtype=torch.long, device=device)
        first, _ = envs.reset(seed=seed)
        self.obs[self.C] = model.obs_tensor(first, device)
        self.reset_pending = np.zeros(n, dtype=bool)
        self.normalizer = ReturnNormalizer(n, gamma, normalize_rewards)
        self.episodes = EpisodeTracker(n)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue this collector exactly: the context slots of the
        next rollout, the pending autoresets, the reward normaliser, the episode statistics and
        the environments themselves (when they can be saved; otherwise resuming starts fresh
        episodes). A few KB for vector envs; nothing at all is kept of image frames unless the
        environments themselves can be saved."""
        snapshot = env_snapshot(self.envs)
        state: dict[str, Any] = {
            "num_envs": self.num_envs,
            "normalizer": self.normalizer.state_dict(),
            "episodes": self.episodes.state_dict(),
            "envs": snapshot,
        }
        if snapshot is not None:
            c = self.C
            state.update(
                obs=self.obs[: c + 1].clone(),
                prev_action=self.prev_action[: c + 1].clone(),
                hist_len=self.hist_len[: c + 1].clone(),
                reset_pending=self.reset_pending.copy(),
            )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Restore `state_dict`; returns whether the episodes in flight were restored too."""
        if state["num_envs"] != self.num_envs:
            raise ValueError(
                f"the checkpoint was made with {state['num_envs']} environments, this run has "
                f"{self.num_envs}; pass --env-batch-number {state['num_envs']} to resume."
            )
        exact = state["envs"] is not None and state["obs"].shape[0] == self.C + 1
        self.normalizer.load_state_dict(state["normalizer"], episodes_in_flight=exact)
        self.episodes.load_state_dict(state["episodes"], episodes_in_flight=exact)
        if exact:
            restore_envs(self.envs, state["envs"])
            c = self.C
            self.obs[: c + 1] = state["obs"].to(self.device)
            self.prev_action[: c + 1] = state["prev_action"].to(self.device)
            self.hist_len[: c + 1] = state["hist_len"].to(self.device)
            self.reset_pending = state["reset_pending"].copy()
        return exact

    def _context(self):
        """Acting context for slot C, rebuilt from stored observations with current weights."""
        ctx = self.model.new_context(self.num_envs, self.device)
        if self.C > 0:
            with torch.no_grad():
                obs = self.obs[: self.C].flatten(0, 1)
                z = self.model.vision(obs, with_loss=False).z
                tok = self.model.memory.token(z, self.prev_action[: self.C].flatten(0, 1))
            ctx.tokens = tok.view(self.C, self.num_envs, -1).transpose(0, 1).contiguous()
        return ctx

    def _random_act(self) -> ActResult:
        """Uniform actions for pre-training (pre-tanh u ~ N(0, 1) for Box spaces)."""
        n, dev = self.num_envs, self.device
        if self.spec.discrete:
            a = torch.randint(self.spec.n_actions, (n,), device=dev)
            return ActResult(a, a, torch.full((n, 1), -1.0, device=dev), torch.zeros(n, device=dev))
        u = torch.randn(n, self.spec.action_dim, device=dev)
        nan = torch.full_like(u, float("nan"))
        return ActResult(u, torch.tanh(u), nan, torch.zeros(n, device=dev))

    def collect(self, random_policy: bool = False, plan: bool = True) -> Rollout:
        """One rollout with the current model (or uniform random actions for pre-training);
        plan=False acts with the policy alone (the stored plan then says 'no planner')."""
        spec, C, T, n = self.spec, self.C, self.n_steps, self.num_envs
        ctx = None if random_policy else self._context()
        actions, plans = [], []
        rewards = np.zeros((T, n), dtype=np.float32)
        scaled = np.zeros((T, n), dtype=np.float32)
        terminated = np.zeros((T, n), dtype=bool)
        truncated = np.zeros((T, n), dtype=bool)
        valid = np.zeros((T, n), dtype=bool)
        for t in range(T):
            p = C + t
            if random_policy:
                res = self._random_act()
            else:
                ctx.lengths = self.hist_len[p].clone()
                res = self.model.act(self.obs[p], self.prev_action[p], ctx, plan=plan)
            env_action = to_env_action(spec, res.env_action.cpu().numpy())
            next_obs, r, term, trunc, _ = self.envs.step(env_action)
            ok = ~self.reset_pending
            done = (term | trunc) & ok
            valid[t], terminated[t], truncated[t] = ok, term & ok, trunc & ok
            rewards[t] = np.where(ok, r, 0.0)
            self.episodes.update(rewards[t], done, ok)
            self.normalizer.update(rewards[t], done, ok)
            scaled[t] = self.normalizer.scale(rewards[t])
            actions.append(res.action)
            plans.append(res.plan)
            # The slot after an autoreset step is the first of a new episode: no history and no
            # previous action.
            new_episode = torch.as_tensor(self.reset_pending, device=self.device)
            self.obs[p + 1] = self.model.obs_tensor(next_obs, self.device)
            self.hist_len[p + 1] = torch.where(new_episode, 0, (self.hist_len[p] + 1).clamp(max=C))
            a_in = self.model.controller.action_input(res.action)
            self.prev_action[p + 1] = torch.where(new_episode[:, None], 0.0, a_in)
            self.reset_pending = done
        out = Rollout(
            obs=self.obs.clone(),
            prev_action=self.prev_action.clone(),
            hist_len=self.hist_len.clone(),
            actions=torch.stack(actions),
            plans=torch.stack(plans),
            rewards=torch.as_tensor(rewards, device=self.device),
            scaled_rewards=torch.as_tensor(scaled, device=self.device),
            terminated=torch.as_tensor(terminated, device=self.device),
            truncated=torch.as_tensor(truncated, device=self.device),
            valid=torch.as_tensor(valid, device=self.device),
            context=C,
        )
        # The last C + 1 slots become the next rollout's context and first observation.
        self.obs[: C + 1] = self.obs[T:].clone()
        self.prev_action[: C + 1] = self.prev_action[T:].clone()
        self.hist_len[: C + 1] = self.hist_len[T:].clone()
        return out
