"""Checkpoints: full run state for --resume, and weight-only loading for --load-path."""

from __future__ import annotations

import os
import random
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from .world_model import ModelConfig, WorldModel


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str, payload: dict[str, Any]) -> None:
    """Write atomically (tmp + rename) so an interrupted save never leaves a broken file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def run_state(
    model: WorldModel,
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int,
    env_steps: int,
    best_reward: float,
    normalizer: dict,
    episode_returns: list[float],
    log_dir: str,
    env_name: str,
) -> dict[str, Any]:
    return {
        "kind": "run",
        "env_name": env_name,
        "model_config": asdict(model.cfg),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "env_steps": env_steps,
        "best_reward": best_reward,
        "normalizer": normalizer,
        "episode_returns": episode_returns,
        "log_dir": log_dir,
        "rng": rng_state(),
    }


def load(path: str, device: torch.device) -> dict[str, Any]:
    # weights_only=False: our own files hold numpy RNG state and plain dicts.
    return torch.load(path, map_location=device, weights_only=False)


def check_compatible(saved: dict[str, Any], cfg: ModelConfig, env_name: str, path: str) -> None:
    """Shapes that must match for a checkpoint's weights to fit the model being built."""
    if saved.get("env_name") != env_name:
        raise ValueError(
            f"{path} was trained on {saved.get('env_name')!r}, not {env_name!r}; "
            "pass the matching --env-name."
        )
    sizes = ("z_dim", "d_model", "memory_layers", "memory_heads", "memory_window")
    old = saved.get("model_config", {})
    diff = {k: (old.get(k), getattr(cfg, k)) for k in sizes if old.get(k) != getattr(cfg, k)}
    if diff:
        raise ValueError(f"{path} has other model sizes (saved, now): {diff}; match the flags.")


def load_weights(model: WorldModel, path: str, env_name: str) -> list[str]:
    """--load-path: fill whichever parts the file has (pre-trained V or V+M, or a full run).

    Returns the names of the parts loaded, so the caller can say what was reused.
    """
    saved = load(path, next(model.parameters()).device)
    check_compatible(saved, model.cfg, env_name, path)
    if saved.get("kind") == "run":
        model.load_state_dict(saved["model"])
        return ["vision", "memory", "reward_predictor", "controller"]
    loaded = []
    for part in ("vision", "memory", "reward_predictor"):
        if part in saved:
            getattr(model, part).load_state_dict(saved[part])
            loaded.append(part)
    if not loaded:
        raise ValueError(f"{path} holds no world-model weights (vision/memory/controller).")
    return loaded


def model_config_from(saved: dict[str, Any]) -> ModelConfig:
    return ModelConfig(**saved["model_config"])
