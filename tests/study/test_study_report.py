"""The report: scores from the runs' files, rliable intervals checked against numpy, report.md."""

from __future__ import annotations

import numpy as np
import pytest
from flatrl.study.metrics import Series, read_d3rlpy_csv, read_tensorboard
from flatrl.study.report import aggregate, collect, curve_band, final_score, write_report
from flatrl.study.runner import plan, run_local
from flatrl.study.spec import ReportSettings, StudyError
from study_support import make_study


def _iqm(x: np.ndarray) -> float:
    """Interquartile mean as rliable defines it (scipy trim_mean, 25% cut at each end)."""
    x = np.sort(np.asarray(x, dtype=float))
    cut = int(0.25 * len(x))
    return float(x[cut : len(x) - cut].mean())


def _iqm_rows(samples: np.ndarray) -> np.ndarray:
    s = np.sort(samples, axis=1)
    cut = int(0.25 * s.shape[1])
    return s[:, cut : s.shape[1] - cut].mean(axis=1)


def _numpy_bootstrap(x: np.ndarray, stat, reps: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap over runs (one task: stratified = plain), written independently."""
    rng = np.random.default_rng(seed)
    samples = x[rng.integers(0, len(x), size=(reps, len(x)))]
    lo, hi = np.percentile(stat(samples), [2.5, 97.5])
    return float(lo), float(hi)


def test_iqm_mean_and_cis_match_hand_and_numpy():
    pytest.importorskip("rliable", reason="the report's intervals come from rliable")
    scores = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0])
    rng = np.random.default_rng(0)
    other = rng.normal(10.0, 2.0, size=10)
    hand = aggregate({"a": scores}, baseline=None, reps=10)["a"]
    assert hand["iqm"] == pytest.approx(3.5)  # mean of 2, 3, 4, 5: the outlier is cut
    assert hand["mean"] == pytest.approx(121 / 8)
    out = aggregate({"b": other}, baseline=None, reps=2000)
    assert out["b"]["iqm"] == pytest.approx(_iqm(other))
    assert out["b"]["mean"] == pytest.approx(other.mean())
    for stat, key in ((_iqm_rows, "iqm_ci"), (lambda s: s.mean(axis=1), "mean_ci")):
        lo, hi = _numpy_bootstrap(other, stat, reps=100_000, seed=1)
        got = out["b"][key]
        tol = 0.12 * (hi - lo)  # ~8 standard errors of a 2000-replicate percentile
        assert got[0] == pytest.approx(lo, abs=tol) and got[1] == pytest.approx(hi, abs=tol)
        assert got[0] < out["b"][key.split("_")[0]] < got[1]


def test_probability_of_improvement_over_the_baseline():
    pytest.importorskip("rliable", reason="the report's intervals come from rliable")
    x, base = np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 5.0])
    # pairs won: 1>0; 2>0, 2=2 (half); 3>0, 3>2 -> 4.5 of 9
    out = aggregate({"base": base, "x": x}, baseline="base", reps=300)
    assert out["x"]["poi"] == pytest.approx(0.5)
    lo, hi = out["x"]["poi_ci"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    assert "poi" not in out["base"]
    clear = aggregate({"base": base, "x": base + 10}, baseline="base", reps=100)
    assert clear["x"]["poi"] == 1.0


def test_intervals_are_reproducible_and_independent_of_the_other_arms():
    pytest.importorskip("rliable", reason="the report's intervals come from rliable")
    rng = np.random.default_rng(0)
    base, a, b = (rng.normal(size=5) + shift for shift in (0.0, 0.3, 1.0))
    full = aggregate({"base": base, "a": a, "b": b}, baseline="base", reps=300)
    alone = aggregate({"base": base, "b": b}, baseline="base", reps=300)  # report --arms b
    np.random.seed(123)  # whatever the caller did to numpy's global generator
    again = aggregate({"base": base, "b": b}, baseline="base", reps=300)
    for key in ("iqm_ci", "mean_ci", "poi_ci"):
        assert full["b"][key] == alone["b"][key] == again["b"][key], key
    # and the caller's generator is left where it was
    np.random.seed(7)
    expected = np.random.random()
    np.random.seed(7)
    aggregate({"base": base, "b": b}, baseline="base", reps=50)
    assert np.random.random() == expected
    assert full["a"]["mean_ci"] != full["b"]["mean_ci"]


def test_final_score_last_or_mean_of_last_k():
    s = Series(np.arange(1.0, 6.0), np.array([1.0, 2.0, 3.0, 4.0, 10.0]))
    assert final_score(s, ReportSettings()) == 10.0
    assert final_score(s, ReportSettings(final="mean_last_k", k=3)) == pytest.approx(17 / 3)
    assert final_score(s, ReportSettings(final="mean_last_k", k=50)) == pytest.approx(4.0)


def test_curve_band_on_common_steps():
    a = Series(np.array([0.0, 10.0, 20.0]), np.array([0.0, 1.0, 2.0]))
    b = Series(np.array([0.0, 10.0]), np.array([2.0, 3.0]))  # shorter run: the band stops at 10
    grid, mean, lo, hi = curve_band([a, b], reps=200)
    assert grid.tolist() == [0.0, 10.0]
    assert mean.tolist() == [1.0, 2.0]
    assert (lo <= mean).all() and (mean <= hi).all()


def test_report_from_runs_marks_few_seeds_and_lists_failures(tmp_path):
    pytest.importorskip("rliable", reason="the report's intervals come from rliable")
    pytest.importorskip("matplotlib", reason="the report's figures")
    study = make_study(
        seeds=[0, 1, 2],
        arms={
            "base": {},
            "better": {"overrides": {"--quality": 2.0}},
            "broken": {"overrides": {"--fail": True}},
        },
        report={"final": "mean_last_k", "k": 3, "reps": 200},
    )
    run_local(plan(study, tmp_path), workers=2, progress=False, echo=lambda s: None)
    results = collect(study, tmp_path)
    # toy return = quality * step + 0.1 * seed; steps 3..5 -> quality * 4 + 0.1 * seed
    assert [r.final for r in results["base"]] == pytest.approx([4.0, 4.1, 4.2])
    assert [r.final for r in results["better"]] == pytest.approx([8.0, 8.1, 8.2])
    assert [r.final for r in results["broken"]] == [None] * 3
    path = write_report(study, tmp_path, command="python -m flatrl.study run toy.yaml")
    text = path.read_text()
    assert "| base | 3/3 ⚠ (<5) | 4.1 [" in text
    assert "| better | 3/3 ⚠ (<5) | 8.1 [" in text and "| 1 [1, 1] |" in text
    assert "| broken | 0/3 ⚠ (<5) | - | - | - |" in text
    assert f"`broken/seed_0`: failed: return code 3, log {tmp_path}/toy/broken/seed_0/run.log" in (
        text
    )
    assert "python -m flatrl.study run toy.yaml" in text and "seeds: 0, 1, 2" in text
    assert "budget: 5" in text and "| sharpness |" in text
    for png in ("curves_return.png", "curves_sharpness.png", "final_scores.png"):
        assert (path.parent / png).stat().st_size > 1000
        assert f"]({png})" in text


def test_d3rlpy_csv_reader(tmp_path):
    path = tmp_path / "environment.csv"
    path.write_text("1,1000,10.5\n2,2000,nan\n3,3000,30.0\n")
    series = read_d3rlpy_csv(path)
    assert series.steps.tolist() == [1000.0, 3000.0] and series.values.tolist() == [10.5, 30.0]


def test_d3rlpy_csv_written_by_two_processes_is_an_error_naming_the_fix(tmp_path):
    """Two launches of one run interleave their epochs in the same file (as found in a study
    run by two runners); keeping the last value per step would report a mix of both runs."""
    path = tmp_path / "seed_2" / "eval_return.csv"
    path.parent.mkdir()
    path.write_text("1,1000,-90\n3,3000,-70\n2,2000,-80\n4,4000,-60\n3,3000,-75\n")
    with pytest.raises(StudyError, match=r"step 2000 is logged after step 3000.*Delete the run"):
        read_d3rlpy_csv(path)


def test_tensorboard_reader_merges_files_of_a_resumed_run(tmp_path):
    pytest.importorskip("tensorboard", reason="SAC and world-model runs log to TensorBoard")
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    for part, steps in enumerate(([10, 20], [20, 30])):  # the resumed run re-logs step 20
        writer = EventFileWriter(str(tmp_path / "tb"), filename_suffix=f".{part}")
        for step in steps:
            value = Summary.Value(tag="eval/return_mean", simple_value=step + part)
            writer.add_event(
                Event(step=step, wall_time=float(part), summary=Summary(value=[value]))
            )
        writer.close()
    series = read_tensorboard(tmp_path / "tb", "eval/return_mean")
    assert series.steps.tolist() == [10.0, 20.0, 30.0]
    assert series.values.tolist() == [10.0, 21.0, 31.0]
    assert read_tensorboard(tmp_path / "tb", "eval/other") is None


def test_report_cli_scores_another_metric_for_a_subset_of_arms(tmp_path, capsys):
    pytest.importorskip("rliable", reason="the report's intervals come from rliable")
    pytest.importorskip("matplotlib", reason="the report's figures")
    import yaml
    from flatrl.study.cli import main
    from study_support import toy_raw

    raw = toy_raw(
        arms={"base": {}, "better": {"overrides": {"--quality": 2.0}}, "other": {}},
        report={"reps": 200},
    )
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(raw))
    study = make_study(**raw)
    run_local(plan(study, tmp_path), workers=2, progress=False, echo=lambda s: None)
    out = tmp_path / "report"
    argv = ["report", str(path), "--runs-root", str(tmp_path), "--out", str(out)]
    # toy sharpness = 1 / (step * quality): "better" is flatter; lower is better for it
    assert main([*argv, "--metric", "sharpness", "--lower-is-better", "--arms", "bett*"]) == 0
    text = (out / "report.md").read_text()
    assert "score per run: `sharpness`, last value (lower is better)" in text
    assert "| better | 2/2 ⚠ (<5) | 0.1 [0.1, 0.1] | 0.1 [0.1, 0.1] | 1 [1, 1] |" in text
    assert "| base | 2/2 ⚠ (<5) | 0.2 [0.2, 0.2] | 0.2 [0.2, 0.2] | baseline |" in text
    assert "| other |" not in text
    assert "--metric sharpness --lower-is-better" in text  # the report's own command
    assert main([*argv, "--metric", "nope"]) == 2
    assert "--metric 'nope' is not one of this study's metrics; choose from return, sharpness" in (
        capsys.readouterr().err
    )
