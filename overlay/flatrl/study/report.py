"""The report of a study: final scores, rliable interval estimates, figures, ``report.md``.

One score per run (the metric's last value, or the mean of its last k values); per arm the
interquartile mean (IQM) and the mean with 95% stratified-bootstrap confidence intervals, and the
probability that the arm improves on the baseline (Agarwal et al., 2021, "Deep RL at the Edge
of the Statistical Precipice", via ``rliable``). Arms with fewer than ``report.min_seeds``
finished seeds are marked, not hidden: with 3 seeds an interval says little.

Each arm is compared with its own baseline (``Study.baseline_of``: one study-wide arm, or the
baseline of its group). With ``report.lower_is_better`` (an error metric) the probability of
improvement is P(arm < baseline). ``report.correlations`` adds Spearman rank correlations
between two metrics' final values across runs, with a bootstrap CI over runs, pooled and per
baseline group ("does lower sharpness go with lower held-out error?").

With baseline groups (one per task: ``iql-pendulum``, ``td3plusbc-lunarlander``, ...) the report
also pools each *variant* (the arm's name after its group's common prefix: ``sam0.01``) over
the groups that have it, as rliable does over tasks: P(variant improves on its group's
baseline), averaged over groups, with a stratified-bootstrap CI (runs resampled within each
group). Probability of improvement is scale-free, so tasks with returns of -400 and +250 pool
without a normalisation that would itself be a choice.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flatrl.study.metrics import Series
from flatrl.study.runner import FINISHED, STATUS, Run, plan, read_json, run_state
from flatrl.study.spec import ReportSettings, Study


@dataclass
class RunResult:
    run: Run
    state: str
    series: dict[str, Series | None] = field(default_factory=dict)
    final: float | None = None
    problem: str = ""


@dataclass
class ArmSummary:
    arm: str
    runs: list[RunResult]
    scores: np.ndarray
    iqm: float = math.nan
    iqm_ci: tuple[float, float] = (math.nan, math.nan)
    mean: float = math.nan
    mean_ci: tuple[float, float] = (math.nan, math.nan)
    poi: float | None = None  # P(this arm > baseline); None for the baseline itself
    poi_ci: tuple[float, float] | None = None

    @property
    def n(self) -> int:
        return len(self.scores)


def final_score(series: Series, settings: ReportSettings) -> float:
    """The last value, or the mean of the last k (fewer if the run logged fewer)."""
    if settings.final == "mean_last_k":
        return float(np.mean(series.values[-settings.k :]))
    return float(series.values[-1])


def collect(study: Study, runs_root: str | Path) -> dict[str, list[RunResult]]:
    """Every run's state and curves; finished runs get their final score."""
    metrics = (study.metric, *study.extra_metrics)
    out: dict[str, list[RunResult]] = {arm: [] for arm in study.arms}
    for run in plan(study, runs_root):
        result = RunResult(run, run_state(run))
        try:
            for name in metrics:
                result.series[name] = run.entry_point.read_metric(run.run_dir, name)
        except RuntimeError as err:  # e.g. TensorBoard logs but no tensorboard package
            result.problem = str(err)
        main = result.series.get(study.metric)
        if result.state == FINISHED:
            if main is None or len(main) == 0:
                result.problem = result.problem or (
                    f"finished, but no '{study.metric}' values in its logs"
                )
            else:
                result.final = final_score(main, study.report)
        out[run.arm].append(result)
    return out


def _require_rliable():
    try:
        from rliable import library, metrics
    except ImportError as err:
        raise RuntimeError(
            "the report needs rliable (pip install rliable==1.2.0 arch==7.2.0 'pandas<3'); "
            f"import failed: {err}"
        ) from err
    return library, metrics


def aggregate(
    scores: dict[str, np.ndarray],
    baseline: str | dict[str, str | None] | None,
    reps: int = 2000,
    seed: int = 0,
    lower_is_better: bool = False,
) -> dict[str, dict[str, object]]:
    """IQM and mean with 95% stratified-bootstrap CIs per arm; P(arm improves on its baseline)
    with its CI.

    ``scores[arm]`` is a 1-D array (one final score per run, a single task). An arm with one
    run gets its point estimates and a zero-width interval (there is nothing to resample).
    ``baseline`` is one arm for all, or ``{arm: its baseline arm or None}``. Improvement is
    P(arm > baseline), or P(arm < baseline) with ``lower_is_better`` (ties count half).
    """
    library, metrics = _require_rliable()
    if not isinstance(baseline, dict):
        baseline = {arm: (baseline if arm != baseline else None) for arm in scores}
    return _aggregate(library, metrics, scores, baseline, reps, seed, lower_is_better)


@contextlib.contextmanager
def _seeded_numpy(seed: int) -> Iterator[None]:
    """rliable's bootstrap draws its resamples from numpy's global generator (its
    ``random_state`` argument does not reach them), so seed that for the block and put the
    caller's state back after: the same scores give the same intervals on every run."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _stream(seed: int, name: str) -> int:
    """The bootstrap's random stream for one arm (or arm,baseline pair): from its name, so an
    arm's interval is the same whichever other arms are in the report (``--arms``)."""
    return (seed + zlib.crc32(name.encode())) % 2**32


def _aggregate(
    library, metrics, scores, baselines, reps, seed, lower_is_better
) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}

    def iqm_and_mean(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)])

    for arm, values in scores.items():
        values = np.asarray(values, dtype=float)
        entry: dict[str, object] = {"n": len(values)}
        if len(values) == 0:
            out[arm] = entry
            continue
        matrix = values.reshape(-1, 1)
        if len(values) == 1:
            point, lo, hi = iqm_and_mean(matrix), iqm_and_mean(matrix), iqm_and_mean(matrix)
        else:
            with _seeded_numpy(_stream(seed, arm)):
                points, cis = library.get_interval_estimates({arm: matrix}, iqm_and_mean, reps=reps)
            point, lo, hi = points[arm], cis[arm][0], cis[arm][1]
        entry.update(
            iqm=float(point[0]),
            iqm_ci=(float(lo[0]), float(hi[0])),
            mean=float(point[1]),
            mean_ci=(float(lo[1]), float(hi[1])),
        )
        out[arm] = entry

    def improvement(x: np.ndarray, y: np.ndarray) -> float:
        # rliable's P(X > Y); for an error metric the arm improves when it is lower
        return (
            metrics.probability_of_improvement(y, x)
            if lower_is_better
            else (metrics.probability_of_improvement(x, y))
        )

    for arm, values in scores.items():
        baseline = baselines.get(arm)
        if baseline is None or len(values) == 0 or len(scores.get(baseline, [])) == 0:
            continue
        base = np.asarray(scores[baseline], dtype=float).reshape(-1, 1)
        x = np.asarray(values, dtype=float).reshape(-1, 1)
        if min(len(x), len(base)) < 2:
            p = float(improvement(x, base))
            out[arm].update(poi=p, poi_ci=(p, p), baseline=baseline)
            continue
        key = f"{arm},{baseline}"
        with _seeded_numpy(_stream(seed, key)):
            points, cis = library.get_interval_estimates({key: (x, base)}, improvement, reps=reps)
        ci = np.asarray(cis[key]).reshape(-1)
        out[arm].update(
            poi=float(points[key]), poi_ci=(float(ci[0]), float(ci[1])), baseline=baseline
        )
    return out


def variant_of(arm: str, baseline: str) -> tuple[str, str]:
    """``(group, variant)`` from an arm and its baseline: the common name prefix up to its last
    ``-`` is the group, the rest of the arm's name the variant (``iql-pendulum-sam0.01`` vs
    ``iql-pendulum-adam``: ``iql-pendulum``, ``sam0.01``)."""
    common = os.path.commonprefix([arm, baseline])
    cut = common.rfind("-") + 1
    return arm[: max(cut - 1, 0)], arm[cut:]


@dataclass
class PooledComparison:
    """One variant against its groups' baselines, pooled over the groups (tasks)."""

    variant: str
    baseline_variant: str
    groups: list[str]
    runs_per_group: int
    poi: float
    poi_ci: tuple[float, float]


def pooled_improvement(
    study: Study,
    results: dict[str, list[RunResult]],
    reps: int = 2000,
    seed: int = 0,
    lower_is_better: bool = False,
) -> list[PooledComparison]:
    """P(variant improves on its group's baseline), averaged over the groups that have both,
    for every variant found in at least two groups (see the module docstring).

    rliable needs a runs x tasks matrix, so each side keeps the seeds finished in all of its
    groups (a study stopped part-way pools only its common seeds; ``runs_per_group`` says how
    many).
    """
    by_variant: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for arm in study.arms:
        baseline = study.baseline_of(arm)
        if baseline is None:
            continue
        group, variant = variant_of(arm, baseline)
        base_variant = variant_of(baseline, arm)[1]
        by_variant.setdefault((variant, base_variant), []).append((group, arm, baseline))
    finals = {
        arm: {r.run.seed: r.final for r in runs if r.final is not None}
        for arm, runs in results.items()
    }
    library, metrics = _require_rliable()
    out = []
    for (variant, base_variant), members in by_variant.items():
        members = [m for m in members if finals.get(m[1]) and finals.get(m[2])]
        if len(members) < 2:
            continue
        x_seeds = sorted(set.intersection(*(set(finals[m[1]]) for m in members)))
        y_seeds = sorted(set.intersection(*(set(finals[m[2]]) for m in members)))
        n = min(len(x_seeds), len(y_seeds))
        if n < 1:
            continue
        x = np.array([[finals[m[1]][s] for m in members] for s in x_seeds[:n]], dtype=float)
        y = np.array([[finals[m[2]][s] for m in members] for s in y_seeds[:n]], dtype=float)
        if lower_is_better:
            x, y = -x, -y  # P(arm < baseline) is P(-arm > -baseline), ties count half either way
        key = f"pooled:{variant},{base_variant}"
        if n < 2:
            p = float(metrics.probability_of_improvement(x, y))
            ci = (p, p)
        else:
            with _seeded_numpy(_stream(seed, key)):
                points, cis = library.get_interval_estimates(
                    {key: (x, y)}, metrics.probability_of_improvement, reps=reps
                )
            p = float(points[key])
            bounds = np.asarray(cis[key]).reshape(-1)
            ci = (float(bounds[0]), float(bounds[1]))
        out.append(PooledComparison(variant, base_variant, [m[0] for m in members], n, p, ci))
    return out


def _pooled_lines(comparisons: list[PooledComparison], lower_is_better: bool) -> list[str]:
    if not comparisons:
        return []
    op = "<" if lower_is_better else ">"
    lines = [
        "## Pooled over groups (tasks)",
        "",
        f"P(variant {op} its group's baseline), averaged over the groups that have both, with a "
        "95% stratified-bootstrap CI (runs resampled within each group; rliable). Each side "
        "keeps the seeds finished in all of its groups.",
        "",
        f"| variant | vs | groups | runs per group | P(variant {op} baseline) [95% CI] |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in comparisons:
        lines.append(
            f"| {c.variant} | {c.baseline_variant} | {', '.join(c.groups)} | {c.runs_per_group} "
            f"| {_interval(c.poi, c.poi_ci)} |"
        )
    return [*lines, ""]


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (Spearman's convention)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tie = x == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson's on average ranks); nan if either is constant."""
    rx, ry = _ranks(np.asarray(x, dtype=float)), _ranks(np.asarray(y, dtype=float))
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_ci(
    x: np.ndarray, y: np.ndarray, reps: int = 2000, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """Spearman's rho and a 95% percentile-bootstrap CI, resampling runs (pairs) with
    replacement; resamples with a constant variable are dropped."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    point = spearman(x, y)
    if len(x) < 3:
        return point, (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    boot = [spearman(x[i], y[i]) for i in rng.integers(0, len(x), size=(reps, len(x)))]
    boot = np.array([b for b in boot if not math.isnan(b)])
    if len(boot) == 0:
        return point, (math.nan, math.nan)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return point, (float(lo), float(hi))


def curve_band(
    series: list[Series], reps: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean curve over runs with a 95% bootstrap band, on the steps all runs reached.

    Runs are interpolated onto the union of their steps up to the shortest run's last step, so a
    run that is still going (or evaluated at other steps) does not bend the curve's end.
    """
    series = [s for s in series if s is not None and len(s) > 0]
    if not series:
        empty = np.array([])
        return empty, empty, empty, empty
    end = min(s.steps[-1] for s in series)
    grid = np.unique(np.concatenate([s.steps[s.steps <= end] for s in series]))
    values = np.stack([np.interp(grid, s.steps, s.values) for s in series])
    mean = values.mean(axis=0)
    if len(series) == 1:
        return grid, mean, mean, mean
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(series), size=(reps, len(series)))
    boot = values[idx].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    return grid, mean, lo, hi


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4g}"


def _interval(point: object, ci: object) -> str:
    if point is None:
        return "-"
    lo, hi = ci  # type: ignore[misc]
    return f"{_fmt(point)} [{_fmt(lo)}, {_fmt(hi)}]"  # type: ignore[arg-type]


def _plot_curves(
    study: Study, results: dict[str, list[RunResult]], metric: str, path: Path
) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = False
    for arm, runs in results.items():
        grid, mean, lo, hi = curve_band([r.series.get(metric) for r in runs])
        if len(grid) == 0:
            continue
        n = sum(1 for r in runs if r.series.get(metric) is not None and len(r.series[metric]) > 0)
        (line,) = ax.plot(grid, mean, label=f"{arm} (n={n})")
        ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        drawn = True
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_title(f"{study.name}: {metric}\n(mean, 95% bootstrap CI over seeds)", fontsize=10)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def _plot_intervals(study: Study, summary: dict[str, dict[str, object]], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a, s in summary.items() if "iqm" in s]
    if not arms:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 0.6 * len(arms) + 1.4), sharey=True)
    for ax, key in zip(axes, ("iqm", "mean"), strict=True):
        for y, arm in enumerate(arms):
            point = summary[arm][key]
            lo, hi = summary[arm][f"{key}_ci"]  # type: ignore[misc]
            ax.plot([lo, hi], [y, y], linewidth=6, alpha=0.5, solid_capstyle="butt")
            ax.plot([point], [y], "k|", markersize=14)
        ax.set_yticks(range(len(arms)), arms)
        lower = " (lower is better)" if study.report.lower_is_better else ""
        ax.set_title(f"{key.upper() if key == 'iqm' else 'Mean'} of final {study.metric}{lower}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def final_values(study: Study, results: dict[str, list[RunResult]], metric: str) -> dict:
    """``{(arm, seed): final value of metric}`` over finished runs that logged it."""
    out = {}
    for arm, runs in results.items():
        for r in runs:
            series = r.series.get(metric)
            if r.state == FINISHED and series is not None and len(series):
                out[(arm, r.run.seed)] = final_score(series, study.report)
    return out


def _correlation_lines(study: Study, results: dict[str, list[RunResult]]) -> list[str]:
    settings = study.report
    rule = "last value" if settings.final == "last" else f"mean of the last {settings.k}"
    lines = [
        "## Rank correlations across runs (Spearman, 95% bootstrap CI over runs)",
        "",
        f"Final values ({rule}) of two metrics per finished run; 'all' pools every run, "
        "the other rows take the runs of one baseline group (arms compared with the same "
        "baseline, e.g. one task).",
        "",
        "| x | y | runs | Spearman rho [95% CI] |",
        "| --- | --- | --- | --- |",
    ]
    for a, b in settings.correlations:
        fa, fb = final_values(study, results, a), final_values(study, results, b)
        keys = [k for k in fa if k in fb]
        groups: dict[str, list] = {"all": keys}
        for key in keys:
            group = study.group_of(key[0])
            if group is not None:
                groups.setdefault(f"group {group}", []).append(key)
        if len(groups) == 2:  # one group holds every run: the pooled row says it all
            groups = {"all": keys}
        for gi, (label, members) in enumerate(groups.items()):
            x = np.array([fa[k] for k in members])
            y = np.array([fb[k] for k in members])
            rho, ci = spearman_ci(x, y, reps=settings.reps, seed=gi)
            lines.append(f"| {a} | {b} ({label}) | {len(members)} | {_interval(rho, ci)} |")
    lines.append("")
    return lines


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_report(
    study: Study,
    runs_root: str | Path,
    out_dir: str | Path | None = None,
    command: str | None = None,
    report_command: str | None = None,
) -> Path:
    """Collect, aggregate, plot and write ``report.md``; returns its path."""
    runs_root = Path(runs_root)
    out = Path(out_dir) if out_dir else runs_root / study.name / "report"
    out.mkdir(parents=True, exist_ok=True)
    results = collect(study, runs_root)
    scores = {
        arm: np.array([r.final for r in runs if r.final is not None], dtype=float)
        for arm, runs in results.items()
    }
    settings = study.report
    baselines = {arm: study.baseline_of(arm) for arm in study.arms}
    summary = aggregate(
        scores, baselines, reps=settings.reps, lower_is_better=settings.lower_is_better
    )
    final_rule = (
        "last value" if settings.final == "last" else f"mean of the last {settings.k} values"
    )
    if settings.lower_is_better:
        final_rule += " (lower is better)"
    cmd = command or f"python -m flatrl.study run {shlex.quote(str(study.path))}"
    eps = sorted({arm.entry_point.describe() for arm in study.arms.values()})
    lines = [f"# Study `{study.name}`", ""]
    if study.description:
        lines += [study.description.strip(), ""]
    lines += [
        f"- command: `{cmd}`",
        "- report: `"
        + (report_command or f"python -m flatrl.study report {shlex.quote(str(study.path))}")
        + "`",
        f"- entry point: {', '.join(eps)}; budget: {study.budget}",
        f"- seeds: {', '.join(map(str, study.seeds))}",
        f"- score per run: `{study.metric}`, {final_rule}; 95% CIs from a stratified bootstrap "
        f"({settings.reps} replicates, rliable)",
        "",
    ]
    op = "<" if settings.lower_is_better else ">"
    grouped = any(b not in (None, study.baseline) for b in baselines.values())
    if grouped:
        p_header = f"P(arm {op} its baseline) [95% CI] vs baseline"
    else:
        p_header = f"P(arm {op} {study.baseline}) [95% CI]" if study.baseline else "P(improvement)"
    lines += [
        f"| arm | finished seeds | IQM [95% CI] | mean [95% CI] | {p_header} |",
        "| --- | --- | --- | --- | --- |",
    ]
    few = []
    for arm, runs in results.items():
        s = summary[arm]
        n = int(s["n"])  # type: ignore[arg-type]
        seeds = f"{n}/{len(runs)}"
        if n < settings.min_seeds:
            seeds += f" ⚠ (<{settings.min_seeds})"
            few.append(arm)
        if baselines.get(arm) is None and (arm == study.baseline or arm in baselines.values()):
            poi = "baseline"
        elif "poi" in s:
            poi = _interval(s["poi"], s["poi_ci"])
            if grouped:
                poi += f" vs {s['baseline']}"
        else:
            poi = "-"
        lines.append(
            f"| {arm} | {seeds} | {_interval(s.get('iqm'), s.get('iqm_ci'))} | "
            f"{_interval(s.get('mean'), s.get('mean_ci'))} | {poi} |"
        )
    lines.append("")
    if few:
        lines += [
            f"⚠ {', '.join(few)}: fewer than {settings.min_seeds} finished seeds; their intervals "
            "are wide or degenerate and the comparison is not reliable yet.",
            "",
        ]
    missing = [r for runs in results.values() for r in runs if r.final is None]
    if missing:
        lines += ["## Runs without a score", ""]
        for r in missing:
            status = read_json(r.run.run_dir / STATUS) or {}
            detail = r.problem
            if r.state == "failed":
                detail = f"return code {status.get('returncode')}, log {r.run.run_dir / 'run.log'}"
            lines.append(f"- `{r.run.key}`: {r.state}{': ' + detail if detail else ''}")
        lines.append("")
    if study.extra_metrics:
        lines += ["## Extra metrics (final value, mean over finished runs)", ""]
        lines += ["| arm | " + " | ".join(study.extra_metrics) + " |"]
        lines += ["| --- |" + " --- |" * len(study.extra_metrics)]
        for arm, runs in results.items():
            cells = []
            for name in study.extra_metrics:
                finals = [
                    final_score(r.series[name], settings)
                    for r in runs
                    if r.state == FINISHED
                    and r.series.get(name) is not None
                    and len(r.series[name])
                ]
                cells.append(f"{_fmt(float(np.mean(finals)))} (n={len(finals)})" if finals else "-")
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    if grouped:
        lines += _pooled_lines(
            pooled_improvement(
                study, results, settings.reps, lower_is_better=settings.lower_is_better
            ),
            settings.lower_is_better,
        )
    if settings.correlations:
        lines += _correlation_lines(study, results)
    figures = []
    for name in (study.metric, *study.extra_metrics):
        png = out / f"curves_{_safe(name)}.png"
        if _plot_curves(study, results, name, png):
            figures.append((f"{name} over training", png.name))
    png = out / "final_scores.png"
    if _plot_intervals(study, summary, png):
        figures.append((f"final {study.metric}: IQM and mean with 95% CIs", png.name))
    if figures:
        lines += ["## Figures", ""] + [f"![{title}]({name})" for title, name in figures] + [""]
    lines += [
        "## Final score per run",
        "",
        "| arm | seed | state | score |",
        "| --- | --- | --- | --- |",
    ]
    for runs in results.values():
        for r in runs:
            lines.append(f"| {r.run.arm} | {r.run.seed} | {r.state} | {_fmt(r.final)} |")
    lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
