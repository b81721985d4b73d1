"""Replay memory: torchrl's TensorDictReplayBuffer over a LazyTensorStorage.

We keep torchrl's buffer as is and only fix what it leaves open: the transition keys, a
dedicated sampling generator (so restoring the buffer restores exactly which batches come
next, independently of the global torch RNG), probes that draw from a generator of their own
(a diagnostic must not shift the training batches), and a dump that holds only the filled part
of the storage (torchrl's writes the whole preallocated capacity, e.g. ~170 MB for a 1M buffer
of cheetah transitions even when it holds 50k).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import RandomSampler

KEYS = ("obs", "action", "reward", "next_obs", "not_done")


class ReplayMemory:
    """Uniform replay of ``(obs, action, reward, next_obs, not_done)`` transitions."""

    def __init__(
        self, capacity: int, batch_size: int, seed: int, device: torch.device | str = "cpu"
    ) -> None:
        if capacity < batch_size:
            raise ValueError(
                f"training.replay_capacity={capacity} is smaller than training.batch_size="
                f"{batch_size}; raise the capacity."
            )
        generator = torch.Generator()
        generator.manual_seed(seed)
        self.device = torch.device(device)
        self.capacity = capacity
        storage = LazyTensorStorage(capacity, device=self.device)
        self._storage = storage
        self._rb = TensorDictReplayBuffer(
            storage=storage,
            sampler=RandomSampler(),
            batch_size=batch_size,
            generator=generator,
        )
        # Dump only the filled rows, pad back to the capacity when loading. (Registered after
        # the buffer is built: building it gives the storage a fresh checkpointer.)
        storage.register_save_hook(self._filled_rows)
        storage.register_load_hook(self._padded_to_capacity)

    def _filled_rows(self, data: TensorDict, path: Path | None = None) -> TensorDict:
        return data[: len(self._storage)]

    def _padded_to_capacity(self, data: TensorDict, out: TensorDict | None = None) -> TensorDict:
        n = data.shape[0]
        if n == self.capacity:
            return data
        full = data[:1].expand(self.capacity).clone().zero_() if out is None else out
        full[:n] = data
        return full

    def __len__(self) -> int:
        return len(self._rb)

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: float,
        next_obs: np.ndarray,
        terminated: bool,
    ) -> None:
        self._rb.add(
            TensorDict(
                {
                    "obs": torch.as_tensor(obs, dtype=torch.float32),
                    "action": torch.as_tensor(action, dtype=torch.float32),
                    "reward": torch.tensor([reward], dtype=torch.float32),
                    "next_obs": torch.as_tensor(next_obs, dtype=torch.float32),
                    "not_done": torch.tensor([0.0 if terminated else 1.0]),
                },
                batch_size=[],
            )
        )

    def sample(
        self, device: torch.device | str | None = None, batch_size: int | None = None
    ) -> dict[str, torch.Tensor]:
        """A uniform batch (``batch_size`` defaults to the training batch size)."""
        if batch_size is None:
            batch = self._rb.sample()
        else:
            with warnings.catch_warnings():
                # torchrl warns that the size differs from the constructor's; that is the point.
                warnings.filterwarnings("ignore", message="Got conflicting batch_sizes")
                batch = self._rb.sample(batch_size)
        target = torch.device(device) if device is not None else self.device
        return {k: batch.get(k).to(target) for k in KEYS}

    def probe(self, n: int, generator: torch.Generator, device: torch.device | str) -> dict:
        """``n`` uniform transitions drawn with ``generator`` (not the training sampler's).

        Diagnostics use this so that switching them on leaves the training batches unchanged.
        """
        idx = torch.randint(len(self), (n,), generator=generator)
        batch = self._rb[idx]
        return {k: batch.get(k).to(device) for k in KEYS}

    def save(self, path: Path) -> None:
        """Write the buffer (filled storage, sampler, writer cursor, generator) to a new ``path``.

        It goes to a sibling ``.tmp`` directory first, every file is synced to disk, and only
        then is it renamed, so a job killed mid-save never leaves a half-written buffer under
        ``path``. ``path`` must not exist: a dump a checkpoint names is never overwritten.
        """
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"replay dump {path} exists; dumps are never overwritten.")
        tmp = path.with_name(path.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        with warnings.catch_warnings():
            # After a load torchrl has no "last cursor"; only shifting save hooks need one.
            warnings.filterwarnings("ignore", message="last_cursor is None")
            self._rb.dumps(tmp)
        _fsync_tree(tmp)
        tmp.rename(path)

    def load(self, path: Path) -> None:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no replay buffer at {path}; cannot resume from it.")
        self._rb.loads(path)


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` to disk (a dump must be durable before it is named)."""
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def dump_size(path: Path) -> int:
    """Bytes under a dump directory (for tests and logs)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


__all__: list[Any] = ["KEYS", "ReplayMemory", "dump_size"]
