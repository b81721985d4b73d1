"""Checkpoints: full run state for --resume, and weight-only loading for --load-path.

Files are written with `flatrl.runtime.atomic_save` (a crash leaves the old file or the new one)
and the RNG state is `flatrl.runtime.rng_state` (Python, NumPy, torch CPU and CUDA).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from flatrl.optim import unperturbed
from flatrl.runtime import atomic_save, rng_state

from .world_model import ModelConfig, WorldModel


def save(path: str, payload: dict[str, Any]) -> None:
    """Write atomically, so an interrupted save never leaves a broken file."""
    atomic_save(payload, path)


def controller_name(improved: bool) -> str:
    return "improved" if improved else "legacy"


def run_state(
    model: WorldModel,
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int,
    env_steps: int,
    best_reward: float,
    collector: dict[str, Any],
    log_dir: str,
    env_name: str,
    optimizer_name: str,
    algorithm: str,
) -> dict[str, Any]:
    """Everything --resume needs to continue the run exactly where it stopped.

    The model's weights are the trained ones, w, even under Momentum-SAM (which holds the
    perturbed w~ between updates), so --load-path and evaluation of the file see w; the
    optimizer's state (taken outside ``unperturbed``) carries w and its momentum, from which a
    resumed run puts back the same w~.
    """
    optimizer_state = optimizer.state_dict()
    with unperturbed(optimizer):  # copies: on exit the parameters go back to w~ in place
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {
        "kind": "run",
        "env_name": env_name,
        "controller": controller_name(model.cfg.improved_controller),
        "optimizer_name": optimizer_name,
        "algorithm": algorithm,
        "model_config": asdict(model.cfg),
        "model": weights,
        "optimizer": optimizer_state,
        "epoch": epoch,
        "env_steps": env_steps,
        "best_reward": best_reward,
        "collector": collector,
        "log_dir": log_dir,
        "rng": rng_state(),
    }


def load(path: str, device: torch.device) -> dict[str, Any]:
    # weights_only=False: our own files hold numpy RNG state and plain dicts.
    return torch.load(path, map_location=device, weights_only=False)


def check_compatible(saved: dict[str, Any], cfg: ModelConfig, env_name: str, path: str) -> None:
    """Refuse a checkpoint whose weights do not fit the model being built: another env, other
    sizes, or (for a full run) another controller."""
    if saved.get("env_name") != env_name:
        raise ValueError(
            f"{path} was trained on {saved.get('env_name')!r}, not {env_name!r}; "
            "pass the matching --env-name."
        )
    old = saved.get("model_config", {})
    if saved.get("kind") == "run" and "improved_controller" in old:
        was, now = old["improved_controller"], cfg.improved_controller
        if was != now:
            fix = "add" if was else "drop"
            raise ValueError(
                f"{path} was trained with the {controller_name(was)} controller, this run builds "
                f"the {controller_name(now)} one; {fix} --use-improved-controller to load it."
            )
    sizes = ("z_dim", "d_model", "memory_layers", "memory_heads", "memory_window")
    diff = {k: (old.get(k), getattr(cfg, k)) for k in sizes if old.get(k) != getattr(cfg, k)}
    if diff:
        raise ValueError(f"{path} has other model sizes (saved, now): {diff}; match the flags.")


def check_resumable(
    saved: dict[str, Any],
    optimizer_name: str,
    algorithm: str,
    path: str,
    variant: str | None = None,
) -> None:
    """--resume continues the same run: the optimizer, its SAM variant (``variant``: the
    optimizer's ``.variant``, None without SAM) and the algorithm must be the saved ones.

    Another variant cannot continue the saved optimizer state (it would drop Momentum-SAM's w
    or LookSAM's stored direction).
    """
    if saved.get("kind") != "run" or "collector" not in saved:
        raise ValueError(
            f"--resume {path}: not a run checkpoint of this version of the agent (pre-training "
            "files and older runs hold no collector state); pass it as --load-path to reuse "
            "its weights in a new run."
        )
    for what, was, now, flag in (
        ("optimizer", saved.get("optimizer_name"), optimizer_name, "--optimizer"),
        ("algorithm", saved.get("algorithm"), algorithm, "--use-a2c"),
    ):
        if was is not None and was != now:
            raise ValueError(
                f"--resume {path}: that run used the {what} {was!r}, this one {now!r}; "
                f"set {flag} as the saved run did."
            )
    sam = saved.get("optimizer", {}).get("sam")
    was = sam.get("variant", "sam") if isinstance(sam, dict) else None  # older files: plain SAM
    if was is not None and variant is not None and was != variant:
        raise ValueError(
            f"--resume {path}: that run used --sam-variant {was}, this one {variant}; set "
            "--sam-variant as the saved run did (another variant cannot continue its optimizer "
            "state)."
        )


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
