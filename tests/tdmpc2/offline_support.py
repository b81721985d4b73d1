"""Shared by the tests that drive TD-MPC2 through ``flatrl.tdmpc2.offline``: a tiny agent
configuration, synthetic datasets in the offline layout, and an agent with its buffer loaded.

One copy, so that the offline study's tests and the Momentum-SAM tests build the same agent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

TINY = {  # a few-thousand-parameter TD-MPC2 (model_size null: the sizes below count)
    "model_size": None,
    "enc_dim": 16,
    "mlp_dim": 16,
    "latent_dim": 16,
    "num_q": 2,
    "batch_size": 8,
    "horizon": 3,
}
#: TINY plus what an in-process agent needs (no compile, CPU, no wandb, a fixed seed and task).
TINY_AGENT = {
    **TINY,
    "compile": False,
    "device": "cpu",
    "enable_wandb": False,
    "seed": 3,
    "task": "cartpole-swingup",
}


def synthetic(episodes: int, length: int, seed: int, obs_dim: int = 3) -> dict:
    """A dataset in the layout of flatrl.tdmpc2.offline.data (NaN first action/reward)."""
    rs = np.random.RandomState(seed)
    obs = torch.from_numpy(rs.randn(episodes, length + 1, obs_dim).astype(np.float32))
    action = torch.from_numpy(rs.uniform(-1, 1, (episodes, length + 1, 1)).astype(np.float32))
    reward = torch.from_numpy(rs.rand(episodes, length + 1).astype(np.float32))
    action[:, 0], reward[:, 0] = float("nan"), float("nan")
    facts = {"obs_shape": {"state": (obs_dim,)}, "action_dim": 1, "episode_length": length}
    return {"obs": obs, "action": action, "reward": reward, "facts": facts}


def offline_agent(data: dict, tiny: dict[str, Any], **keys: Any) -> tuple[Any, Any]:
    """A TD-MPC2 agent built from ``tiny`` (+ ``keys``) and a buffer holding ``data``.

    ``keys`` are set after parsing, since config.yaml need not list them.
    """
    from flatrl.tdmpc2.offline import data as datasets
    from flatrl.tdmpc2.offline.tree import make_agent, make_buffer, make_cfg

    cfg = make_cfg(tiny, data["facts"])
    cfg.steps = cfg.buffer_size = int(data["obs"].shape[0] * data["obs"].shape[1])
    for key, value in keys.items():
        setattr(cfg, key, value)
    torch.manual_seed(0)
    agent = make_agent(cfg)
    buffer = make_buffer(cfg)
    buffer.load(datasets.as_tensordict(data))
    return agent, buffer
