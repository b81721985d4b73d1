"""A study file: loading, validation and the resolved plan it describes.

A study is one YAML file (see ``studies/smoke-command.yaml``)::

    name: my-study
    entry_point: tdmpc2            # or {type: d3rlpy, script: bench/x.py}; per arm too
    seeds: [0, 1, 2, 3, 4]
    budget: 100000                 # steps / epochs, in the entry point's own unit
    metric: episode_reward         # what the report ranks
    extra_metrics: [train/sharpness]
    baseline: adam                 # or per group: {groups: {cartpole: cartpole-adam, ...}}
    overrides: {task: cartpole-swingup}
    arms:
      adam: {}
      sam: {overrides: {optimizer: SAM, sam_rho: 0.05}}

Everything is checked here, before a single run starts: a typo found after hours of compute on
a cluster is the failure this module exists to prevent. Each problem raises one
:class:`StudyError` that names the key and says how to fix it.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOP_LEVEL_KEYS = (
    "name",
    "description",
    "entry_point",
    "seeds",
    "budget",
    "metric",
    "extra_metrics",
    "baseline",
    "overrides",
    "arms",
    "report",
    "slurm",
    "workers",
)
REQUIRED_KEYS = ("name", "entry_point", "seeds", "budget", "metric", "arms")
ARM_KEYS = ("overrides", "entry_point", "baseline")
BASELINE_KEYS = ("groups", "default")
REPORT_KEYS = {
    "final": ("last", "mean_last_k"),
    "k": None,
    "reps": None,
    "min_seeds": None,
    "lower_is_better": None,
    "correlations": None,
}
SLURM_KEYS = (
    "partition",
    "gpus",
    "cpus",
    "mem_gb",
    "time_min",
    "array_parallelism",
    "account",
    "qos",
    "constraint",
)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class StudyError(ValueError):
    """A study file that cannot run; the message names the key and the fix."""


def _unknown(key: str, where: str, allowed: tuple[str, ...] | list[str], source: str) -> StudyError:
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return StudyError(
        f"{source}: unknown key '{key}' in {where}{hint}; allowed keys: {', '.join(allowed)}."
    )


@dataclass(frozen=True)
class ReportSettings:
    """How a run's curve becomes one score, and how the report bootstraps."""

    final: str = "last"  # "last" value of the metric, or "mean_last_k" evaluations
    k: int = 1
    # bootstrap replicates: rliable's bootstrap is a Python loop (~1 s per 1000 replicates and
    # arm for P(improvement)); 2000 puts the Monte-Carlo error of a 95% bound far below the
    # width of the interval for the 5-20 seeds of a study
    reps: int = 2000
    min_seeds: int = 5  # arms with fewer finished seeds are marked in the report
    # the metric is an error (lower is better): P(improvement) is then P(arm < baseline)
    lower_is_better: bool = False
    # pairs of metrics whose final values are rank-correlated across runs (Spearman + CI)
    correlations: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Arm:
    name: str
    entry_point: Any  # an entry_points.EntryPoint
    overrides: dict[str, Any]


@dataclass(frozen=True)
class Study:
    name: str
    path: Path
    arms: dict[str, Arm]
    seeds: tuple[int, ...]
    budget: int
    metric: str
    extra_metrics: tuple[str, ...] = ()
    baseline: str | None = None  # the one baseline of every arm (a plain ``baseline: ARM``)
    description: str = ""
    report: ReportSettings = field(default_factory=ReportSettings)
    slurm: dict[str, Any] = field(default_factory=dict)
    workers: int | None = None
    # arm -> the arm it is compared with (None: no comparison); see :func:`_baselines`
    baselines: dict[str, str | None] = field(default_factory=dict)

    def baseline_of(self, arm: str) -> str | None:
        """The arm that ``arm`` is compared with (the study-wide baseline unless grouped)."""
        return self.baselines.get(arm, self.baseline)

    def group_of(self, arm: str) -> str | None:
        """The name of the baseline group of ``arm`` (its baseline arm), if any."""
        return self.baseline_of(arm) or (arm if arm in self.baselines.values() else None)

    def run_dir(self, runs_root: Path, arm: str, seed: int) -> Path:
        """One directory per arm x seed: ``<runs_root>/<study>/<arm>/seed_<s>/``."""
        return Path(runs_root) / self.name / arm / f"seed_{seed}"


def _mapping(value: Any, key: str, source: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StudyError(
            f"{source}: '{key}' must be a mapping (key: value), got {type(value).__name__}."
        )
    return value


def _name(value: Any, key: str, source: str) -> str:
    if not isinstance(value, str) or not _SAFE_NAME.match(value):
        raise StudyError(
            f"{source}: '{key}' = {value!r} must be a non-empty name of letters, digits, "
            "'_', '.', '+' or '-' (it becomes a directory name)."
        )
    return value


def _positive_int(value: Any, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StudyError(f"{source}: '{key}' must be a positive integer, got {value!r}.")
    return value


def _seeds(value: Any, source: str) -> tuple[int, ...]:
    if value is None or (isinstance(value, list) and not value):
        raise StudyError(
            f"{source}: 'seeds' is missing or empty; list them explicitly, e.g. "
            "'seeds: [0, 1, 2, 3, 4]' (5 or more for a report with meaningful intervals)."
        )
    if not isinstance(value, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value
    ):
        raise StudyError(
            f"{source}: 'seeds' must be a list of non-negative integers, got {value!r}."
        )
    dupes = sorted({s for s in value if value.count(s) > 1})
    if dupes:
        raise StudyError(
            f"{source}: 'seeds' lists {', '.join(map(str, dupes))} more than once; each seed "
            "must appear once (a repeated seed would repeat the same run)."
        )
    return tuple(value)


def _report(value: Any, source: str) -> ReportSettings:
    raw = _mapping(value, "report", source)
    for key in raw:
        if key not in REPORT_KEYS:
            raise _unknown(key, "'report'", tuple(REPORT_KEYS), source)
    final = raw.get("final", "last")
    if final not in REPORT_KEYS["final"]:
        raise StudyError(
            f"{source}: 'report.final' = {final!r}; use 'last' (the metric's last value) or "
            "'mean_last_k' (mean of its last report.k values)."
        )
    k = _positive_int(raw.get("k", 1), "report.k", source)
    reps = _positive_int(raw.get("reps", 2000), "report.reps", source)
    min_seeds = _positive_int(raw.get("min_seeds", 5), "report.min_seeds", source)
    lower = raw.get("lower_is_better", False)
    if not isinstance(lower, bool):
        raise StudyError(
            f"{source}: 'report.lower_is_better' must be true (the metric is an error) or false, "
            f"got {lower!r}."
        )
    pairs = raw.get("correlations") or []
    if not isinstance(pairs, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(m, str) and m for m in p)
        for p in pairs
    ):
        raise StudyError(
            f"{source}: 'report.correlations' must be a list of metric pairs, e.g. "
            "[[measured_sharpness, heldout_consistency]]."
        )
    return ReportSettings(
        final=final,
        k=k,
        reps=reps,
        min_seeds=min_seeds,
        lower_is_better=lower,
        correlations=tuple((a, b) for a, b in pairs),
    )


def _arm_name(value: Any, key: str, arms: dict[str, Any], source: str) -> str:
    if value not in arms:
        close = difflib.get_close_matches(str(value), list(arms), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise StudyError(
            f"{source}: '{key}' = {value!r} is not an arm{hint}; set it to one of: "
            f"{', '.join(arms)}, or remove it."
        )
    return value


def _baselines(
    raw: Any, per_arm: dict[str, Any], arms: dict[str, Any], source: str
) -> tuple[str | None, dict[str, str | None]]:
    """``(study-wide baseline, arm -> its baseline)`` from the ``baseline`` key and the arms'.

    ``baseline: ARM`` compares every arm with ARM. ``baseline: {groups: {PREFIX: ARM, ...},
    default: ARM}`` compares each arm with the baseline of the longest PREFIX its name starts
    with (``cql-lunarlander-sam0.05`` -> ``cql-lunarlander``), arms in no group with
    ``default`` (or with nothing). An arm's own ``baseline: ARM`` wins over both.
    """
    study_wide: str | None = None
    groups: dict[str, str] = {}
    default: str | None = None
    if isinstance(raw, dict):
        for key in raw:
            if key not in BASELINE_KEYS:
                raise _unknown(key, "'baseline'", BASELINE_KEYS, source)
        groups = _mapping(raw.get("groups"), "baseline.groups", source)
        if not groups:
            raise StudyError(
                f"{source}: 'baseline.groups' must map name prefixes to their baseline arm, e.g. "
                "'groups: {iql-pendulum: iql-pendulum-adam}'."
            )
        for prefix, arm in groups.items():
            _arm_name(arm, f"baseline.groups.{prefix}", arms, source)
            if not str(arm).startswith(str(prefix)):
                raise StudyError(
                    f"{source}: 'baseline.groups.{prefix}' = {arm!r} is not in its own group "
                    f"(its name does not start with '{prefix}'); name an arm of that group."
                )
        if raw.get("default") is not None:
            default = _arm_name(raw["default"], "baseline.default", arms, source)
    elif raw is not None:
        study_wide = _arm_name(raw, "baseline", arms, source)
    out: dict[str, str | None] = {}
    for arm in arms:
        if arm in per_arm:
            out[arm] = _arm_name(per_arm[arm], f"arms.{arm}.baseline", arms, source)
            continue
        matches = [p for p in groups if arm.startswith(str(p))]
        if matches:
            out[arm] = groups[max(matches, key=len)]
        elif groups:
            out[arm] = default
        else:
            out[arm] = study_wide
    return study_wide, {arm: (None if base == arm else base) for arm, base in out.items()}


def _slurm(value: Any, source: str) -> dict[str, Any]:
    raw = _mapping(value, "slurm", source)
    for key in raw:
        if key not in SLURM_KEYS:
            raise _unknown(key, "'slurm'", SLURM_KEYS, source)
    for key in ("gpus", "cpus", "mem_gb", "time_min", "array_parallelism"):
        if key in raw:
            if key == "gpus" and raw[key] == 0:
                continue
            _positive_int(raw[key], f"slurm.{key}", source)
    return dict(raw)


def parse_study(raw: Any, source: str | Path = "<study>") -> Study:
    """Validate a loaded YAML document and build the :class:`Study`."""
    from flatrl.study.entry_points import make_entry_point

    source = str(source)
    if not isinstance(raw, dict):
        raise StudyError(
            f"{source}: a study file must be a YAML mapping with keys {REQUIRED_KEYS}."
        )
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise _unknown(key, "the study", TOP_LEVEL_KEYS, source)
    for key in REQUIRED_KEYS:
        if key not in raw:
            if key == "seeds":
                _seeds(None, source)
            raise StudyError(f"{source}: required key '{key}' is missing; see studies/*.yaml.")
    name = _name(raw["name"], "name", source)
    seeds = _seeds(raw["seeds"], source)
    budget = _positive_int(raw["budget"], "budget", source)
    metric = raw["metric"]
    if not isinstance(metric, str) or not metric:
        raise StudyError(f"{source}: 'metric' must be a metric name, e.g. 'episode_reward'.")
    extra = raw.get("extra_metrics") or []
    if isinstance(extra, str):
        extra = [extra]
    if not isinstance(extra, list) or not all(isinstance(m, str) and m for m in extra):
        raise StudyError(f"{source}: 'extra_metrics' must be a list of metric names.")
    shared_ep = raw["entry_point"]
    shared = _mapping(raw.get("overrides"), "overrides", source)
    arms_raw = raw["arms"]
    if not isinstance(arms_raw, dict) or not arms_raw:
        raise StudyError(
            f"{source}: 'arms' must map at least one arm name to its overrides, e.g. "
            "'arms: {adam: {}, sam: {overrides: {optimizer: SAM}}}'."
        )
    arms: dict[str, Arm] = {}
    per_arm_baseline: dict[str, Any] = {}
    for arm_name, arm_raw in arms_raw.items():
        arm_name = _name(arm_name, f"arms.{arm_name}", source)
        if isinstance(arm_raw, list):  # shorthand: the arm is its override list
            arm_raw = {"overrides": arm_raw}
        arm_raw = _mapping(arm_raw, f"arms.{arm_name}", source)
        for key in arm_raw:
            if key not in ARM_KEYS:
                raise _unknown(key, f"arm '{arm_name}'", ARM_KEYS, source)
        ep = make_entry_point(
            arm_raw.get("entry_point", shared_ep),
            f"arms.{arm_name}.entry_point" if "entry_point" in arm_raw else "entry_point",
            source,
        )
        overrides = ep.merge_overrides(
            ep.normalize_overrides(shared, "overrides", source),
            ep.normalize_overrides(arm_raw.get("overrides"), f"arms.{arm_name}.overrides", source),
        )
        ep.check_overrides(overrides, f"arms.{arm_name}", source)
        arms[arm_name] = Arm(arm_name, ep, overrides)
        if arm_raw.get("baseline") is not None:
            per_arm_baseline[arm_name] = arm_raw["baseline"]
    baseline, baselines = _baselines(raw.get("baseline"), per_arm_baseline, arms, source)
    report = _report(raw.get("report"), source)
    known = {metric, *extra}
    for a, b in report.correlations:
        for m in (a, b):
            if m not in known:
                raise StudyError(
                    f"{source}: 'report.correlations' names '{m}', which is neither 'metric' "
                    "nor in 'extra_metrics'; add it to 'extra_metrics'."
                )
    workers = raw.get("workers")
    if workers is not None:
        workers = _positive_int(workers, "workers", source)
    description = raw.get("description") or ""
    return Study(
        name=name,
        path=Path(source),
        arms=arms,
        seeds=seeds,
        budget=budget,
        metric=metric,
        extra_metrics=tuple(extra),
        baseline=baseline,
        description=str(description),
        report=report,
        slurm=_slurm(raw.get("slurm"), source),
        workers=workers,
        baselines=baselines,
    )


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; raises :class:`StudyError` with one clear message."""
    try:
        import yaml
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise StudyError("reading study files needs PyYAML: pip install pyyaml") from err
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: no such study file.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise StudyError(f"{path}: not valid YAML: {err}") from err
    return parse_study(raw, path)
