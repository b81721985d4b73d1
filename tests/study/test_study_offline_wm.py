"""The tdmpc2-offline-wm study file and the tdmpc2_offline entry point."""

from __future__ import annotations

from pathlib import Path

from flatrl.study.runner import plan
from flatrl.study.spec import load_study

REPO = Path(__file__).resolve().parents[2]
SCOPES = ("world_model", "encoder_dynamics", "dynamics", "reward_value")


def test_offline_wm_study_is_the_issue_design():
    study = load_study(REPO / "studies/tdmpc2-offline-wm.yaml")
    assert len(study.seeds) >= 5 and study.metric == "heldout_consistency"
    assert study.report.lower_is_better
    assert ("measured_sharpness", "heldout_consistency") in study.report.correlations
    tasks = {arm.overrides["task"] for arm in study.arms.values()}
    assert len(tasks) >= 2
    for task in tasks:
        arms = {a: arm.overrides for a, arm in study.arms.items() if arm.overrides["task"] == task}
        sam = {(o["sam_scope"], o["sam_rho"]) for o in arms.values() if o["optimizer"] == "SAM"}
        assert sam == {(s, r) for s in SCOPES for r in (0.01, 0.05, 0.1)}
        (adam,) = [a for a, o in arms.items() if o["optimizer"] == "Adam"]
        # every SAM arm of the task is compared with that task's Adam arm
        assert all(study.baseline_of(a) == adam for a in arms if a != adam)


def test_offline_entry_point_launch_and_resume(tmp_path):
    study = load_study(REPO / "studies/tdmpc2-offline-wm.yaml")
    run = next(r for r in plan(study, tmp_path) if r.arm == "cartpole-sam-dynamics-0.05")
    ep = run.entry_point
    argv = ep.launch(run, resume=True).argv
    assert argv[1:4] == ["-m", "flatrl.tdmpc2.offline", "train"] and ".venv/tdmpc2" in argv[0]
    for item in ("optimizer=SAM", "sam_scope=dynamics", "sam_rho=0.05", "task=cartpole-swingup"):
        assert item in argv
    assert f"run_dir={run.run_dir}" in argv and "steps=600" in argv and "seed=0" in argv
    assert "resume=true" not in argv and not ep.can_resume(run.run_dir)  # nothing to resume
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "checkpoint.pt").write_bytes(b"")
    assert "resume=true" in ep.launch(run, resume=True).argv and ep.can_resume(run.run_dir)
    (run.run_dir / "metrics.csv").write_text("step,heldout_consistency\n0,0.5\n100,\n200,0.25\n")
    series = ep.read_metric(run.run_dir, "heldout_consistency")
    assert series.steps.tolist() == [0, 200] and series.values.tolist() == [0.5, 0.25]
