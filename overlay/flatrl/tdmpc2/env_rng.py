"""The random generators an environment draws from, captured and restored for exact resumes.

A resumed run must continue every random stream, not only torch's and NumPy's global ones:
DeepMind Control tasks draw initial states from their own ``numpy.random.RandomState``
(``task.random``) and gymnasium spaces sample from their own ``numpy.random.Generator``
(upstream's seed-phase actions are ``action_space.sample()``). TD-MPC2 wraps environments
several layers deep and differently per suite, so instead of naming each generator this
module finds them by walking the wrapper objects' attributes, keyed by attribute path.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import torch

MAX_DEPTH = 8
MAX_ITEMS = 64
_LEAVES = (str, bytes, int, float, bool, complex, np.ndarray, np.generic, torch.Tensor)
_SKIP = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, type)


def _generators(obj: Any) -> dict[str, Any]:
    """Every RandomState/Generator reachable from ``obj`` through attributes, by path."""
    found: dict[str, Any] = {}
    seen: set[int] = set()

    def walk(node: Any, path: str, depth: int) -> None:
        if node is None or isinstance(node, _LEAVES + _SKIP) or id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, np.random.RandomState | np.random.Generator):
            found[path] = node
            return
        if depth >= MAX_DEPTH:
            return
        if isinstance(node, list | tuple):
            items = [(str(i), v) for i, v in enumerate(node[:MAX_ITEMS])]
        elif isinstance(node, dict):
            items = [(str(k), v) for k, v in list(node.items())[:MAX_ITEMS] if isinstance(k, str)]
        else:
            attrs = getattr(node, "__dict__", None)
            items = list(attrs.items()) if isinstance(attrs, dict) else []
            items += _slot_items(node)  # e.g. dm_control's action_scale.Wrapper has only slots
        for key, value in items:
            walk(value, f"{path}.{key}", depth + 1)

    walk(obj, "env", 0)
    return found


def _slot_items(node: Any) -> list[tuple[str, Any]]:
    items = []
    for cls in type(node).__mro__:
        slots = getattr(cls, "__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(node, name):
                items.append((name, getattr(node, name)))
    return items


def env_rng_state(env: Any) -> dict[str, Any]:
    """The state of every generator of ``env`` (picklable; see :func:`set_env_rng_state`)."""
    state: dict[str, Any] = {}
    for path, gen in _generators(env).items():
        if isinstance(gen, np.random.RandomState):
            state[path] = ("RandomState", gen.get_state())
        else:
            state[path] = ("Generator", gen.bit_generator.state)
    return state


def set_env_rng_state(env: Any, state: dict[str, Any]) -> None:
    """Put the generators of ``env`` back to ``state`` from :func:`env_rng_state`.

    Raises ValueError if the environment has other generators than the saved one (a different
    task or wrapper stack), since the run would then not continue the same stream.
    """
    current = _generators(env)
    if set(current) != set(state):
        raise ValueError(
            "the environment's random generators differ from the checkpoint's "
            f"(checkpoint: {sorted(state)}, now: {sorted(current)}); resume with the same task "
            "and observation type as the run that wrote the checkpoint."
        )
    for path, (kind, value) in state.items():
        gen = current[path]
        if kind == "RandomState":
            gen.set_state(value)
        else:
            gen.bit_generator.state = value


def seed_action_space(env: Any, seed: int) -> None:
    """Seed the environment's action space, which gymnasium otherwise seeds from OS entropy.

    Upstream's seed-phase actions come from ``action_space.sample()``, so without this two runs
    with the same ``seed`` collect different data.
    """
    space = getattr(env, "action_space", None)
    if space is not None and hasattr(space, "seed"):
        space.seed(int(seed))
