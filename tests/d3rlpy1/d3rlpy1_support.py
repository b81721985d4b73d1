"""Shared helpers of the d3rlpy 1.1.1 series tests: every algorithm, tiny, on synthetic data.

The tests run in ``.venv/d3rlpy1``, which imports the patched ``build/d3rlpy1`` tree. Every
algorithm of ``d3rlpy.algos`` is built with 16-unit networks on a 64-step dataset, every one of
its optimizer factories replaced by the factory under test.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

d3rlpy = pytest.importorskip("d3rlpy", reason="needs the patched d3rlpy 1.1.1 (.venv/d3rlpy1)")
if not d3rlpy.__version__.startswith("1."):
    pytest.skip(f"d3rlpy {d3rlpy.__version__} is not the 1.x series", allow_module_level=True)

from d3rlpy.dataset import MDPDataset, TransitionMiniBatch  # noqa: E402
from d3rlpy.models.encoders import VectorEncoderFactory  # noqa: E402
from d3rlpy.models.optimizers import AdamFactory, OptimizerFactory, SAMFactory  # noqa: E402
from flatrl.d3rlpy1.closures import networks  # noqa: E402

NOT_TRAINABLE = {"AlgoBase", "RandomPolicy", "DiscreteRandomPolicy", "get_algo", "create_algo"}
DISCRETE_Q = {"DQN", "DoubleDQN", "NFQ"}
# Small sample counts, and warm-up phases short enough that a few updates take both branches.
SMALL = {"n_action_samples": 4, "n_mmd_action_samples": 4, "warmup_steps": 2, "batch_size": 16}
# TD3PlusBC defaults to a standard scaler, fitted only by fit(): updates by hand need none
UNSCALED = {"scaler": None}
OBS, ACTIONS, N_DISCRETE = 3, 2, 3

ENCODERS: dict[str, dict[str, Any]] = {
    "default": {},
    "dropout": {"dropout_rate": 0.2},
    "batchnorm": {"use_batch_norm": True},
}


def algorithm_names() -> list[str]:
    """Every trainable algorithm of d3rlpy 1.1.1 (22)."""
    return sorted(n for n in d3rlpy.algos.__all__ if n not in NOT_TRAINABLE)


def is_discrete(name: str) -> bool:
    return name.startswith("Discrete") or name in DISCRETE_Q


def make_dataset(discrete: bool, n: int = 64, seed: int = 0) -> MDPDataset:
    rng = np.random.default_rng(seed)
    observations = rng.normal(size=(n, OBS)).astype(np.float32)
    if discrete:
        actions = rng.integers(0, N_DISCRETE, size=n)
    else:
        actions = rng.uniform(-1, 1, size=(n, ACTIONS)).astype(np.float32)
    rewards = rng.normal(size=n).astype(np.float32)
    terminals = np.zeros(n)
    terminals[n // 2 - 1 :: n // 2] = 1.0
    return MDPDataset(observations, actions, rewards, terminals)


def batches(dataset: MDPDataset, count: int, size: int = 16, seed: int = 1) -> list[Any]:
    transitions = [t for episode in dataset.episodes for t in episode.transitions]
    rng = np.random.default_rng(seed)
    return [
        TransitionMiniBatch([transitions[i] for i in rng.choice(len(transitions), size)])
        for _ in range(count)
    ]


def optimizer_arguments(cls: type) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p.endswith("optim_factory")]


def make_algorithm(
    name: str, optimizer: Callable[[], OptimizerFactory], encoder: str = "default", **extra: Any
) -> Any:
    """``name`` with tiny networks and every optimizer factory made by ``optimizer()``."""
    cls = getattr(d3rlpy.algos, name)
    params = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {k: v for k, v in (SMALL | UNSCALED).items() if k in params}
    for arg in params:
        if arg.endswith("encoder_factory"):
            kwargs[arg] = VectorEncoderFactory(hidden_units=[16], **ENCODERS[encoder])
        elif arg.endswith("optim_factory"):
            kwargs[arg] = optimizer()
    kwargs.update(extra)
    return cls(use_gpu=False, **kwargs)


def built(name: str, optimizer: Callable[[], OptimizerFactory], seed: int = 0, **kw: Any) -> Any:
    """The algorithm with its networks made (seeded: the same seed gives the same weights)."""
    d3rlpy.seed(seed)
    algo = make_algorithm(name, optimizer, **kw)
    algo.build_with_dataset(make_dataset(is_discrete(name)))
    return algo


def state_of(algo: Any) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (BatchNorm statistics and counters) of the networks."""
    state = {}
    for i, module in enumerate(networks(algo.impl)):
        for key, value in module.state_dict().items():
            state[f"{i}.{type(module).__name__}.{key}"] = value.detach().clone()
    return state


def adam() -> OptimizerFactory:
    return AdamFactory()


def sam(rho: float = 0.05, **kwargs: Any) -> Callable[[], OptimizerFactory]:
    return lambda: SAMFactory(AdamFactory(), rho=rho, **kwargs)
