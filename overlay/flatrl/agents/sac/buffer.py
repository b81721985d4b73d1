"""Replay memory: torchrl's TensorDictReplayBuffer over a LazyTensorStorage.

We keep torchrl's buffer as is and only fix three things it leaves open: the transition keys,
a dedicated sampling generator (so restoring the buffer restores exactly which batches come
next, independently of the global torch RNG), and where on disk a checkpoint lives.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

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
        self._rb = TensorDictReplayBuffer(
            storage=LazyTensorStorage(capacity, device=self.device),
            sampler=RandomSampler(),
            batch_size=batch_size,
            generator=generator,
        )

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

    def save(self, path: Path) -> None:
        """Write the whole buffer (storage, sampler, writer cursor, generator) to a new ``path``.

        It goes to a sibling ``.tmp`` directory first and is renamed when complete, so a job
        killed mid-save never leaves a half-written buffer under ``path``.
        """
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        self._rb.dumps(tmp)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)

    def load(self, path: Path) -> None:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no replay buffer at {path}; cannot resume from it.")
        self._rb.loads(path)
