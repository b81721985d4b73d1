"""Where a run's files live, and crash-safe save/load of everything resume needs.

A run is identified by ``method_name / task / seed_<seed>`` under ``training.checkpoint_dir``
(and under ``training.replay_dir`` for the replay buffer). Relative directories are resolved
against the directory the user launched from (Hydra's original cwd), so every Hydra run or
sweep job of the same method finds the same checkpoint whatever its own output directory is.

Layout of one run::

    <checkpoint_dir>/<method>/<task>/seed_<s>/checkpoint.pt   agent + optimizers + RNG + step
    <checkpoint_dir>/<method>/<task>/seed_<s>/tb/              TensorBoard events
    <replay_dir>/<method>/<task>/seed_<s>/step_<N>/             torchrl buffer dump at step N

Save order keeps the pair consistent if the job dies at any point: the buffer is dumped to a
new ``step_<N>`` directory, then ``checkpoint.pt`` is atomically replaced by one that names
that directory, and only then are older buffer dumps deleted.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flatrl.agents.sac.settings import Settings

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def _absolute(path: str) -> Path:
    """Absolute path, relative ones taken from the launch directory even inside Hydra."""
    try:
        from hydra.utils import to_absolute_path

        return Path(to_absolute_path(path))
    except (ImportError, ValueError):
        return Path(path).absolute()


@dataclass(frozen=True)
class RunPaths:
    run_dir: Path
    replay_root: Path

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    @property
    def tensorboard(self) -> Path:
        return self.run_dir / "tb"

    def replay_at(self, env_steps: int) -> Path:
        return self.replay_root / f"step_{env_steps}"


def resolve_paths(settings: Settings) -> RunPaths:
    run_id = Path(settings.method_name) / settings.env.task / f"seed_{settings.seed}"
    return RunPaths(
        run_dir=_absolute(settings.training.checkpoint_dir) / run_id,
        replay_root=_absolute(settings.training.replay_dir) / run_id,
    )


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(paths: RunPaths, state: dict[str, Any], memory: Any | None) -> Path:
    """Write the replay buffer (if given) and then ``state``; returns the checkpoint path."""
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    env_steps = int(state["loop"]["env_steps"])
    replay_path = None
    if memory is not None:
        replay_path = paths.replay_at(env_steps)
        paths.replay_root.mkdir(parents=True, exist_ok=True)
        memory.save(replay_path)
    payload = dict(
        state,
        format_version=FORMAT_VERSION,
        replay_path=None if replay_path is None else str(replay_path),
    )
    tmp = paths.checkpoint.with_name(CHECKPOINT_NAME + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, paths.checkpoint)
    if replay_path is not None:
        for old in paths.replay_root.glob("step_*"):
            if old != replay_path:
                shutil.rmtree(old, ignore_errors=True)
    return paths.checkpoint


def load_checkpoint(paths: RunPaths) -> dict[str, Any]:
    # Our own file holding numpy RNG state and config dicts, so not weights-only.
    state = torch.load(paths.checkpoint, map_location="cpu", weights_only=False)
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{paths.checkpoint} has format {state.get('format_version')}, this code reads "
            f"{FORMAT_VERSION}; start a fresh run (resume=false with a new method_name)."
        )
    return state


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Keys whose values differ between two nested config dicts (for a resume warning)."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}.{key}" if prefix else str(key)
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, name)
        elif a != b:
            diffs.append(f"{name}: {a!r} -> {b!r}")
    return diffs
