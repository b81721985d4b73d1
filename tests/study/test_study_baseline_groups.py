"""Per-group baselines, lower-is-better metrics and rank correlations in the study report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flatrl.study.report import aggregate, spearman, spearman_ci, write_report
from flatrl.study.runner import plan
from flatrl.study.spec import StudyError, load_study
from study_support import make_study

REPO = Path(__file__).resolve().parents[2]
GROUPED_ARMS = {"a-base": {}, "a-x": {}, "b-base": {}, "b-x": {}, "c-solo": {}}


def _grouped(**changes):
    raw = {
        "arms": GROUPED_ARMS,
        "baseline": {"groups": {"a": "a-base", "b": "b-base"}},
        **changes,
    }
    return make_study(**raw)


def test_group_baselines_longest_prefix_default_and_per_arm():
    study = _grouped()
    assert study.baseline_of("a-x") == "a-base" and study.baseline_of("b-x") == "b-base"
    assert study.baseline_of("a-base") is None and study.baseline_of("c-solo") is None
    # the longest prefix wins; default covers arms of no group; an arm's own key wins over both
    study = make_study(
        arms={"a-x": {}, "ab-base": {}, "ab-x": {"baseline": "a-x"}, "a-base": {}, "z": {}},
        baseline={"groups": {"a": "a-base", "ab": "ab-base"}, "default": "a-base"},
    )
    assert study.baseline_of("ab-x") == "a-x"  # per-arm
    assert study.baseline_of("ab-base") is None and study.baseline_of("a-x") == "a-base"
    assert study.baseline_of("z") == "a-base"
    # a plain baseline keeps its old meaning
    old = make_study()
    assert old.baseline == "base" and old.baseline_of("better") == "base"
    assert old.baseline_of("base") is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"baseline": {"groups": {"a": "a-bse"}}}, "did you mean 'a-base'"),
        ({"baseline": {"groups": {"a": "b-base"}}}, "is not in its own group"),
        ({"baseline": {"group": {"a": "a-base"}}}, "did you mean 'groups'"),
        ({"baseline": {"groups": {}}}, "must map name prefixes"),
        ({"arms": {**GROUPED_ARMS, "d": {"baseline": "nope"}}}, "'arms.d.baseline' = 'nope'"),
        ({"report": {"lower_is_better": "yes"}}, "lower_is_better"),
        ({"report": {"correlations": [["sharpness", "loss"]]}}, "names 'loss'"),
        ({"report": {"correlations": ["sharpness"]}}, "list of metric pairs"),
    ],
)
def test_bad_baseline_and_report_keys_fail_clearly(changes, message):
    with pytest.raises(StudyError) as err:
        _grouped(**changes)
    assert message in str(err.value)


def test_every_shipped_study_still_validates():
    for path in sorted((REPO / "studies").glob("*.yaml")):
        load_study(path)


def test_d3rlpy_offline_compares_each_arm_with_its_own_group():
    study = load_study(REPO / "studies/d3rlpy-offline.yaml")
    assert study.baseline_of("cql-lunarlander-sam0.05") == "cql-lunarlander-adam"
    assert study.baseline_of("td3plusbc-pendulum-asam0.5") == "td3plusbc-pendulum-adam"
    assert study.baseline_of("iql-halfcheetah-sam0.1") == "iql-halfcheetah-adam"
    assert all(study.baseline_of(a) is None for a in study.arms if a.endswith("-adam"))


def test_grouped_probability_of_improvement_matches_hand_counts():
    pytest.importorskip("rliable", reason="P(improvement) comes from rliable")
    scores = {
        "a-base": np.array([2.0, 1.0]),
        "a-x": np.array([2.0, 3.0]),
        "b-base": np.array([10.0, 10.0]),
        "b-x": np.array([2.0, 3.0]),
    }
    baselines = {"a-base": None, "a-x": "a-base", "b-base": None, "b-x": "b-base"}
    out = aggregate(scores, baselines, reps=100)
    # a-x vs a-base, pairs (2,2) tie 1/2, (2,1) 1, (3,2) 1, (3,1) 1 -> 3.5/4
    assert out["a-x"]["poi"] == pytest.approx(0.875) and out["a-x"]["baseline"] == "a-base"
    # the same scores against their own group's baseline: never better
    assert out["b-x"]["poi"] == pytest.approx(0.0) and out["b-x"]["baseline"] == "b-base"
    assert "poi" not in out["a-base"] and "poi" not in out["b-base"]


def test_lower_is_better_flips_improvement_and_its_interval():
    pytest.importorskip("rliable", reason="P(improvement) comes from rliable")
    scores = {"base": np.array([2.0, 1.0]), "x": np.array([2.0, 3.0])}
    out = aggregate(scores, "base", reps=300, lower_is_better=True)["x"]
    # P(x < base): (2,2) tie 1/2, every other pair 0 -> 0.5/4
    assert out["poi"] == pytest.approx(0.125)
    lo, hi = out["poi_ci"]
    assert 0.0 <= lo <= 0.125 <= hi <= 0.5  # the interval is of the lower-is-better P
    rng = np.random.default_rng(0)
    base, better = rng.normal(1.0, 0.1, 8), rng.normal(0.5, 0.1, 8)
    clear = aggregate({"base": base, "x": better}, "base", reps=200, lower_is_better=True)["x"]
    assert clear["poi"] == 1.0 and clear["poi_ci"][0] > 0.9


def test_spearman_against_hand_and_scipy():
    # ranks (1,2,3,4) vs (1,3,2,4): d^2 sums to 2, rho = 1 - 6*2/(4*(16-1)) = 0.8
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 30, 20, 40])) == pytest.approx(0.8)
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 4, 12).astype(float), rng.normal(size=12)  # ties in x
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    rho, (lo, hi) = spearman_ci(x, y, reps=300)
    assert lo <= rho <= hi
    assert np.isnan(spearman(np.ones(4), y[:4]))


def _finished_run(run, values: dict[str, float]) -> None:
    run.run_dir.mkdir(parents=True)
    header = "step," + ",".join(values)
    (run.run_dir / "metrics.csv").write_text(
        header + "\n" + "1," + ",".join(str(v) for v in values.values()) + "\n"
    )
    (run.run_dir / "done.json").write_text("{}")


def test_report_groups_lower_is_better_and_correlation(tmp_path):
    pytest.importorskip("rliable", reason="the report's intervals come from rliable")
    pytest.importorskip("matplotlib", reason="the report's figures")
    study = make_study(
        entry_point={"type": "command", "command": "true"},
        seeds=[0, 1, 2],
        metric="error",
        extra_metrics=["sharpness"],
        arms={"t1-adam": {}, "t1-sam": {}, "t2-adam": {}, "t2-sam": {}},
        baseline={"groups": {"t1": "t1-adam", "t2": "t2-adam"}},
        report={"reps": 100, "lower_is_better": True, "correlations": [["sharpness", "error"]]},
    )
    error = {"t1-adam": 2.0, "t1-sam": 1.0, "t2-adam": 20.0, "t2-sam": 30.0}
    for run in plan(study, tmp_path):
        e = error[run.arm] + 0.1 * run.seed
        _finished_run(run, {"error": e, "sharpness": e / 10})  # sharpness ranks as error
    text = write_report(study, tmp_path).read_text()
    assert "(lower is better)" in text and "P(arm < its baseline)" in text
    rows: dict[str, str] = {}
    for line in text.splitlines():  # the first row of each arm: the summary table
        rows.setdefault(line.split(" | ")[0].lstrip("| "), line)
    assert "1 [1, 1] vs t1-adam" in rows["t1-sam"]  # lower error than its own baseline
    assert "0 [0, 0] vs t2-adam" in rows["t2-sam"]
    assert "| baseline |" in rows["t1-adam"]
    corr = [line for line in text.splitlines() if line.startswith("| sharpness | error")]
    assert len(corr) == 3 and all("| 1 [1, 1] |" in line for line in corr)
    assert "(all) | 12 |" in corr[0] and "(group t1-adam) | 6 |" in corr[1]
    # pooled over the two groups: sam wins every pair in t1 and none in t2 -> 0.5
    assert "## Pooled over groups (tasks)" in text
    assert "| sam | adam | t1, t2 | 3 | 0.5 [" in text


def test_variant_is_the_name_after_the_groups_common_prefix():
    from flatrl.study.report import variant_of

    assert variant_of("iql-pendulum-sam0.01", "iql-pendulum-adam") == ("iql-pendulum", "sam0.01")
    assert variant_of("t1-asam0.5", "t1-adam") == ("t1", "asam0.5")  # common "t1-a" cut at "-"
    assert variant_of("cartpole-world_model-rho0.1", "cartpole-adam") == (
        "cartpole",
        "world_model-rho0.1",
    )


def _pooled_study(lower_is_better: bool = False):
    return make_study(
        entry_point={"type": "command", "command": "true"},
        seeds=[0, 1, 2],
        arms={a: {} for a in ("t1-adam", "t1-sam", "t2-adam", "t2-sam", "t1-muon")},
        baseline={"groups": {"t1": "t1-adam", "t2": "t2-adam"}},
        report={"reps": 200, "lower_is_better": lower_is_better},
    )


def _results(study, tmp_path, finals):
    from flatrl.study.report import RunResult

    out = {arm: [] for arm in study.arms}
    for run in plan(study, tmp_path):
        value = finals.get(run.arm, {}).get(run.seed)
        out[run.arm].append(RunResult(run, "finished" if value is not None else "pending"))
        out[run.arm][-1].final = value
    return out


def test_pooled_improvement_averages_per_group_hand_counts_over_groups(tmp_path):
    """rliable's P(improvement) over tasks: the mean of each group's pairwise count."""
    pytest.importorskip("rliable", reason="P(improvement) comes from rliable")
    from flatrl.study.report import pooled_improvement

    study = _pooled_study()
    finals = {
        "t1-adam": {0: 1.0, 1: 2.0, 2: 3.0},
        "t1-sam": {0: 2.0, 1: 3.0, 2: 4.0},
        "t2-adam": {0: 100.0, 1: 100.0, 2: 100.0},
        "t2-sam": {0: 50.0, 1: 150.0, 2: 150.0},
        "t1-muon": {0: 9.0, 1: 9.0, 2: 9.0},  # in one group only: not pooled
    }
    (pooled,) = pooled_improvement(study, _results(study, tmp_path, finals), reps=200)
    # t1: sam {2,3,4} vs adam {1,2,3}: 9 pairs, wins 1+2+3=6 (2>1; 3>1,2; 4>1,2,3), ties 2
    # (2=2, 3=3) -> (6 + 1) / 9; t2: 150 beats 100 twice per adam run, 50 never -> 6/9
    expected = ((6 + 1) / 9 + 6 / 9) / 2
    assert (pooled.variant, pooled.baseline_variant) == ("sam", "adam")
    assert pooled.groups == ["t1", "t2"] and pooled.runs_per_group == 3
    assert pooled.poi == pytest.approx(expected)
    lo, hi = pooled.poi_ci
    assert 0.0 <= lo <= expected <= hi <= 1.0
    # lower is better: the same scores, P(sam < adam) per group; t1: 2 < 3 is the one win,
    # the 2 ties count half -> (1 + 1) / 9; t2: 50 < 100 three times -> 3/9
    study_low = _pooled_study(lower_is_better=True)
    (low,) = pooled_improvement(
        study_low, _results(study_low, tmp_path / "low", finals), reps=200, lower_is_better=True
    )
    assert low.poi == pytest.approx(((1 + 1) / 9 + 3 / 9) / 2)
    # a seed missing in one group: each side keeps the seeds finished in all its groups
    del finals["t2-sam"][2]
    (part,) = pooled_improvement(study, _results(study, tmp_path / "part", finals), reps=200)
    assert part.runs_per_group == 2
