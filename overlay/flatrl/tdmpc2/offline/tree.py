"""Import the patched TD-MPC2 tree (``build/tdmpc2/tdmpc2``) and build its config and agent.

TD-MPC2 is not an installable package: its modules import each other by top-level names
(``common``, ``envs``, ``tdmpc2``), and ``train.py`` runs from the tree's folder. This module
puts that folder on ``sys.path`` (``$FLATRL_TDMPC2_TREE`` overrides where it is) and builds the
config the way ``train.py`` does, without a Hydra app: ``config.yaml`` + overrides +
``parse_cfg`` + :func:`flatrl.tdmpc2.runtime.configure_runtime`. Every TD-MPC2 key is accepted
as an override (``optimizer``, ``sam_scope``, ``sam_rho``, ... and any key a later patch adds to
``config.yaml``); a key the tree does not know is one clear error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def repo_root() -> Path:
    """The flatrl checkout (``overlay/flatrl/tdmpc2/offline`` -> four levels up), or
    ``$FLATRL_ROOT``."""
    env = os.environ.get("FLATRL_ROOT")
    return Path(env) if env else Path(__file__).resolve().parents[4]


def tree_dir() -> Path:
    """The patched tree's ``tdmpc2/`` folder; fails with how to build it if it is missing."""
    env = os.environ.get("FLATRL_TDMPC2_TREE")
    path = Path(env) if env else repo_root() / "build" / "tdmpc2" / "tdmpc2"
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"no patched TD-MPC2 tree at {path}: build it with "
            "`python3 apply_patches.py apply tdmpc2` (or set FLATRL_TDMPC2_TREE)."
        )
    return path


def import_tree() -> Path:
    """Make ``common``, ``envs`` and ``tdmpc2`` importable; returns the tree folder."""
    path = tree_dir()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    return path


def config_keys() -> list[str]:
    """The keys of the tree's ``config.yaml`` (what an override may set)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(import_tree() / "config.yaml")
    return [k for k in cfg.keys() if k != "defaults"]


def make_cfg(overrides: dict[str, Any], facts: dict[str, Any]) -> Any:
    """TD-MPC2's parsed config: ``config.yaml`` <- ``overrides``, then the task's ``facts``
    (``obs_shape``, ``action_dim``, ``episode_length``) that ``make_env`` would fill in."""
    path = import_tree()
    import hydra.utils
    from omegaconf import OmegaConf

    unknown = sorted(set(overrides) - set(config_keys()))
    if unknown:
        import difflib

        hints = [difflib.get_close_matches(k, config_keys(), n=1) for k in unknown]
        said = ", ".join(
            k + (f" (did you mean {h[0]}?)" if h else "")
            for k, h in zip(unknown, hints, strict=True)
        )
        raise ValueError(
            f"unknown TD-MPC2 setting(s): {said}; allowed are the keys of {path / 'config.yaml'}."
        )
    cfg = OmegaConf.load(path / "config.yaml")
    cfg.pop("defaults", None)
    for key, value in overrides.items():
        cfg[key] = value
    # parse_cfg asks Hydra for the launch directory (work_dir); outside a Hydra app there is none
    original = hydra.utils.get_original_cwd
    hydra.utils.get_original_cwd = lambda: str(path)
    try:
        from common.parser import parse_cfg

        cfg = parse_cfg(cfg)
    finally:
        hydra.utils.get_original_cwd = original
    from flatrl.tdmpc2.config import validate_cfg
    from flatrl.tdmpc2.runtime import configure_runtime

    configure_runtime(cfg)
    validate_cfg(cfg)
    for key, value in facts.items():
        setattr(cfg, key, value)
    if "episode_length" in facts:  # no seed phase offline; TD-MPC2 wants >= one episode
        cfg.seed_steps = int(facts["episode_length"])
    return cfg


def make_agent(cfg: Any) -> Any:
    """The patched ``TDMPC2`` agent (our optimizers: ``optimizer=Adam|SAM|Muon``, ``sam_*``)."""
    import_tree()
    from tdmpc2 import TDMPC2

    return TDMPC2(cfg)


def make_buffer(cfg: Any) -> Any:
    """TD-MPC2's replay buffer (``common.buffer.Buffer``), which samples H+1-step slices."""
    import_tree()
    from common.buffer import Buffer

    return Buffer(cfg)
