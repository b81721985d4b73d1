"""Short CPU runs on cartpole-swingup: they finish, log to TensorBoard, checkpoint, and resume
exactly (a run of 2N steps and a run of N steps resumed for N more end in the same state and
log the same metrics, bit for bit); the checkpoint and its replay dump are one unit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from flatrl.agents.sac import checkpoint as checkpoint_module
from flatrl.agents.sac.buffer import dump_size
from flatrl.agents.sac.checkpoint import replay_dump, resolve_paths
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


def _run_dir(config: dict[str, Any]) -> Path:
    return resolve_paths(load_settings(config)).run_dir


def _tags(run_dir: Path) -> set[str]:
    return set(_scalars(run_dir))


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged scalar stream as (step, value) pairs, as TensorBoard shows it."""
    acc = event_accumulator.EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _deterministic(streams: dict[str, list[tuple[int, float]]]) -> dict[str, Any]:
    return {k: v for k, v in streams.items() if not k.startswith("time/")}


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
    assert replay_dump(resolve_paths(load_settings(config)), state).is_dir()
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

    # Continuing to 2000 steps lands exactly where the uninterrupted run did, and the logged
    # metric streams (train means, SAM sharpness, rank probes, evals) are the same, value for
    # value, including the ones logged at the checkpoint's own step.
    result = train(second)
    assert result["env_steps"] == 2000
    uninterrupted = _checkpoint(runs["muon"][0])
    _assert_same(uninterrupted["agent"], _checkpoint(second)["agent"], "agent")
    assert result["eval/return_mean"] == runs["muon"][1]["eval/return_mean"]
    expected = _deterministic(_scalars(_run_dir(runs["muon"][0])))
    resumed_streams = _deterministic(_scalars(_run_dir(second)))
    assert set(resumed_streams) == set(expected)
    for tag, stream in expected.items():
        assert resumed_streams[tag] == stream, tag
    assert any(step == 1000 for step, _ in expected["train/critic_loss"])


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


def test_logged_train_metrics_are_interval_means(tmp_path: Path) -> None:
    """Each train/* scalar is the mean over the updates since the previous log, not the last."""
    config = tiny_config(
        tmp_path,
        "method_name=means",
        "training.total_env_steps=1000",
        "training.critic_optimizer.sam.rho=0.05",
        "training.critic_optimizer.sam.every_k=2",
        "training.actor_update_freq=2",
    )
    settings = load_settings(config)
    trainer = Trainer(settings, config, resolve_paths(settings))
    recorded: list[tuple[int, dict[str, float]]] = []
    update = trainer.agent.update

    def recording_update(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        metrics = update(batch)
        recorded.append((trainer.env_steps, {k: float(v) for k, v in metrics.items()}))
        return metrics

    trainer.agent.update = recording_update  # type: ignore[method-assign]
    trainer.run()
    streams = _scalars(_run_dir(config))
    keys = (
        "train/critic_loss",
        "train/actor_loss",
        "train/critic_sam_sharpness",
        "train/critic_grad_norm",
    )
    for key in keys:
        logged = streams[key]
        assert len(logged) >= 3, key
        previous = 0
        for step, value in logged:
            values = [m[key] for s, m in recorded if previous < s <= step and key in m]
            previous = step
            assert values, (key, step)
            assert value == pytest.approx(sum(values) / len(values), rel=1e-6, abs=1e-7)
            if len(set(values)) > 1:
                assert value != pytest.approx(values[-1], rel=1e-9, abs=0), (key, step)


def test_rank_probe_does_not_change_training(tmp_path: Path) -> None:
    """Rank logging on or off: same parameters (spectral-norm vectors too) and same metrics."""
    common = [
        "training.total_env_steps=800",
        "model.spectral_norm=true",
        "model.num_layers=3",
        "training.rank_logging.every_n_updates=5",
        "training.rank_logging.max_samples=32",
    ]
    off = tiny_config(tmp_path, "method_name=rank_off", *common)
    on = tiny_config(tmp_path, "method_name=rank_on", *common, "training.rank_logging.enabled=true")
    train(off)
    train(on)
    _assert_same(_checkpoint(off)["agent"], _checkpoint(on)["agent"], "agent")
    with_probe = _deterministic(_scalars(_run_dir(on)))
    assert "repr/q1_effective_rank" in with_probe
    without = _deterministic(_scalars(_run_dir(off)))
    assert {k: v for k, v in with_probe.items() if not k.startswith("repr/")} == without


def test_replay_dump_holds_only_the_filled_transitions(runs: dict[str, Any]) -> None:
    """Nothing large unless there is data: the dump grows with the transitions, not the
    preallocated capacity (5000 here; the run holds 250 transitions)."""
    config, _ = runs["adamw"]
    dump = replay_dump(resolve_paths(load_settings(config)), _checkpoint(config))
    per_transition = (5 + 1 + 1 + 5 + 1) * 4 + 8  # obs, action, reward, next_obs, done, index
    assert dump_size(dump) < 250 * per_transition + 64_000
    assert dump_size(dump) < 5000 * per_transition / 4


def test_a_crash_while_saving_leaves_the_previous_checkpoint_and_its_dump(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Die between the replay dump and the checkpoint commit, even at the checkpoint's own step:
    the checkpoint on disk still names an intact dump of its own step, and resuming works."""
    config = tiny_config(tmp_path, *ADAMW, "training.total_env_steps=1000")
    train(config)
    paths = resolve_paths(load_settings(config))
    before = _checkpoint(config)
    dump = replay_dump(paths, before)
    inode = dump.stat().st_ino

    def crash(obj: Any, path: Any) -> None:
        raise KeyboardInterrupt("killed between the dump and the commit")

    monkeypatch.setattr(checkpoint_module, "atomic_save", crash)
    settings = load_settings(dict(config, resume=True))
    trainer = Trainer(settings, dict(config, resume=True), paths)
    trainer.prepare_run_dir()
    with pytest.raises(KeyboardInterrupt):
        trainer.save()  # a second save at the same env step
    monkeypatch.undo()
    after = _checkpoint(config)
    assert replay_dump(paths, after) == dump and dump.stat().st_ino == inode
    _assert_same(before["agent"], after["agent"], "agent")
    resumed = Trainer(settings, dict(config, resume=True), paths)
    resumed.prepare_run_dir()
    assert resumed.env_steps == 1000 and len(resumed.memory) == 1000 // 8
    # The next successful save removes the dumps no checkpoint names.
    resumed.save()
    assert [p.name for p in paths.replay_root.iterdir()] == [
        replay_dump(paths, _checkpoint(config)).name
    ]
