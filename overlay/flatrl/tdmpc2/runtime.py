"""Where TD-MPC2 runs: the device, and what must change when that device is not a GPU.

Upstream TD-MPC2 hard-codes ``cuda:0`` and compiles its update with inductor and CUDA graphs;
both fail on a CPU-only machine. The patched tree asks this module instead, so
``device=auto|cpu|cuda`` and the CPU fallbacks are decided in one place. Device resolution
itself is :func:`flatrl.runtime.resolve_device`, shared with every other flatrl integration.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from flatrl.runtime import DEVICE_CHOICES, resolve_device

__all__ = [
    "DEVICE_CHOICES",
    "compile_mode",
    "configure_runtime",
    "default_seed_steps",
    "is_unset",
    "resolve_device",
]


def configure_runtime(cfg: Any) -> Any:
    """Resolve ``cfg.device`` in place and turn off what the device cannot do.

    ``compile=true`` uses inductor with CUDA graphs (``mode="reduce-overhead"``), which only
    pays off on a GPU: on CPU it is switched off with a warning rather than failing deep inside
    the first update, unless ``compile_cpu=true`` asks to compile there anyway (inductor's C++
    backend without CUDA graphs; slow to compile, meant for testing the compiled path without a
    GPU). ``enable_wandb=true`` (upstream's default) without ``wandb_project``/``wandb_entity``
    is turned off with a message instead of a login prompt.
    """
    device = resolve_device(getattr(cfg, "device", "auto"))
    cfg.device = str(device)
    compile_cpu = getattr(cfg, "compile_cpu", False)
    if not isinstance(compile_cpu, bool):
        raise ValueError(f"compile_cpu must be true or false, got {compile_cpu!r}.")
    if device.type != "cuda" and bool(getattr(cfg, "compile", False)) and not compile_cpu:
        warnings.warn(
            f"compile=true needs a CUDA device (torch.compile with CUDA graphs); running on "
            f"{device} with compile=false. Pass compile=false to silence this warning, or "
            "compile_cpu=true to compile on the CPU anyway (slow to compile; for testing).",
            stacklevel=2,
        )
        print(f"Warning: compile=true is not supported on {device}; using compile=false.")
        cfg.compile = False
    if bool(getattr(cfg, "enable_wandb", False)) and (
        is_unset(getattr(cfg, "wandb_project", None))
        or is_unset(getattr(cfg, "wandb_entity", None))
    ):
        # Upstream would call wandb.init with project "???" and ask for a login.
        print(
            "Wandb disabled: enable_wandb=true needs wandb_project=<name> and "
            "wandb_entity=<name>; pass both to log to wandb, or enable_wandb=false."
        )
        cfg.enable_wandb = False
    return cfg


def compile_mode(device: torch.device) -> str | None:
    """``torch.compile`` mode: upstream's ``reduce-overhead`` (CUDA graphs) on CUDA, else default.

    CUDA graphs exist only on CUDA; on CPU (``compile_cpu=true``) inductor's default mode is
    the same kernels without graph capture.
    """
    return "reduce-overhead" if torch.device(device).type == "cuda" else None


def is_unset(value: Any) -> bool:
    """Whether a Hydra config value was left unset (``???`` survives ``OmegaConf.to_container``)."""
    return value is None or (isinstance(value, str) and value.strip() in ("", "???", "none"))


def default_seed_steps(cfg: Any, episode_length: int) -> int:
    """Random-action steps before the first update: the user's ``seed_steps`` if given.

    Upstream always overwrites it with ``max(1000, 5 * episode_length)``, so a short smoke run
    never reaches an update; that value remains the default. It must cover one episode.
    """
    value = getattr(cfg, "seed_steps", None)
    if is_unset(value):
        return max(1000, 5 * int(episode_length))
    if isinstance(value, bool) or not isinstance(value, int) or value < int(episode_length):
        raise ValueError(
            f"seed_steps={value!r} must be an integer >= the episode length ({episode_length}): "
            "updates sample from finished episodes, so the first update needs one in the "
            f"buffer; e.g. seed_steps={int(episode_length)}."
        )
    return value
