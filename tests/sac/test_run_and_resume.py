"""Short CPU runs on cartpole-swingup: they finish, log to TensorBoard, checkpoint, and resume
exactly (a run stopped at its checkpoint and resumed ends in the same state, bit for bit, as
one that never stopped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from flatrl.agents.sac.checkpoint import resolve_paths
from flatrl.agents.sac.settings import load_settings
from flatrl.agents.sac.train import train
from flatrl.agents.sac.trainer import Trainer

from .conftest import tiny_config

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="reading the TensorBoard event files needs the tensorboard package",
)

# Muon on both networks, SAM on the critic, both momentum schedules switching on mid-run and
# rank logging: every piece of state that resume has to restore is exercised.
MUON = [
    "method_name=muon_run",
    "training.actor_optimizer.case=muon",
    "training.critic_optimizer.case=muon",
    "training.critic_optimizer.sam.rho=0.05",
    "training.actor_momentum_schedule.enabled=true",
    "training.actor_momentum_schedule.start_step=60",
    "training.critic_momentum_schedule.enabled=true",
    "training.critic_momentum_schedule.start_step=60",
    "training.rank_logging.enabled=true",
    "training.rank_logging.every_n_updates=50",
    "training.rank_logging.max_samples=64",
]
ADAMW = [
    "method_name=adamw_run",
    "training.actor_optimizer.case=adamw",
    "training.critic_optimizer.case=adamw",
]


def _checkpoint(config: dict[str, Any]) -> dict[str, Any]:
    path = resolve_paths(load_settings(config)).checkpoint
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _tags(run_dir: Path) -> set[str]:
    acc = event_accumulator.EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return set(acc.Tags()["scalars"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sac_runs")
    out: dict[str, Any] = {"root": root}
    for name, overrides in (("adamw", ADAMW), ("muon", MUON)):
        config = tiny_config(root, *overrides, "training.total_env_steps=2000")
        out[name] = (config, train(config))
    return out


@pytest.mark.parametrize("case", ["adamw", "muon"])
def test_short_run_completes_logs_and_checkpoints(runs: dict[str, Any], case: str) -> None:
    config, result = runs[case]
    assert result["env_steps"] == 2000
    assert 0.0 <= result["eval/return_mean"] <= 1000.0
    state = _checkpoint(config)
    assert state["loop"]["env_steps"] == 2000
    assert state["agent"]["num_updates"] > 100
    assert Path(state["replay_path"]).is_dir()
    tags = _tags(resolve_paths(load_settings(config)).run_dir)
    expected = {
        "train/episode_return",
        "eval/return_mean",
        "train/critic_loss",
        "train/actor_loss",
        "train/alpha",
        "train/critic_grad_norm",
        "train/actor_grad_norm",
        "time/steps_per_second",
        f"critic/lr/{case}",
        f"critic/momentum/{case}",
    }
    if case == "muon":
        expected |= {
            "repr/q_effective_rank_mean",
            "repr/q1_effective_rank",
            "repr/q2_effective_rank",
            "repr/q1_top5_sv_mass",
            "critic/momentum/adamw",
            "actor/momentum/muon",
            "train/critic_sam_sharpness",
        }
    assert expected <= tags, expected - tags


def test_resume_restores_state_and_continues_exactly(runs: dict[str, Any]) -> None:
    root = runs["root"] / "resume"
    first = tiny_config(root, *MUON, "training.total_env_steps=1000")
    train(first)
    saved = _checkpoint(first)
    assert saved["loop"]["env_steps"] == 1000

    # The resumed trainer starts at the checkpoint's step with identical optimizer state.
    second = tiny_config(root, *MUON, "training.total_env_steps=2000", "resume=true")
    settings = load_settings(second)
    trainer = Trainer(settings, second, resolve_paths(settings))
    trainer.prepare_run_dir()
    assert trainer.env_steps == 1000
    resumed = trainer.agent.state_dict()
    for key in ("actor_opt", "critic_opt", "alpha_opt"):
        _assert_same(saved["agent"][key], resumed[key], key)
    assert resumed["critic_opt"]["schedule"]["current_step"] == saved["agent"]["num_updates"]
    muon_state = resumed["critic_opt"]["optimizer"]["base"]["optimizers"][0]["state"]
    assert muon_state and all("momentum_buffer" in s for s in muon_state.values())

    # Continuing to 2000 steps lands exactly where the uninterrupted run did.
    result = train(second)
    assert result["env_steps"] == 2000
    uninterrupted = _checkpoint(runs["muon"][0])
    _assert_same(uninterrupted["agent"], _checkpoint(second)["agent"], "agent")
    assert result["eval/return_mean"] == runs["muon"][1]["eval/return_mean"]


def test_fresh_start_refuses_to_overwrite_a_checkpoint(runs: dict[str, Any]) -> None:
    config, _ = runs["adamw"]
    with pytest.raises(ValueError, match="resume=true"):
        train(config)


def test_resume_with_an_incompatible_config_is_one_clear_error(runs: dict[str, Any]) -> None:
    root = runs["root"]
    config = tiny_config(root, *ADAMW[:1], "training.critic_optimizer.case=muon", "resume=true")
    with pytest.raises(ValueError, match="does not fit this config") as info:
        train(config)
    assert "training.critic_optimizer.case: 'adamw' -> 'muon'" in str(info.value)
