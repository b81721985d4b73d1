"""Where a run executes and what makes it repeatable: device, seeds, RNG state, atomic saves.

Every flatrl integration (the d3rlpy closures, the patched TD-MPC2, the SAC and world-model
agents) needs the same four things, so they live here once:

* :func:`resolve_device` turns ``auto``/``cpu``/``cuda[:N]`` into a device, failing early with
  a message when CUDA is asked for and absent.
* :func:`seed_everything` seeds Python, NumPy and torch (all devices) in one call.
* :func:`rng_state` / :func:`set_rng_state` capture and restore *every* generator a run draws
  from (Python, NumPy's global state, torch CPU and each CUDA device), so that a resumed run
  continues the random stream instead of replaying its start. :class:`TorchRNG` is the small
  torch-only snapshot that SAM's second pass uses to replay the first pass's draws.
* :func:`atomic_save` writes a file so that a crash leaves either the old or the new one,
  never half of one.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


def is_device_name(name: Any) -> bool:
    """Whether ``name`` spells a device setting (``auto``, ``cpu``, ``cuda`` or ``cuda:N``).

    Syntax only, so a config can be checked on a machine without the device (e.g. a SLURM login
    node); :func:`resolve_device` then fails on the machine that lacks it.
    """
    text = str(name).strip().lower()
    return text in ("auto", "cpu", "cuda") or (
        text.startswith("cuda:") and text[len("cuda:") :].isdigit()
    )


def resolve_device(name: Any = "auto") -> torch.device:
    """Turn a device setting into a torch device; ``auto`` (or None) picks CUDA when present.

    Raises ValueError for an unknown name, or for ``cuda`` on a machine without CUDA, so a run
    fails before any environment or model is built.
    """
    if isinstance(name, torch.device):
        name = str(name)
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
        try:
            return torch.device("cuda:0" if text == "cuda" else text)
        except RuntimeError as err:
            raise ValueError(f"device={name!r} is not a valid CUDA device name ({err}).") from err
    raise ValueError(f"device={name!r} is not one of {', '.join(DEVICE_CHOICES)}.")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch on every device."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global random state a run draws from (Python, NumPy, torch CPU, all CUDA devices)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state captured by :func:`rng_state` (keys that are absent are left alone)."""
    if "python" in state:
        random.setstate(_as_python_state(state["python"]))
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(value: Any) -> tuple[Any, ...]:
    # A checkpoint round trip may turn the inner tuple into a list; random.setstate wants tuples.
    version, internal, gauss = value
    return version, tuple(internal), gauss


class TorchRNG:
    """torch's CPU generator (and, on a CUDA device, that device's) at one moment.

    SAM's second pass restores it so that dropout masks, sampled actions and target-smoothing
    noise are the first pass's; :meth:`replay` then puts back the state the first pass left, so
    the random stream of the whole run is the one plain training would draw.
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None

    def restore(self) -> None:
        """Set the generators back to this snapshot."""
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the body with the generators at this snapshot; leave them as they were before."""
        current = TorchRNG(self.device)
        self.restore()
        try:
            yield
        finally:
            current.restore()


@contextlib.contextmanager
def _replaced_atomically(path: Path, mode: str) -> Iterator[Any]:
    """Yield a handle on a temporary file beside ``path``; on success it replaces ``path``.

    The rename is atomic on POSIX file systems: a reader (or a resumed run after a crash) sees
    the old file or the new one, never a partial write. On failure the temporary file goes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    with _replaced_atomically(path, "wb") as handle:
        torch.save(obj, handle)
    return path


def atomic_write_text(text: str, path: str | os.PathLike[str]) -> Path:
    """Write ``text`` to ``path`` atomically (same rename scheme as :func:`atomic_save`)."""
    path = Path(path)
    with _replaced_atomically(path, "w") as handle:
        handle.write(text)
    return path
