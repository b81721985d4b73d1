"""Training checkpoints of the patched TD-MPC2 that a run resumes from exactly.

Upstream saves only the model's weights, so a stopped run restarts with fresh Adam moments (and,
with SAM/Muon, fresh wrapper state), an empty replay buffer and the start of every random
stream. A checkpoint here is ONE file, written atomically (:func:`flatrl.runtime.atomic_save`),
that holds everything a run changes:

* the agent: model, world-model and policy optimizer state (SAM's every-k counter, Muon's
  momentum), running Q scale and the last SAM metrics;
* the replay buffer: its storage, writer position and episode count (so a wrapped buffer keeps
  evicting the oldest data first);
* the trainer's step, episode and elapsed-time counters;
* every random state: Python, NumPy, torch CPU and CUDA (:func:`flatrl.runtime.rng_state`) and
  the environment's own generators (:mod:`flatrl.tdmpc2.env_rng`);
* the logs: ``eval.csv``, ``train.csv``, ``pretrain.csv`` as they were, so a resumed run
  continues their history (rows logged after the checkpoint by a run that then stopped are
  dropped: the resumed run logs them again).

Checkpoints are taken at episode ends, after that step's evaluation and logging and before the
environment is reset, so a resumed run takes the very steps the uninterrupted run takes next:
2N steps equal N steps plus a resume for N more.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from flatrl.runtime import atomic_save, rng_state, set_rng_state
from flatrl.tdmpc2.env_rng import env_rng_state, set_env_rng_state
from flatrl.tdmpc2.optimizers import SAM_KEYS, OptimizerSettings, optimizer_settings
from flatrl.tdmpc2.runtime import is_unset

FORMAT = "flatrl-tdmpc2-checkpoint-2"


def agent_state(agent: Any) -> dict[str, Any]:
    """Everything of the agent that training changes."""
    return {
        "model": agent.model.state_dict(),
        "optim": agent.optim.state_dict(),
        "pi_optim": agent.pi_optim.state_dict(),
        "scale": {k: v.detach().clone() for k, v in agent.scale.state_dict().items()},
        "sam_metrics": dict(getattr(agent, "_sam_metrics", {})),
    }


def load_agent_state(agent: Any, state: dict[str, Any]) -> None:
    """Restore what :func:`agent_state` saved."""
    agent.model.load_state_dict(state["model"])
    agent.optim.load_state_dict(state["optim"])
    agent.pi_optim.load_state_dict(state["pi_optim"])
    agent.scale.load_state_dict(state["scale"])
    if hasattr(agent, "_sam_metrics"):
        device = getattr(agent, "device", None)
        agent._sam_metrics = {
            k: v.to(device) if isinstance(v, torch.Tensor) and device is not None else v
            for k, v in state.get("sam_metrics", {}).items()
        }


def save_checkpoint(
    path: str | Path,
    agent: Any,
    buffer: Any,
    step: int,
    episode: int,
    *,
    env: Any = None,
    logger: Any = None,
    elapsed_time: float = 0.0,
) -> Path:
    """Write a resumable checkpoint to ``path`` as one atomic file (see the module doc)."""
    state: dict[str, Any] = {
        "format": FORMAT,
        "step": int(step),
        "episode": int(episode),
        "elapsed_time": float(elapsed_time),
        "optimizer": dataclasses.asdict(optimizer_settings(agent.cfg)),
        "agent": agent_state(agent),
        "buffer": buffer.state_dict() if hasattr(buffer, "state_dict") else None,
        "rng": rng_state(),
        "env_rng": env_rng_state(env) if env is not None else None,
        "logs": logger.state_dict() if hasattr(logger, "state_dict") else None,
    }
    return atomic_save(state, path)


def check_checkpointing(cfg: Any) -> None:
    """Fail before training on a bad ``checkpoint_freq`` or a ``resume=true`` without a file."""
    freq = (
        cfg.get("checkpoint_freq", 0) if hasattr(cfg, "get") else getattr(cfg, "checkpoint_freq", 0)
    )
    if isinstance(freq, bool) or not isinstance(freq, int) or freq < 0:
        raise ValueError(
            f"checkpoint_freq must be an integer >= 0, got {freq!r}: the env steps between "
            "checkpoints (taken at episode ends), 0 for none (the default)."
        )
    if not bool(getattr(cfg, "resume", False)):
        return
    if getattr(cfg, "multitask", False):
        raise ValueError(
            f"resume=true is supported for single-task online training only; task={cfg.task} "
            "trains offline on the multi-task dataset: drop resume=true."
        )
    checkpoint = getattr(cfg, "checkpoint", None)
    if is_unset(checkpoint):
        raise ValueError(
            "resume=true needs checkpoint=<path to a .pt file written by a previous run>, e.g. "
            "checkpoint=logs/<task>/<seed>/<exp_name>/models/checkpoint.pt."
        )
    if not Path(str(checkpoint)).is_file():
        raise ValueError(f"checkpoint={checkpoint} does not exist; resume=true needs that file.")


def _variant(settings: OptimizerSettings) -> dict[str, Any]:
    """The SAM variant and the options it uses, by TD-MPC2 key (empty without SAM)."""
    if settings.name != "sam":
        return {}
    used = settings.sam_config().as_dict()  # holds only the options of its own variant
    options = ("looksam_alpha", "aesam_c", "aesam_decay")
    return {SAM_KEYS["variant"]: settings.variant} | {
        SAM_KEYS[k]: used[k] for k in options if k in used
    }


def check_same_optimizer(path: str | Path, saved: dict[str, Any], now: OptimizerSettings) -> None:
    """Refuse to resume with another optimizer, SAM scope, or SAM variant and its options.

    Another variant cannot continue the saved optimizer state (plain SAM would drop
    Momentum-SAM's w and resume from its perturbed weights; LookSAM's stored direction would be
    ignored), and changed variant options would make the resumed run another run. Checkpoints
    written before the variant keys existed hold plain SAM.
    """
    was = OptimizerSettings(**saved)  # absent variant fields: their defaults (plain SAM)
    if (was.name, was.scope) != (now.name, now.scope):
        raise ValueError(
            f"checkpoint={path} was trained with optimizer={was.name} sam_scope={was.scope}; "
            f"resume with the same settings (got optimizer={now.name} sam_scope={now.scope})."
        )
    if _variant(was) != _variant(now):

        def show(v: dict[str, Any]) -> str:
            return " ".join(f"{k}={x}" for k, x in v.items())

        raise ValueError(
            f"checkpoint={path} was trained with {show(_variant(was))}; resume with the same "
            f"SAM variant settings (got {show(_variant(now))})."
        )


def load_checkpoint(
    path: str | Path, agent: Any, buffer: Any, *, env: Any = None, logger: Any = None
) -> dict[str, Any]:
    """Restore agent, buffer, logs and (last) every random state from ``path``.

    Returns the trainer's counters ``step``, ``episode`` and ``elapsed_time``. Call it when
    nothing else will draw random numbers before training continues.
    """
    # On the CPU: random states must stay CPU tensors; each part goes to its own device below.
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        old = isinstance(state, dict) and str(state.get("format", "")).startswith("flatrl-")
        raise ValueError(
            f"checkpoint={path} is not a resumable checkpoint of this version "
            + (
                "(written by an older flatrl, without random states: start a new run)."
                if old
                else "(a weights-only file such as final.pt can be evaluated but not resumed); "
                "use models/checkpoint.pt of a run with checkpoint_freq > 0."
            )
        )
    check_same_optimizer(path, state["optimizer"], optimizer_settings(agent.cfg))
    load_agent_state(agent, state["agent"])
    if state["buffer"] is not None and hasattr(buffer, "load_state_dict"):
        buffer.load_state_dict(state["buffer"])
    if state["logs"] is not None and hasattr(logger, "load_state_dict"):
        logger.load_state_dict(state["logs"])
    if state["env_rng"] is not None and env is not None:
        set_env_rng_state(env, state["env_rng"])
    set_rng_state(state["rng"])
    return {
        "step": int(state["step"]),
        "episode": int(state["episode"]),
        "elapsed_time": float(state["elapsed_time"]),
    }
