"""The report of a study: final scores, rliable interval estimates, figures, ``report.md``.

One score per run (the metric's last value, or the mean of its last k values); per arm the
interquartile mean (IQM) and the mean with 95% stratified-bootstrap confidence intervals, and the
probability that the arm improves on the baseline (Agarwal et al., 2021, "Deep RL at the Edge
of the Statistical Precipice", via ``rliable``). Arms with fewer than ``report.min_seeds``
finished seeds are marked, not hidden: with 3 seeds an interval says little.
"""

from __future__ import annotations

import math
import shlex
import warnings
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
    baseline: str | None,
    reps: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, object]]:
    """IQM and mean with 95% stratified-bootstrap CIs per arm; P(arm > baseline) with its CI.

    ``scores[arm]`` is a 1-D array (one final score per run, a single task). An arm with one
    run gets its point estimates and a zero-width interval (there is nothing to resample).
    """
    library, metrics = _require_rliable()
    with warnings.catch_warnings():
        # arch deprecates the RandomState argument rliable passes; the draws are the same
        warnings.filterwarnings("ignore", message="random_state is deprecated")
        return _aggregate(library, metrics, scores, baseline, reps, seed)


def _aggregate(library, metrics, scores, baseline, reps, seed) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}

    def iqm_and_mean(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)])

    for i, (arm, values) in enumerate(scores.items()):
        values = np.asarray(values, dtype=float)
        entry: dict[str, object] = {"n": len(values)}
        if len(values) == 0:
            out[arm] = entry
            continue
        matrix = values.reshape(-1, 1)
        if len(values) == 1:
            point, lo, hi = iqm_and_mean(matrix), iqm_and_mean(matrix), iqm_and_mean(matrix)
        else:
            points, cis = library.get_interval_estimates(
                {arm: matrix},
                iqm_and_mean,
                reps=reps,
                random_state=np.random.RandomState(seed + i),
            )
            point, lo, hi = points[arm], cis[arm][0], cis[arm][1]
        entry.update(
            iqm=float(point[0]),
            iqm_ci=(float(lo[0]), float(hi[0])),
            mean=float(point[1]),
            mean_ci=(float(lo[1]), float(hi[1])),
        )
        out[arm] = entry
    if baseline is not None and len(scores.get(baseline, [])) > 0:
        base = np.asarray(scores[baseline], dtype=float).reshape(-1, 1)
        for i, (arm, values) in enumerate(scores.items()):
            if arm == baseline or len(values) == 0:
                continue
            x = np.asarray(values, dtype=float).reshape(-1, 1)
            if min(len(x), len(base)) < 2:
                p = float(metrics.probability_of_improvement(x, base))
                out[arm].update(poi=p, poi_ci=(p, p))
                continue
            key = f"{arm},{baseline}"
            points, cis = library.get_interval_estimates(
                {key: (x, base)},
                metrics.probability_of_improvement,
                reps=reps,
                random_state=np.random.RandomState(seed + 1000 + i),
            )
            ci = np.asarray(cis[key]).reshape(-1)
            out[arm].update(poi=float(points[key]), poi_ci=(float(ci[0]), float(ci[1])))
    return out


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
        ax.set_title(f"{key.upper() if key == 'iqm' else 'Mean'} of final {study.metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


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
    summary = aggregate(scores, study.baseline, reps=study.report.reps)
    settings = study.report
    final_rule = (
        "last value" if settings.final == "last" else f"mean of the last {settings.k} values"
    )
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
    p_header = f"P(arm > {study.baseline}) [95% CI]" if study.baseline else "P(improvement)"
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
        if arm == study.baseline:
            poi = "baseline"
        elif "poi" in s:
            poi = _interval(s["poi"], s["poi_ci"])
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
