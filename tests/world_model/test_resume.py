"""Checkpoints: an interrupted and resumed run is the uninterrupted run, every run has its own
files, a checkpoint refuses to load into another controller, and saves are atomic and small."""

from __future__ import annotations

import os
import pickle

import gymnasium as gym
import pytest
import torch
from flatrl.agents.world_model import checkpoint
from flatrl.agents.world_model.cli import parse_config
from flatrl.agents.world_model.envs import describe_env, make_vector_env
from flatrl.agents.world_model.rollout import RolloutCollector
from flatrl.agents.world_model.train import train
from flatrl.agents.world_model.world_model import ModelConfig, WorldModel
from gymnasium.utils import EzPickle

A2C = ["--use-improved-controller", "--use-a2c", "--planning-horizon", "2"]
A2C += ["--planning-start-epoch", "1", "--update-epochs", "2", "--num-minibatches", "2"]


def _state(path: str) -> dict:
    return checkpoint.load(path, torch.device("cpu"))


@pytest.mark.parametrize(
    "extra",
    [A2C, [*A2C, "--optimizer", "sam", "--sam-every", "2"], []],
    ids=["a2c-adam", "a2c-sam-every-2", "reinforce-adam"],
)
def test_resumed_run_equals_the_uninterrupted_one(tiny_cartpole, tmp_path, extra):
    n = 3  # 3 epochs of 8 steps: CartPole episodes are in flight at the checkpoint
    whole = train(
        parse_config(tiny_cartpole(tmp_path / "a", tmp_path / "runs", *extra, "--max-epoch", "6"))
    )
    argv = tiny_cartpole(tmp_path / "b", tmp_path / "runs", *extra)
    first = train(parse_config([*argv, "--max-epoch", str(n)]))
    snap = _state(first.last_checkpoint)
    assert snap["collector"]["envs"] is not None  # CartPole's episodes in flight were saved
    assert snap["collector"]["reset_pending"].shape == (2,)
    second = train(parse_config([*argv, "--max-epoch", "6", "--resume"]))
    assert second.log_dir == first.log_dir
    assert [h["epoch"] for h in second.history] == [4, 5, 6]
    assert first.history + second.history == whole.history  # bitwise: floats compared with ==
    assert whole.history[-1]["mean_episode_reward"] is not None
    a, b = _state(whole.last_checkpoint), _state(second.last_checkpoint)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    ea, eb = a["collector"]["episodes"], b["collector"]["episodes"]
    assert {k: list(v) if hasattr(v, "__len__") else v for k, v in ea.items()} == {
        k: list(v) if hasattr(v, "__len__") else v for k, v in eb.items()
    }
    assert (a["epoch"], a["env_steps"], a["best_reward"]) == (
        b["epoch"],
        b["env_steps"],
        b["best_reward"],
    )


def test_checkpoint_holds_the_run_state_and_nothing_large(tiny_cartpole, tmp_path):
    result = train(parse_config(tiny_cartpole(tmp_path, tmp_path / "runs", "--max-epoch", "1")))
    state = _state(result.last_checkpoint)
    assert set(state) == {
        "kind",
        "env_name",
        "controller",
        "optimizer_name",
        "algorithm",
        "model_config",
        "model",
        "optimizer",
        "epoch",
        "env_steps",
        "best_reward",
        "collector",
        "log_dir",
        "rng",
    }
    assert len(pickle.dumps(state["collector"])) < 32_000  # no rollouts, a few KB of env state
    last = os.path.basename(result.last_checkpoint)
    # only what was asked for: the TensorBoard run, last_ and (once an episode ends) best_
    assert {"runs", last} <= set(os.listdir(tmp_path))
    assert set(os.listdir(tmp_path)) <= {"runs", last, last.replace("last_", "best_")}


def test_concurrent_runs_get_their_own_checkpoints(tmp_path):
    base = ["--env-name", "CartPole-v1", "--save-path", str(tmp_path) + "/"]
    variants = [
        [],
        ["--seed", "1"],
        ["--use-improved-controller"],
        ["--optimizer", "sam"],
        ["--use-a2c"],
    ]
    paths = {parse_config([*base, *v]).checkpoint_path(kind) for v in variants for kind in "ab"}
    assert len(paths) == 2 * len(variants)
    cfg = parse_config([*base, "--seed", "3", "--use-improved-controller", "--optimizer", "sam"])
    assert os.path.basename(cfg.checkpoint_path("last")) == (
        "last_CartPole-v1_improved_reinforce_sam_s3.pt"
    )


def test_checkpoint_of_another_controller_is_refused(tiny_cartpole, tmp_path):
    legacy = train(parse_config(tiny_cartpole(tmp_path, tmp_path / "runs", "--max-epoch", "1")))
    path = legacy.last_checkpoint
    argv = tiny_cartpole(tmp_path, tmp_path / "runs", "--max-epoch", "2")
    improved = [*argv, "--use-improved-controller"]
    with pytest.raises(ValueError, match="legacy controller.*drop --use-improved-controller"):
        train(parse_config([*improved, "--resume", path]))
    with pytest.raises(ValueError, match="legacy controller.*drop --use-improved-controller"):
        train(parse_config([*improved, "--load-path", path]))
    with pytest.raises(ValueError, match="optimizer 'adam'.*--optimizer"):
        train(parse_config([*argv, "--optimizer", "sam", "--resume", path]))
    old = checkpoint.load(path, torch.device("cpu"))
    del old["collector"]  # as written before the collector state was saved
    checkpoint.save(path, old)
    with pytest.raises(ValueError, match="pass it as --load-path"):
        train(parse_config([*argv, "--resume", path]))


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    checkpoint.save(path, {"epoch": 1})

    def crash(obj, f, *args, **kwargs):
        (f.write if hasattr(f, "write") else open(f, "wb").write)(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, {"epoch": 2})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["last.pt"]  # no half-written temporary left behind
    assert checkpoint.load(path, torch.device("cpu")) == {"epoch": 1}


class _EzTimingEnv(gym.Env, EzPickle):
    """An env that pickles its constructor arguments only (as Box2D envs do)."""

    observation_space = gym.spaces.Box(-10, 10, (2,))
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        EzPickle.__init__(self)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample() * 0, {}

    def step(self, action):
        return self.observation_space.sample() * 0, 1.0, False, False, {}


def test_envs_that_cannot_be_saved_resume_with_fresh_episodes():
    env_id = "FlatrlEzPickle-v0"
    if env_id not in gym.envs.registry:
        gym.register(env_id, entry_point=_EzTimingEnv, max_episode_steps=5)
    spec = describe_env(env_id)
    cfg = ModelConfig(z_dim=4, d_model=8, memory_window=3, memory_heads=2, planning_horizon=0)
    model = WorldModel(spec, cfg)
    envs = make_vector_env(env_id, 2, 0)
    collector = RolloutCollector(envs, model, 4, torch.device("cpu"), 0, 0.99)
    collector.collect()
    state = collector.state_dict()
    assert state["envs"] is None and "obs" not in state  # no frames kept without the envs
    fresh = RolloutCollector(make_vector_env(env_id, 2, 1), model, 4, torch.device("cpu"), 1, 0.99)
    assert fresh.load_state_dict(state) is False
    assert list(fresh.episodes.returns) == list(collector.episodes.returns)
    assert (fresh.episodes.ret == 0).all()
