"""flatrl.runtime: device names, full random state round trips, draw replay, atomic saves."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from flatrl.runtime import (
    TorchRNG,
    atomic_save,
    atomic_write_text,
    is_device_name,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:3", " CUDA:1 "])
def test_device_names_accepted(name: str) -> None:
    assert is_device_name(name)


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "cuda0", "", "tpu:0"])
def test_device_names_rejected(name: str) -> None:
    assert not is_device_name(name)


def test_resolve_device_names_the_problem() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == resolve_device("auto")
    with pytest.raises(ValueError, match="is not one of auto, cpu, cuda"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available.*device=cpu"):
            resolve_device("cuda:1")


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_rng_state_round_trip_continues_every_stream() -> None:
    seed_everything(3)
    _draws()
    saved = pickle.loads(pickle.dumps(rng_state()))  # as a checkpoint would store it
    expected = [_draws() for _ in range(3)]
    seed_everything(99)  # a "fresh process" that would replay other numbers
    set_rng_state(saved)
    assert [_draws() for _ in range(3)] == expected


def test_rng_state_survives_a_list_shaped_python_state() -> None:
    seed_everything(0)
    saved = rng_state()
    version, internal, gauss = saved["python"]
    saved["python"] = [version, list(internal), gauss]  # e.g. after a JSON/YAML round trip
    first = random.random()
    set_rng_state(saved)
    assert random.random() == first


def test_torch_rng_replay_repeats_draws_and_leaves_the_stream_where_it_was() -> None:
    torch.manual_seed(0)
    snapshot = TorchRNG("cpu")
    first = torch.rand(4)
    after_first = torch.get_rng_state()
    with snapshot.replay():
        assert torch.equal(torch.rand(4), first)
    assert torch.equal(torch.get_rng_state(), after_first)


def test_atomic_save_replaces_whole_files_and_leaves_no_temp_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ckpt.pt"
    atomic_save({"step": 1}, path)
    assert torch.load(path)["step"] == 1

    class Unpicklable:
        def __reduce__(self) -> tuple:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path)["step"] == 1  # the old file is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]
    atomic_write_text("hello\n", tmp_path / "note.txt")
    assert (tmp_path / "note.txt").read_text() == "hello\n"
