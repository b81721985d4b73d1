"""Where a run's files live, and crash-safe save/load of everything resume needs.

A run is identified by ``method_name / task / seed_<seed>`` under ``training.checkpoint_dir``
(and under ``training.replay_dir`` for the replay buffer). Relative directories are resolved
against the directory the user launched from (Hydra's original cwd), so every Hydra run or
sweep job of the same method finds the same checkpoint whatever its own output directory is.

Layout of one run::

    <checkpoint_dir>/<method>/<task>/seed_<s>/checkpoint.pt   agent + optimizers + RNG + step
    <checkpoint_dir>/<method>/<task>/seed_<s>/tb/              TensorBoard events
    <replay_dir>/<method>/<task>/seed_<s>/step_<N>/             replay dump at step N

The checkpoint and its replay dump are one unit, committed by a single atomic rename: the
buffer is dumped (and synced) to a *new* directory that no checkpoint names yet, then
``checkpoint.pt`` is atomically replaced by one that names that directory, and only then are
older dumps deleted. A job that dies at any point leaves the previous checkpoint with the dump
it names, or the new pair; never a checkpoint whose buffer is from another step. A dump a
checkpoint names is never overwritten (a second save at the same step gets ``step_<N>.1``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flatrl.agents.sac.settings import Settings
from flatrl.runtime import atomic_save

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 2


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
        """A dump directory for ``env_steps`` that does not exist yet."""
        path, k = self.replay_root / f"step_{env_steps}", 0
        while path.exists() or path.with_name(path.name + ".tmp").exists():
            k += 1
            path = self.replay_root / f"step_{env_steps}.{k}"
        return path


def resolve_paths(settings: Settings) -> RunPaths:
    run_id = Path(settings.method_name) / settings.env.task / f"seed_{settings.seed}"
    return RunPaths(
        run_dir=_absolute(settings.training.checkpoint_dir) / run_id,
        replay_root=_absolute(settings.training.replay_dir) / run_id,
    )


def save_checkpoint(paths: RunPaths, state: dict[str, Any], memory: Any | None) -> Path:
    """Write the replay buffer (if given), then commit ``state`` naming it; see the module doc.

    Returns the checkpoint path. Older dumps (and leftovers of interrupted saves) are deleted
    only after the commit.
    """
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    env_steps = int(state["loop"]["env_steps"])
    replay_path = None
    if memory is not None:
        paths.replay_root.mkdir(parents=True, exist_ok=True)
        replay_path = paths.replay_at(env_steps)
        memory.save(replay_path)
    payload = dict(
        state,
        format_version=FORMAT_VERSION,
        # Relative to the run's replay root, so a run directory can be moved as a whole.
        replay_path=None if replay_path is None else replay_path.name,
    )
    atomic_save(payload, paths.checkpoint)
    if paths.replay_root.is_dir():
        for old in paths.replay_root.glob("step_*"):
            if old != replay_path:
                shutil.rmtree(old, ignore_errors=True)
    return paths.checkpoint


def replay_dump(paths: RunPaths, state: dict[str, Any]) -> Path | None:
    """The replay dump a loaded checkpoint names (None if it was saved without one)."""
    name = state.get("replay_path")
    return None if name is None else paths.replay_root / name


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
