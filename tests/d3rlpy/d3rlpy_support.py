"""Shared helpers for the tests of the patched d3rlpy tree: skip logic, tiny data, algorithms.

Every test module calls :func:`require_patched_d3rlpy` first, so the directory skips (with the
reason printed by ``pytest -rs``) when d3rlpy is missing or is not the tree built from
``patches/d3rlpy/``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

OBS_DIM = 3
ACTION_DIM = 2
N_DISCRETE_ACTIONS = 3
BATCH = 8
CONTEXT = 4


def require_patched_d3rlpy() -> Any:
    """Import d3rlpy, skipping the calling module unless it is the patched tree."""
    d3rlpy = pytest.importorskip(
        "d3rlpy",
        reason="d3rlpy is not installed: build and install the patched tree "
        "(python3 apply_patches.py apply d3rlpy && pip install -e build/d3rlpy --no-deps)",
    )
    if not hasattr(d3rlpy.optimizers, "SAMFactory"):
        pytest.skip(
            f"d3rlpy at {d3rlpy.__file__} is not the patched tree (no SAMFactory): install "
            "build/d3rlpy after python3 apply_patches.py apply d3rlpy",
            allow_module_level=True,
        )
    return d3rlpy


def make_dataset(discrete: bool, n: int = 120, episode: int = 20, seed: int = 0) -> Any:
    """A random MDPDataset; small enough that building an algorithm takes milliseconds."""
    import d3rlpy

    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
    if discrete:
        actions = rng.integers(0, N_DISCRETE_ACTIONS, size=(n,))
    else:
        actions = rng.uniform(-1.0, 1.0, size=(n, ACTION_DIM)).astype(np.float32)
    rewards = rng.normal(size=(n,)).astype(np.float32)
    terminals = np.zeros(n, dtype=np.float32)
    terminals[episode - 1 :: episode] = 1.0
    kwargs = {"action_size": N_DISCRETE_ACTIONS} if discrete else {}
    return d3rlpy.dataset.MDPDataset(obs, actions, rewards, terminals, **kwargs)


def _small_config(
    config: Any, encoder: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None
) -> Any:
    """Shrink the networks and the batch so that a few updates take milliseconds.

    ``encoder`` adds VectorEncoderFactory options (dropout, batch norm) to every encoder;
    ``overrides`` sets config fields the config has (e.g. ``n_critics``), ignoring the others.
    """
    from d3rlpy.models import VectorEncoderFactory

    changes: dict[str, Any] = {"batch_size": BATCH}
    for field in dataclasses.fields(config):
        if field.name.endswith("encoder_factory"):
            changes[field.name] = VectorEncoderFactory(hidden_units=[16, 16], **(encoder or {}))
    for name, value in (
        ("warmup_steps", 1),
        ("context_size", CONTEXT),
        ("num_heads", 1),
        ("max_timestep", 64),
        ("n_action_samples", 3),
        ("n_target_samples", 3),
        ("n_mmd_action_samples", 3),
        ("n_critics", 2),
    ):
        if hasattr(config, name):
            changes[name] = value
    for name, value in (overrides or {}).items():
        if hasattr(config, name):
            changes[name] = value
    return dataclasses.replace(config, **changes)


def optim_fields(config: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(config) if f.name.endswith("optim_factory")]


def with_sam(config: Any, **sam_kwargs: Any) -> Any:
    """The same config with every optimizer factory wrapped in SAMFactory(base=<it>)."""
    from d3rlpy.optimizers import SAMFactory

    return dataclasses.replace(
        config,
        **{f: SAMFactory(base=getattr(config, f), **sam_kwargs) for f in optim_fields(config)},
    )


# name -> (config factory, kind); kind: "continuous", "discrete", "transformer-continuous",
# "transformer-discrete", "fqe-continuous", "fqe-discrete".
def algorithms() -> dict[str, tuple[Callable[[], Any] | None, str]]:
    """The algorithms of the installed d3rlpy (older releases lack e.g. PRDC and TACR)."""
    from d3rlpy import algos

    def config(name: str, **kwargs: Any) -> Callable[[], Any] | None:
        cls = getattr(algos, name, None)
        return None if cls is None else lambda: cls(**kwargs)

    table = {
        "SAC": (config("SACConfig"), "continuous"),
        "CQL": (config("CQLConfig"), "continuous"),
        "CalQL": (config("CalQLConfig"), "continuous"),
        "IQL": (config("IQLConfig"), "continuous"),
        "DDPG": (config("DDPGConfig"), "continuous"),
        "TD3": (config("TD3Config", update_actor_interval=1), "continuous"),
        "TD3PlusBC": (config("TD3PlusBCConfig", update_actor_interval=1), "continuous"),
        "AWAC": (config("AWACConfig"), "continuous"),
        "CRR": (config("CRRConfig"), "continuous"),
        "BCQ": (config("BCQConfig", rl_start_step=0), "continuous"),
        "BEAR": (config("BEARConfig"), "continuous"),
        "PLAS": (config("PLASConfig", warmup_steps=0), "continuous"),
        "PLASWithPerturbation": (
            config("PLASWithPerturbationConfig", warmup_steps=0),
            "continuous",
        ),
        "ReBRAC": (config("ReBRACConfig"), "continuous"),
        "PRDC": (config("PRDCConfig"), "continuous"),
        "BC": (config("BCConfig"), "continuous"),
        "DQN": (config("DQNConfig"), "discrete"),
        "DoubleDQN": (config("DoubleDQNConfig"), "discrete"),
        "NFQ": (config("NFQConfig"), "discrete"),
        "DiscreteCQL": (config("DiscreteCQLConfig"), "discrete"),
        "DiscreteBCQ": (config("DiscreteBCQConfig"), "discrete"),
        "DiscreteSAC": (config("DiscreteSACConfig"), "discrete"),
        "DiscreteBC": (config("DiscreteBCConfig"), "discrete"),
        "DecisionTransformer": (config("DecisionTransformerConfig"), "transformer-continuous"),
        "DiscreteDecisionTransformer": (
            config("DiscreteDecisionTransformerConfig"),
            "transformer-discrete",
        ),
        "TACR": (config("TACRConfig"), "transformer-continuous"),
    }
    fqe = {"FQE": (None, "fqe-continuous"), "DiscreteFQE": (None, "fqe-discrete")}
    return {k: v for k, v in table.items() if v[0] is not None} | fqe


def build(
    name: str,
    sam: dict[str, Any] | None = None,
    seed: int = 0,
    encoder: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    dataset: Any = None,
) -> tuple[Any, Any]:
    """Build algorithm ``name`` (Adam, or SAM with ``sam`` kwargs) on its tiny dataset.

    ``encoder`` / ``overrides``: see :func:`_small_config`; ``dataset`` reuses a dataset made by
    :func:`make_dataset` for the algorithm's kind.
    """
    import d3rlpy

    make_config, kind = algorithms()[name]
    if dataset is None:
        dataset = make_dataset(discrete=kind.endswith("discrete"))
    d3rlpy.seed(seed)
    if kind.startswith("fqe"):
        discrete = kind.endswith("discrete")
        policy_config = d3rlpy.algos.DiscreteBCConfig() if discrete else d3rlpy.algos.BCConfig()
        policy = _small_config(policy_config).create(device="cpu:0")
        policy.build_with_dataset(dataset)
        fqe_cls = d3rlpy.ope.DiscreteFQE if kind.endswith("discrete") else d3rlpy.ope.FQE
        config = _small_config(d3rlpy.ope.FQEConfig(), encoder, overrides)
        if sam is not None:
            config = with_sam(config, **sam)
        algo = fqe_cls(algo=policy, config=config, device="cpu:0")
    else:
        config = _small_config(make_config(), encoder, overrides)
        if sam is not None:
            config = with_sam(config, **sam)
        algo = config.create(device="cpu:0")
    algo.build_with_dataset(dataset)
    if name == "PRDC":  # PRDC.fit() fits its nearest-neighbour index; update() alone does not
        episodes = dataset.episodes
        obs = np.concatenate([e.observations for e in episodes])
        actions = np.concatenate([e.actions for e in episodes])
        algo._nbsr.fit(np.concatenate([obs * algo.config.beta, actions], axis=1))
    return algo, dataset


def sample_batch(name: str, dataset: Any) -> Any:
    kind = algorithms()[name][1]
    if kind.startswith("transformer"):
        return dataset.sample_trajectory_batch(BATCH, length=CONTEXT)
    return dataset.sample_transition_batch(BATCH)


def optimizers_of(algo: Any) -> dict[str, Any]:
    """The OptimizerWrappers of an algorithm's implementation, by module-field name."""
    from d3rlpy.optimizers import OptimizerWrapper

    modules = algo.impl.modules
    return {
        f.name: getattr(modules, f.name)
        for f in dataclasses.fields(modules)
        if isinstance(getattr(modules, f.name), OptimizerWrapper)
    }


@contextmanager
def count_sam_closures() -> Iterator[dict[str, int]]:
    """Count SAM steps and closure calls made while the block runs."""
    from flatrl.optim import SAM

    counts = {"sam_steps": 0, "closures": 0, "plain_steps": 0}
    original = SAM.step

    def counting_step(self: SAM, closure: Any = None, loss: Any = None) -> Any:
        if not self.is_sam_step:
            counts["plain_steps"] += 1
            return original(self, closure, loss=loss)
        counts["sam_steps"] += 1

        def counted() -> Any:
            counts["closures"] += 1
            return closure()

        return original(self, counted if closure is not None else None, loss=loss)

    SAM.step = counting_step  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        SAM.step = original  # type: ignore[method-assign]


def params_of(algo: Any) -> list[torch.Tensor]:
    """Copies of every parameter of the implementation's networks, in a fixed order."""
    modules = algo.impl.modules
    return [
        p.detach().clone()
        for f in dataclasses.fields(modules)
        if isinstance(getattr(modules, f.name), torch.nn.Module)
        for p in getattr(modules, f.name).parameters()
    ]


def batchnorm_buffers(algo: Any) -> list[torch.Tensor]:
    """Copies of every BatchNorm running statistic and counter of the implementation."""
    modules = algo.impl.modules
    return [
        buf.detach().clone()
        for f in dataclasses.fields(modules)
        if isinstance(getattr(modules, f.name), torch.nn.Module)
        for m in getattr(modules, f.name).modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        for buf in (m.running_mean, m.running_var, m.num_batches_tracked)
        if buf is not None
    ]
