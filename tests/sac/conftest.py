"""Shared helpers: compose the real Hydra configs with tiny-network, few-step overrides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("dm_control", reason="the SAC agent needs dm_control (tdmpc2 environment)")
pytest.importorskip("torchrl", reason="the SAC agent's replay buffer is torchrl's")
pytest.importorskip("hydra", reason="the SAC agent is configured with Hydra")

import flatrl.agents.sac.train as sac_train  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

CONFIG_DIR = str(Path(sac_train.__file__).parent / "configs")

# A cartpole run that finishes in seconds: 8x action repeat (125 agent steps per episode),
# 32-unit networks, batch 32.
TINY = [
    "threads=1",
    "env.task=cartpole-swingup",
    "env.action_repeat=8",
    "model.hidden_dim=32",
    "training.seed_steps=400",
    "training.batch_size=32",
    "training.replay_capacity=5000",
    "training.eval_episodes=1",
    "training.eval_every_steps=1000",
    "training.log_every_steps=200",
    "training.checkpoint_every_steps=1000",
    "training.progress_bar=false",
]


def compose_config(*overrides: str, config_name: str = "sac_dmc") -> dict[str, Any]:
    """The resolved config the entry point would see for these overrides."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def tiny_config(tmp_path: Path, *overrides: str) -> dict[str, Any]:
    dirs = [
        f"training.checkpoint_dir={tmp_path / 'ckpt'}",
        f"training.replay_dir={tmp_path / 'rb'}",
    ]
    return compose_config(*TINY, *dirs, *overrides)
