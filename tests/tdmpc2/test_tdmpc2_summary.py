"""flatrl.tdmpc2.summary on run folders it must not misreport: no evaluation, other eval
columns, no models, no train metrics (the full run's summary is tested in test_runs.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

summary = pytest.importorskip("flatrl.tdmpc2.summary", reason="flatrl is not installed")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_run_without_evaluation_or_models_says_so(tmp_path: Path):
    text = summary.run_summary(SimpleNamespace(work_dir=tmp_path), tmp_path / "models")
    assert "final eval:  none ran" in text
    assert "models:      none saved" in text
    assert "last update" not in text and "continue:" not in text
    assert f"column -s, -t < {tmp_path / 'eval.csv'}" in text


def test_eval_columns_other_than_episode_reward_are_reported(tmp_path: Path):
    _write(
        tmp_path / "eval.csv", "step,episode_success,episode_reward_mt\n0,0.0,3\n2000,0.75,12.5\n"
    )
    _write(tmp_path / "models" / "final.pt", "")
    text = summary.run_summary(SimpleNamespace(work_dir=tmp_path), tmp_path / "models")
    assert "final eval:  episode_success 0.75, episode_reward_mt 12.5 at step 2,000" in text
    assert f"models:      {tmp_path / 'models'} (final.pt)" in text


def test_best_and_final_evaluation_differ_when_the_run_got_worse(tmp_path: Path):
    _write(tmp_path / "eval.csv", "step,episode_reward\n0,1.0\n500,90.25\n1000,40.0\n")
    _write(tmp_path / "train.csv", "step,total_loss\n1000,0.5\n")
    text = summary.run_summary(SimpleNamespace(work_dir=tmp_path), tmp_path / "models")
    assert "episode_reward 40.0 at step 1,000 (best 90.2 over 3 evaluations)" in text
    assert "last update: loss 0.5 (step 1,000)" in text
