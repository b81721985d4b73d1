"""``python -m flatrl.study {run,status,report,archive,validate} STUDY.yaml``.

Every command validates the study file first (one message naming the key and the fix, exit 2,
nothing started) and ends with a short summary: where the runs and the report are and the
command that shows them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from flatrl.study.runner import (
    DONE,
    FAILED,
    FINISHED,
    INTERRUPTED,
    PENDING,
    RUNNING,
    SKIPPED,
    STATUS,
    matching_arms,
    plan,
    read_json,
    run_local,
    run_state,
    select,
    submit_slurm,
    subset,
    wait_slurm,
)
from flatrl.study.spec import Study, StudyError, load_study


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flatrl.study",
        description="Run, resume and report multi-seed studies (arms x seeds) of flatrl agents.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("study", type=Path, help="the study file (studies/<name>.yaml)")
        sp.add_argument(
            "--runs-root",
            type=Path,
            default=Path("runs"),
            help="runs go to <runs-root>/<study>/<arm>/seed_<s>/ (default: runs)",
        )

    sp = sub.add_parser("run", help="launch what is not finished; resume interrupted runs")
    common(sp)
    sp.add_argument("--workers", type=int, default=None, help="parallel local runs (default 1)")
    sp.add_argument("--launcher", choices=("local", "slurm"), default="local")
    sp.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    sp.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    sp.add_argument(
        "--arms",
        nargs="+",
        default=[],
        metavar="GLOB",
        help="only arms matching these glob patterns, e.g. 'iql-pendulum-*' (default: all)",
    )
    sp.add_argument(
        "--seeds", nargs="+", type=int, default=[], help="only these seeds (default: all)"
    )
    sp.add_argument("--no-progress", dest="progress", action="store_false")
    slurm = sp.add_argument_group("slurm (override the study's 'slurm:' section)")
    slurm.add_argument("--partition")
    slurm.add_argument("--gpus", type=int)
    slurm.add_argument("--cpus", type=int)
    slurm.add_argument("--mem-gb", type=int)
    slurm.add_argument("--time-min", type=int)
    slurm.add_argument("--array-parallelism", type=int)
    slurm.add_argument("--account")
    slurm.add_argument(
        "--cluster",
        choices=("slurm", "local", "debug"),
        default=None,
        help="submitit cluster (default: slurm if available); debug/local run here",
    )
    slurm.add_argument("--no-wait", action="store_true", help="submit and return")

    sp = sub.add_parser("status", help="what finished, failed (with its log), remains")
    common(sp)

    sp = sub.add_parser("report", help="final scores, IQM/mean with CIs, P(improvement), plots")
    common(sp)
    sp.add_argument("--out", type=Path, default=None, help="default <runs-root>/<study>/report")
    sp.add_argument("--last-k", type=int, default=None, help="score = mean of the last K values")
    sp.add_argument("--reps", type=int, default=None, help="bootstrap replicates")
    sp.add_argument(
        "--arms",
        nargs="+",
        default=[],
        metavar="GLOB",
        help="report only these arms (glob patterns) and their baselines (default: all)",
    )
    sp.add_argument(
        "--metric",
        default=None,
        help="score another of the study's metrics (one of its extra_metrics), e.g. a sharpness",
    )
    sp.add_argument(
        "--higher-is-better",
        dest="lower_is_better",
        action="store_false",
        default=None,
        help="with --metric: higher values are better (default: the study's setting)",
    )
    sp.add_argument(
        "--lower-is-better",
        dest="lower_is_better",
        action="store_true",
        help="with --metric: lower values are better (errors, sharpness)",
    )

    sp = sub.add_parser(
        "archive", help="copy finished runs without checkpoints to a folder to commit"
    )
    common(sp)
    sp.add_argument(
        "--to",
        type=Path,
        default=Path("studies") / "results",
        help="archive root; runs go to <to>/<study>/... (default: studies/results)",
    )

    sp = sub.add_parser("validate", help="check the study file and print the plan")
    common(sp)
    return p


def _study_cmd(command: str, args: argparse.Namespace) -> str:
    parts = ["python", "-m", "flatrl.study", command, str(args.study)]
    if args.runs_root != Path("runs"):
        parts += ["--runs-root", str(args.runs_root)]
    if command in ("run", "report") and getattr(args, "arms", None):
        parts += ["--arms", *args.arms]
    if command == "run" and getattr(args, "seeds", None):
        parts += ["--seeds", *map(str, args.seeds)]
    if command == "report" and getattr(args, "metric", None):
        parts += ["--metric", args.metric]
    if command == "report" and getattr(args, "lower_is_better", None) is not None:
        parts += ["--lower-is-better" if args.lower_is_better else "--higher-is-better"]
    return shlex.join(parts)


def _sigterm_as_interrupt() -> None:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def cmd_run(study: Study, args: argparse.Namespace) -> int:
    runs = plan(study, args.runs_root)
    everything = len(runs)
    runs = subset(runs, arms=args.arms, seeds=args.seeds)
    todo, counts = select(runs, retry_failed=args.retry_failed)
    study_dir = args.runs_root / study.name
    chosen = "" if len(runs) == everything else f"; this call: {len(runs)} of them (--arms/--seeds)"
    print(
        f"study {study.name}: {everything} runs ({len(study.arms)} arms x {len(study.seeds)} "
        f"seeds){chosen}; {counts[FINISHED]} finished, {counts[FAILED]} failed, {counts[RUNNING]} "
        f"running elsewhere, {len(todo)} to launch"
        + (f" ({counts[INTERRUPTED]} interrupted: resume)" if counts[INTERRUPTED] else "")
    )
    if counts[FAILED] and not args.retry_failed:
        print(f"  {counts[FAILED]} failed runs are left alone; --retry-failed runs them again")
    if args.dry_run:
        for run in todo:
            resume = run_state(run) == INTERRUPTED and run.entry_point.can_resume(run.run_dir)
            print(f"{run.key}: {run.entry_point.launch(run, resume).shell()}")
        return 0
    outcomes = []
    if todo and args.launcher == "local":
        workers = args.workers or study.workers or 1
        _sigterm_as_interrupt()
        try:
            outcomes = run_local(todo, workers=workers, progress=args.progress)
        except KeyboardInterrupt:
            print(
                f"\ninterrupted: running runs were stopped and will resume; continue with\n"
                f"  {_study_cmd('run', args)}",
                file=sys.stderr,
            )
            return 130
    elif todo:
        settings = dict(study.slurm)
        for key in ("partition", "gpus", "cpus", "mem_gb", "time_min", "array_parallelism"):
            if getattr(args, key) is not None:
                settings[key] = getattr(args, key)
        if args.account is not None:
            settings["account"] = args.account
        submitted = submit_slurm(todo, settings, study_dir / ".submitit", cluster=args.cluster)
        ids = ", ".join(str(j.job_id) for j in submitted.jobs[:5])
        print(f"submitted {len(submitted.jobs)} jobs ({ids}{', ...' if len(todo) > 5 else ''})")
        if args.no_wait:
            print(f"follow with: {_study_cmd('status', args)}")
            return 0
        outcomes = wait_slurm(submitted, progress=args.progress)
    finished = sum(o.state == FINISHED for o in outcomes)
    failed = [o for o in outcomes if o.state == FAILED]
    skipped = sum(o.state == SKIPPED for o in outcomes)
    print(
        f"\nthis call: {finished} finished, {len(failed)} failed"
        + (f", {skipped} skipped (another runner had them)" if skipped else "")
        + f"; runs under {study_dir}/"
    )
    for o in failed:
        print(f"  failed: {o.run.key} (rc {o.returncode}) log: {o.log or o.message}")
    print(f"status: {_study_cmd('status', args)}")
    print(f"report: {_study_cmd('report', args)}")
    return 1 if failed else 0


def cmd_status(study: Study, args: argparse.Namespace) -> int:
    runs = plan(study, args.runs_root)
    by_state: dict[str, list[str]] = {
        s: [] for s in (FINISHED, RUNNING, INTERRUPTED, FAILED, PENDING)
    }
    for run in runs:
        state = run_state(run)
        if state == FAILED:
            status = read_json(run.run_dir / STATUS) or {}
            by_state[state].append(
                f"{run.key} (rc {status.get('returncode')}; log {run.run_dir / 'run.log'})"
            )
        elif state == FINISHED:
            done = read_json(run.run_dir / DONE) or {}
            by_state[state].append(f"{run.key} ({done.get('seconds', '?')} s)")
        else:
            by_state[state].append(run.key)
    print(f"study {study.name}: {len(runs)} runs under {args.runs_root / study.name}/")
    for state, keys in by_state.items():
        print(f"  {state:<12} {len(keys)}")
        shown = keys if state != FINISHED else keys[:0]
        for key in shown:
            print(f"      {key}")
    finished_seeds: dict[str, int] = {arm: 0 for arm in study.arms}
    for run in runs:
        finished_seeds[run.arm] += run_state(run) == FINISHED
    complete = [arm for arm, n in finished_seeds.items() if n == len(study.seeds)]
    print(
        f"  arms with every seed finished: {len(complete)} of {len(study.arms)}"
        + (f" (report them: {_study_cmd('report', args)} --arms ...)" if complete else "")
    )
    remaining = len(by_state[PENDING]) + len(by_state[INTERRUPTED])
    if remaining:
        print(f"continue: {_study_cmd('run', args)}")
    if by_state[FAILED]:
        print(f"retry failed: {_study_cmd('run', args)} --retry-failed")
    print(f"report: {_study_cmd('report', args)}")
    return 0


def cmd_report(study: Study, args: argparse.Namespace) -> int:
    from dataclasses import replace

    from flatrl.study.report import write_report

    settings = study.report
    if args.last_k is not None:
        if args.last_k < 1:
            raise StudyError("--last-k must be a positive integer.")
        settings = replace(settings, final="mean_last_k", k=args.last_k)
    if args.reps is not None:
        if args.reps < 1:
            raise StudyError("--reps must be a positive integer.")
        settings = replace(settings, reps=args.reps)
    if args.lower_is_better is not None:
        settings = replace(settings, lower_is_better=args.lower_is_better)
    study = replace(study, report=settings)
    if args.metric is not None and args.metric != study.metric:
        if args.metric not in study.extra_metrics:
            raise StudyError(
                f"--metric {args.metric!r} is not one of this study's metrics; choose from "
                f"{', '.join([study.metric, *study.extra_metrics])}."
            )
        others = tuple(m for m in (study.metric, *study.extra_metrics) if m != args.metric)
        study = replace(study, metric=args.metric, extra_metrics=others)
    if args.arms:
        chosen = matching_arms(study, args.arms)
        study = replace(study, arms={name: study.arms[name] for name in chosen})
    path = write_report(
        study,
        args.runs_root,
        args.out,
        command=_study_cmd("run", args),
        report_command=_study_cmd("report", args),
    )
    print(f"report: {path}")
    print(f"figures: {path.parent}/*.png")
    print(f"view: less {path}   (or open it in a Markdown viewer)")
    return 0


def cmd_archive(study: Study, args: argparse.Namespace) -> int:
    from flatrl.study.archive import archive_study

    try:
        done = archive_study(study, args.runs_root, args.to)
    except ValueError as err:
        raise StudyError(str(err)) from err
    where = args.to / study.name
    print(
        f"archived {len(done.runs)} finished runs of {study.name} to {where}/ "
        f"({done.bytes / 1e6:.1f} MB; {len(done.skipped)} files left behind: checkpoints, "
        f"logs, replay dumps, CSVs without a study metric, files over 1 MB); "
        f"{len(done.not_finished)} runs not finished"
    )
    print(f"report from it: python -m flatrl.study report {args.study} --runs-root {args.to}")
    print(f"resume from it: mkdir -p runs && cp -r {where} runs/ && {_study_cmd('run', args)}")
    return 0


def cmd_validate(study: Study, args: argparse.Namespace) -> int:
    runs = plan(study, args.runs_root)
    print(f"{args.study}: OK: {len(study.arms)} arms x {len(study.seeds)} seeds = {len(runs)} runs")
    for run in runs[: len(study.arms)]:  # the first seed of each arm
        print(f"  {run.arm}: {run.entry_point.launch(run, False).shell()}")
    print(f"run: {_study_cmd('run', args)}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "status": cmd_status,
    "report": cmd_report,
    "archive": cmd_archive,
    "validate": cmd_validate,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        study = load_study(args.study)
        if getattr(args, "workers", None) is not None and args.workers < 1:
            raise StudyError("--workers must be a positive integer.")
        return COMMANDS[args.command](study, args)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a missing optional dependency, named with its install line
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`... validate | head`): stop quietly, as other Unix tools do;
        # stdout goes to /dev/null so the interpreter's final flush cannot raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, the status a shell reports for a tool killed by it


if __name__ == "__main__":
    raise SystemExit(main())
