"""Deterministic evaluation: the greedy action of the same blended policy that was trained."""

from __future__ import annotations

import numpy as np
import torch

from .envs import make_vector_env, to_env_action
from .world_model import WorldModel


@torch.no_grad()
def evaluate(
    model: WorldModel, episodes: int, seed: int, device: torch.device, num_envs: int = 20
) -> list[float]:
    """Returns of `episodes` full episodes, split evenly over `num_envs` envs (no early-episode
    bias: every env plays its fixed share, however long its episodes are)."""
    num_envs = max(1, min(num_envs, episodes))
    target = np.array([episodes // num_envs + (i < episodes % num_envs) for i in range(num_envs)])
    envs = make_vector_env(model.spec.env_id, num_envs, seed)
    try:
        obs, _ = envs.reset(seed=seed)
        window = model.cfg.memory_window - 1
        ctx = model.new_context(num_envs, device)
        prev = model.zero_action_input(num_envs, device)
        hist = torch.zeros(num_envs, dtype=torch.long, device=device)
        ret = np.zeros(num_envs)
        counts = np.zeros(num_envs, dtype=np.int64)
        reset_pending = np.zeros(num_envs, dtype=bool)
        returns: list[float] = []
        was_training = model.training
        model.eval()
        while (counts < target).any():
            ctx.lengths = hist.clone()
            res = model.act(model.obs_tensor(obs, device), prev, ctx, deterministic=True)
            obs, r, term, trunc, _ = envs.step(
                to_env_action(model.spec, res.env_action.cpu().numpy())
            )
            ok = ~reset_pending
            done = (term | trunc) & ok
            ret += np.where(ok, r, 0.0)
            for i in np.flatnonzero(done):
                if counts[i] < target[i]:
                    returns.append(float(ret[i]))
                    counts[i] += 1
                ret[i] = 0.0
            new_episode = torch.as_tensor(reset_pending, device=device)
            hist = torch.where(new_episode, 0, (hist + 1).clamp(max=window))
            prev = torch.where(new_episode[:, None], 0.0, model.controller.action_input(res.action))
            reset_pending = done
        model.train(was_training)
        return returns
    finally:
        envs.close()
