"""Training checkpoints of the patched TD-MPC2 that a run can resume from.

Upstream saves only the model's weights, so a stopped run restarts with fresh Adam moments (and,
with SAM/Muon, fresh wrapper state) and an empty replay buffer. A checkpoint here holds the
agent (model, world-model and policy optimizer state incl. SAM's every-k counter and Muon's
momentum, running Q scale), the trainer's step and episode counters, the optimizer settings it
was trained with, and, next to it, the replay buffer (torchrl's ``dumps``). Checkpoints are
taken at episode boundaries, before that step's update, so a resumed run continues from there.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from flatrl.tdmpc2.optimizers import optimizer_settings
from flatrl.tdmpc2.runtime import is_unset

FORMAT = "flatrl-tdmpc2-checkpoint-1"


def buffer_dir(path: str | Path) -> Path:
    """Where the replay buffer of checkpoint ``path`` lives (``<name>.buffer/``)."""
    path = Path(path)
    return path.with_name(path.name + ".buffer")


def agent_state(agent: Any) -> dict[str, Any]:
    """Everything of the agent that training changes."""
    return {
        "model": agent.model.state_dict(),
        "optim": agent.optim.state_dict(),
        "pi_optim": agent.pi_optim.state_dict(),
        "scale": {k: v.detach().clone() for k, v in agent.scale.state_dict().items()},
    }


def save_checkpoint(path: str | Path, agent: Any, buffer: Any, step: int, episode: int) -> Path:
    """Write a resumable checkpoint (atomically: a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = agent_state(agent)
    state.update(
        format=FORMAT,
        step=int(step),
        episode=int(episode),
        num_eps=int(getattr(buffer, "num_eps", 0)),
        buffer_capacity=int(getattr(buffer, "capacity", 0)),
        optimizer=dataclasses.asdict(optimizer_settings(agent.cfg)),
    )
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    if getattr(buffer, "num_eps", 0) > 0:
        buffer.save(buffer_dir(path))
    return path


def check_resume(cfg: Any) -> None:
    """Fail before training if ``resume=true`` has no checkpoint file to resume from."""
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


def load_checkpoint(path: str | Path, agent: Any, buffer: Any) -> dict[str, int]:
    """Restore the agent (and buffer, if saved) from ``path``; returns step/episode counters."""
    state = torch.load(path, map_location=agent.device, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"checkpoint={path} is not a resumable checkpoint (a weights-only file such as "
            "final.pt from upstream can be evaluated but not resumed); use models/checkpoint.pt."
        )
    saved = state["optimizer"]
    current = dataclasses.asdict(optimizer_settings(agent.cfg))
    if (saved["name"], saved["scope"]) != (current["name"], current["scope"]):
        raise ValueError(
            f"checkpoint={path} was trained with optimizer={saved['name']} "
            f"sam_scope={saved['scope']}; resume with the same settings (got "
            f"optimizer={current['name']} sam_scope={current['scope']})."
        )
    agent.model.load_state_dict(state["model"])
    agent.optim.load_state_dict(state["optim"])
    agent.pi_optim.load_state_dict(state["pi_optim"])
    agent.scale.load_state_dict(state["scale"])
    if state["num_eps"] > 0:
        if not buffer_dir(path).is_dir():
            raise ValueError(
                f"checkpoint={path} has no replay buffer next to it ({buffer_dir(path)}); "
                "copy that folder along with the checkpoint."
            )
        buffer.restore(buffer_dir(path), state["num_eps"], state["buffer_capacity"])
    return {"step": int(state["step"]), "episode": int(state["episode"])}
