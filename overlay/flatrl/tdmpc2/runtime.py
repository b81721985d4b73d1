"""Where TD-MPC2 runs: the device, and what must change when that device is not a GPU.

Upstream TD-MPC2 hard-codes ``cuda:0`` and compiles its update with inductor; both fail on a
CPU-only machine. The patched tree asks this module instead, so ``device=auto|cpu|cuda`` and the
CPU fallbacks are decided in one place.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: Any) -> torch.device:
    """Turn the ``device`` config value into a torch device (``auto`` = cuda if available).

    Raises ValueError for an unknown name, or for ``cuda`` on a machine without CUDA, so a run
    fails before any environment or model is built.
    """
    text = "auto" if name is None else str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={name} but CUDA is not available on this machine; use device=cpu "
                "(or device=auto, which picks cuda when it is available)."
            )
        return torch.device("cuda:0" if text == "cuda" else text)
    raise ValueError(f"device={name!r} is not one of {DEVICE_CHOICES} (or cuda:N).")


def configure_runtime(cfg: Any) -> Any:
    """Resolve ``cfg.device`` in place and turn off what the device cannot do.

    ``compile=true`` uses inductor with CUDA graphs (``mode="reduce-overhead"``), which only
    pays off, and only works reliably, on a GPU: on CPU it is switched off with a warning rather
    than failing deep inside the first update. ``enable_wandb=true`` (upstream's default)
    without ``wandb_project``/``wandb_entity`` is turned off with a message instead of a login
    prompt.
    """
    device = resolve_device(getattr(cfg, "device", "auto"))
    cfg.device = str(device)
    if device.type != "cuda" and bool(getattr(cfg, "compile", False)):
        warnings.warn(
            f"compile=true needs a CUDA device (torch.compile with CUDA graphs); running on "
            f"{device} with compile=false. Pass compile=false to silence this warning.",
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


def rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CPU (and, on CUDA, the device) random state, to replay the same noise in a re-pass."""
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda_state


def set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    """Restore a state from :func:`rng_state`."""
    cpu_state, cuda_state = state
    torch.set_rng_state(cpu_state)
    if cuda_state is not None:
        torch.cuda.set_rng_state(cuda_state, device)
