"""Study files: every mistake fails before anything runs, with one message naming key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from flatrl.study.runner import plan
from flatrl.study.spec import StudyError, parse_study
from study_support import make_study, toy_raw


def error(**changes) -> str:
    with pytest.raises(StudyError) as info:
        parse_study(toy_raw(**changes), "toy.yaml")
    return str(info.value)


def test_unknown_top_level_key_names_key_and_suggestion():
    raw = toy_raw()
    raw["seed"] = [0]
    with pytest.raises(StudyError, match=r"unknown key 'seed'.*did you mean 'seeds'"):
        parse_study(raw, "toy.yaml")


def test_unknown_arm_key():
    msg = error(arms={"base": {"override": {"--quality": 1}}})
    assert "unknown key 'override' in arm 'base'" in msg and "'overrides'" in msg


def test_baseline_must_be_an_arm():
    msg = error(baseline="bse")
    assert "'baseline' = 'bse' is not an arm" in msg and "did you mean 'base'" in msg


@pytest.mark.parametrize("seeds", [None, []])
def test_missing_or_empty_seeds(seeds):
    raw = toy_raw()
    if seeds is None:
        del raw["seeds"]
    else:
        raw["seeds"] = seeds
    with pytest.raises(StudyError, match=r"'seeds' is missing or empty.*seeds: \[0, 1, 2, 3, 4\]"):
        parse_study(raw, "toy.yaml")


def test_duplicate_seeds():
    assert "'seeds' lists 1 more than once" in error(seeds=[0, 1, 1])


def test_unknown_entry_point():
    msg = error(entry_point="tdmpc")
    assert "'entry_point' = 'tdmpc' is not an entry point" in msg
    assert "did you mean 'tdmpc2'" in msg and "world_model" in msg


def test_unknown_entry_point_option_and_missing_required():
    assert "unknown key 'scrpt'" in error(entry_point={"type": "d3rlpy", "scrpt": "x.py"})
    assert "needs 'script'" in error(entry_point={"type": "d3rlpy"})


def test_override_of_a_runner_owned_key_is_refused():
    msg = error(entry_point="tdmpc2", arms={"a": {"overrides": {"seed": 3}}}, baseline=None)
    assert "arms.a sets 'seed'" in msg and "'seeds'" in msg
    msg = error(entry_point="world_model", arms={"a": ["--max_epoch", "9"]}, baseline=None)
    assert "'budget'" in msg


def test_bad_budget_and_report_settings():
    assert "'budget' must be a positive integer" in error(budget=0)
    assert "'report.final'" in error(report={"final": "best"})


def test_run_dirs_one_per_arm_and_seed_in_seed_major_order(tmp_path):
    # seed by seed, so a study stopped part-way has every arm at the same number of seeds
    runs = plan(make_study(), tmp_path)
    assert [r.run_dir.relative_to(tmp_path) for r in runs] == [
        Path("toy/base/seed_0"),
        Path("toy/better/seed_0"),
        Path("toy/base/seed_1"),
        Path("toy/better/seed_1"),
    ]


def test_adapters_put_seed_budget_dirs_and_resume_on_the_command_line(tmp_path):
    raw = toy_raw(
        entry_point="tdmpc2",
        overrides={"task": "cartpole-swingup", "compile": False},
        arms={"sam": ["optimizer=SAM", "sam_rho=0.1"]},
        baseline=None,
        seeds=[7],
        budget=600,
    )
    (run,) = plan(parse_study(raw, "t.yaml"), tmp_path)
    argv = run.entry_point.launch(run, resume=False).argv
    assert argv[1].endswith("build/tdmpc2/tdmpc2/train.py")
    for tok in ("task=cartpole-swingup", "compile=false", "optimizer=SAM", "sam_rho=0.1"):
        assert tok in argv
    assert {"seed=7", "steps=600", "exp_name=sam", "enable_wandb=false"} <= set(argv)
    # resume only once the run has left a checkpoint where train.py writes it
    assert not any(a.startswith("resume") for a in run.entry_point.launch(run, True).argv)
    ckpt = run.run_dir / "logs/cartpole-swingup/7/sam/models/checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    argv = run.entry_point.launch(run, resume=True).argv
    assert f"checkpoint={ckpt}" in argv and argv[-1] == "resume=true"
    (run.run_dir / "logs/cartpole-swingup/7/sam/eval.csv").write_text(
        "step,episode_reward\n0,1.5\n500,7.0\n"
    )
    series = run.entry_point.read_metric(run.run_dir, "episode_reward")
    assert series.steps.tolist() == [0, 500] and series.values.tolist() == [1.5, 7.0]

    raw = toy_raw(entry_point="sac", arms={"muon": {}}, baseline=None, seeds=[2], budget=1000)
    (run,) = plan(parse_study(raw, "t.yaml"), tmp_path)
    argv = run.entry_point.launch(run, resume=True).argv
    assert argv[1:3] == ["-m", "flatrl.agents.sac.train"] and argv[-1] == "resume=true"
    assert {"seed=2", "training.total_env_steps=1000"} <= set(argv)
    assert f"training.checkpoint_dir={run.run_dir / 'checkpoints'}" in argv

    raw = toy_raw(
        entry_point="world_model",
        arms={"sam": {"overrides": {"optimizer": "sam", "use-a2c": True, "sam-rho": 0.05}}},
        baseline=None,
        seeds=[1],
        budget=3,
    )
    (run,) = plan(parse_study(raw, "t.yaml"), tmp_path)
    argv = run.entry_point.launch(run, resume=False).argv
    joined = " ".join(argv)
    assert "--optimizer sam --use-a2c --sam-rho 0.05" in joined
    assert "--seed 1 --max-epoch 3" in joined and f"--log-dir {run.run_dir / 'tb'}" in joined
    last = run.run_dir / "checkpoints" / "last_CartPole-v1.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"x")
    assert run.entry_point.launch(run, resume=True).argv[-2:] == ["--resume", str(last)]
