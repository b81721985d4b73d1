"""Running a study: one process per arm x seed, locally (a worker pool) or on SLURM (submitit).

Each run's directory holds the runner's bookkeeping next to the entry point's own output:

``run.log``      the process's stdout and stderr, appended across attempts
``status.json``  the latest attempt: state (running / interrupted / failed / finished), return
                 code, argv, host and pid, and for a failure the tail of the log
``done.json``    written atomically after a successful exit: the marker that the run is finished
``.claim``       an empty file the executing runner holds an exclusive ``flock`` on while the
                 run's process lives: a second ``run`` of the same study (another terminal, a
                 second worker pool) skips a claimed run instead of starting it again in the
                 same directory. The kernel drops the lock when its holder dies, so a killed
                 runner leaves no stale claim.

A finished run is skipped; an interrupted one (the runner was stopped, the job preempted, or the
machine died while it ran) is re-launched with the entry point's resume flag; a failed one is
recorded and does not stop the others (``--retry-failed`` runs it again).
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flatrl.study.entry_points import EntryPoint
from flatrl.study.spec import Study, StudyError

LOG = "run.log"
STATUS = "status.json"
DONE = "done.json"
CLAIM = ".claim"
LOG_TAIL_LINES = 20

PENDING, RUNNING, INTERRUPTED, FAILED, FINISHED = (
    "pending",
    "running",
    "interrupted",
    "failed",
    "finished",
)
# an outcome only, never a run's state: another runner had claimed the run (or finished it)
# between this runner's plan and the moment it came to launch it
SKIPPED = "skipped"


@dataclass(frozen=True)
class Run:
    """One arm x seed of a study, with everything needed to launch it anywhere."""

    study: str
    arm: str
    seed: int
    budget: int
    overrides: dict[str, Any]
    run_dir: Path
    entry_point: EntryPoint

    @property
    def key(self) -> str:
        return f"{self.arm}/seed_{self.seed}"


@dataclass
class Outcome:
    run: Run
    state: str
    returncode: int | None = None
    seconds: float = 0.0
    resumed: bool = False
    log: Path | None = None
    message: str = ""


def plan(study: Study, runs_root: str | Path) -> list[Run]:
    """Every arm x seed, each with its own directory, seed by seed (all arms of the first seed,
    then the next seed): a study stopped part-way has every arm at nearly the same number of
    seeds, so its partial report compares like with like."""
    root = Path(runs_root).absolute()
    return [
        Run(
            study.name,
            arm.name,
            seed,
            study.budget,
            arm.overrides,
            study.run_dir(root, arm.name, seed),
            arm.entry_point,
        )
        for seed in study.seeds
        for arm in study.arms.values()
    ]


def _arms_matching(names: list[str], patterns: Sequence[str]) -> set[str]:
    """The names matching any glob pattern; a pattern that matches none is an error."""
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise StudyError(
                f"--arms {pattern!r} matches no arm of this study; its arms are: "
                f"{', '.join(names)} (glob patterns such as 'iql-pendulum-*' work)."
            )
    return {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}


def matching_arms(study: Study, patterns: Sequence[str]) -> list[str]:
    """The arms matching any of the glob ``patterns``, with the baselines they are compared
    with, in the study's order; a pattern that matches nothing is an error naming the arms."""
    names = list(study.arms)
    chosen = _arms_matching(names, patterns)
    chosen |= {b for n in chosen if (b := study.baseline_of(n)) is not None}
    return [n for n in names if n in chosen]


def subset(runs: Sequence[Run], arms: Sequence[str] = (), seeds: Sequence[int] = ()) -> list[Run]:
    """The runs whose arm matches one of the glob patterns ``arms`` (all if empty) and whose seed
    is in ``seeds`` (all if empty), in plan order: a researcher with a few cores finishes the
    arms that answer the question first at every seed, then widens. A pattern or seed that
    selects nothing is an error naming what exists, not a silent empty run."""
    chosen = _arms_matching(list(dict.fromkeys(r.arm for r in runs)), arms)
    known_seeds = sorted({r.seed for r in runs})
    unknown = sorted(set(seeds) - set(known_seeds))
    if unknown:
        raise StudyError(
            f"--seeds {unknown} are not in the study's seed list {known_seeds}; add them to "
            "'seeds:' in the study file to run them."
        )
    return [r for r in runs if (not arms or r.arm in chosen) and (not seeds or r.seed in seeds)]


def atomic_write_json(data: dict[str, Any], path: Path) -> None:
    """Write-then-rename, so a reader (or a crash) never sees half a file.

    flatrl.runtime.atomic_write_text does the same but imports torch, which the runner avoids.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_state(run: Run) -> str:
    """pending / running / interrupted / failed / finished, from the files alone.

    ``running`` needs the process to be alive on this host; a ``running`` record whose process
    is gone (killed runner, crashed machine) counts as interrupted.
    """
    if (run.run_dir / DONE).is_file():
        return FINISHED
    status = read_json(run.run_dir / STATUS)
    if status is None:
        return PENDING
    state = status.get("state")
    if state == RUNNING:
        same_host = status.get("host") == socket.gethostname()
        if same_host and isinstance(status.get("pid"), int) and _alive(status["pid"]):
            return RUNNING
        return INTERRUPTED
    if state in (FAILED, INTERRUPTED):
        return state
    return INTERRUPTED  # a status file from an attempt that never recorded its end


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


# Live child processes, so that an interrupted runner can stop them (they run in their own
# session: a Ctrl-C in the terminal reaches the runner only, which then stops them cleanly).
_LIVE: dict[int, subprocess.Popen] = {}
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()


def stop_all(grace: float = 10.0) -> None:
    """Mark the runner as stopping and end every child's process group (TERM, then KILL)."""
    _STOPPING.set()
    with _LIVE_LOCK:
        procs = list(_LIVE.values())
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@contextlib.contextmanager
def claimed(run: Run) -> Iterator[bool]:
    """Hold the run's claim (an exclusive, non-blocking ``flock``) for the block; yields False
    when another process holds it.

    Two runners of one study plan the same pending runs; without a claim both launch each of
    them, and the second process deletes or appends to the first one's logs in the shared run
    directory (it happened: interleaved d3rlpy CSVs, a run finished with 3 of 5 evaluations).
    A file system without ``flock`` (some network mounts) yields True: one runner per study
    there, as before.
    """
    run.run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run.run_dir / CLAIM, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError:  # no flock on this file system
            pass
        yield True
    finally:
        os.close(fd)  # closing the descriptor drops the lock


def execute(run: Run, resume: bool | None = None) -> Outcome:
    """Launch ``run`` once and record how it ended; never raises for a failing run.

    The run is claimed first and its state read again under the claim: a run that another
    runner is executing, or has finished since this runner planned, is skipped.
    ``resume=None`` decides from the files: a run with an earlier attempt is re-launched with
    the entry point's resume flag when the entry point can continue from what it left.
    """
    with claimed(run) as mine:
        state = run_state(run) if mine else RUNNING
        if state in (RUNNING, FINISHED):
            why = "finished by another runner" if state == FINISHED else "running in another runner"
            return Outcome(run, SKIPPED, message=why)
        return _execute_claimed(run, resume)


def _execute_claimed(run: Run, resume: bool | None) -> Outcome:
    previous = read_json(run.run_dir / STATUS)
    if resume is None:
        resume = previous is not None and run.entry_point.can_resume(run.run_dir)
    launch = run.entry_point.launch(run, resume)
    attempt = int(previous.get("attempt", 0)) + 1 if previous else 1
    log_path = run.run_dir / LOG
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **launch.env}
    env["PYTHONUNBUFFERED"] = "1"
    base = {
        "study": run.study,
        "arm": run.arm,
        "seed": run.seed,
        "attempt": attempt,
        "resumed": resume,
        "argv": launch.argv,
        "cwd": str(launch.cwd),
        "host": socket.gethostname(),
        "log": str(log_path),
    }
    start = time.time()
    with log_path.open("a") as log:
        log.write(f"\n=== attempt {attempt}{' (resume)' if resume else ''}: {launch.shell()}\n")
        log.flush()
        try:
            proc = subprocess.Popen(
                launch.argv,
                cwd=launch.cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as err:
            log.write(f"could not start: {err}\n")
            proc = None
        if proc is not None:
            with _LIVE_LOCK:
                _LIVE[proc.pid] = proc
            base["pid"] = proc.pid
            atomic_write_json({**base, "state": RUNNING}, run.run_dir / STATUS)
            try:
                returncode = proc.wait()
            finally:
                with _LIVE_LOCK:
                    _LIVE.pop(proc.pid, None)
        else:
            returncode = 127
    seconds = time.time() - start
    record = {**base, "returncode": returncode, "seconds": round(seconds, 3)}
    if returncode == 0:
        atomic_write_json({**record, "state": FINISHED}, run.run_dir / STATUS)
        atomic_write_json({**record, "state": FINISHED}, run.run_dir / DONE)
        return Outcome(run, FINISHED, 0, seconds, resume, log_path)
    if _STOPPING.is_set():  # we stopped it: continue next time, do not count it as a failure
        atomic_write_json({**record, "state": INTERRUPTED}, run.run_dir / STATUS)
        return Outcome(run, INTERRUPTED, returncode, seconds, resume, log_path)
    tail = log_tail(log_path)
    atomic_write_json({**record, "state": FAILED, "log_tail": tail}, run.run_dir / STATUS)
    return Outcome(run, FAILED, returncode, seconds, resume, log_path, tail[-1] if tail else "")


def select(runs: Iterable[Run], retry_failed: bool = False) -> tuple[list[Run], dict[str, int]]:
    """The runs still to do, and how many of each state were found."""
    todo, counts = [], {s: 0 for s in (PENDING, RUNNING, INTERRUPTED, FAILED, FINISHED)}
    for run in runs:
        state = run_state(run)
        counts[state] += 1
        if state in (PENDING, INTERRUPTED) or (state == FAILED and retry_failed):
            todo.append(run)
    return todo, counts


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="run", dynamic_ncols=True)


def _line(outcome: Outcome) -> str:
    what = f"{outcome.run.key:<24} {outcome.state}"
    if outcome.state == SKIPPED:
        return f"{what}: {outcome.message}"
    if outcome.state == FINISHED:
        return f"{what} in {outcome.seconds:.1f} s" + (" (resumed)" if outcome.resumed else "")
    return f"{what} (rc {outcome.returncode}); log: {outcome.log}"


def run_local(
    runs: list[Run],
    workers: int = 1,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> list[Outcome]:
    """Run ``runs`` with ``workers`` processes at a time, each single-threaded (OMP=1).

    A KeyboardInterrupt (or SIGTERM turned into one by the CLI) stops every child; those runs
    are recorded as interrupted and resume on the next ``run``.
    """
    _STOPPING.clear()
    outcomes: list[Outcome] = []
    bar = _progress(len(runs), progress)
    say = bar.write if bar is not None else echo
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = [pool.submit(execute, run) for run in runs]
        for future in as_completed(futures):
            outcome = future.result()
            outcomes.append(outcome)
            say(_line(outcome))
            if bar is not None:
                bar.update(1)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_all()
        pool.shutdown(wait=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    pool.shutdown(wait=True)
    return outcomes


class RunJob:
    """A submitit job for one run; on preemption/timeout it stops the child and requeues
    itself, and the requeued job resumes from the run's files."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def __call__(self) -> Outcome:
        _STOPPING.clear()
        return execute(self.run)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        stop_all()
        return submitit.helpers.DelayedSubmission(RunJob(self.run))


def slurm_parameters(settings: dict[str, Any], name: str) -> dict[str, Any]:
    """The study's ``slurm:`` section (or CLI flags) as submitit AutoExecutor parameters."""
    params: dict[str, Any] = {"name": name}
    generic = {"gpus": "gpus_per_node", "cpus": "cpus_per_task", "mem_gb": "mem_gb"}
    generic["time_min"] = "timeout_min"
    for key, param in generic.items():
        if settings.get(key) is not None:
            params[param] = settings[key]
    for key in ("partition", "array_parallelism", "account", "qos", "constraint"):
        if settings.get(key) is not None:
            params[f"slurm_{key}"] = settings[key]
    return params


@dataclass
class Submitted:
    jobs: list[Any] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    folder: Path | None = None


def submit_slurm(
    runs: list[Run], settings: dict[str, Any], folder: Path, cluster: str | None = None
) -> Submitted:
    """Submit one job per run as a job array. ``cluster='debug'``/``'local'`` runs them here
    (tests, dry runs of the SLURM path); ``None`` lets submitit pick (SLURM when present)."""
    try:
        import submitit
    except ImportError as err:
        raise RuntimeError(
            "--launcher slurm needs submitit: pip install submitit (see the study README)."
        ) from err
    folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
    executor.update_parameters(**slurm_parameters(settings, f"study-{runs[0].study}"))
    with executor.batch():
        jobs = [executor.submit(RunJob(run)) for run in runs]
    return Submitted(jobs, runs, folder)


def wait_slurm(
    submitted: Submitted, progress: bool = True, echo: Callable[[str], None] = print
) -> list[Outcome]:
    """Wait for every job; a job that died without an outcome is recorded as failed."""
    outcomes: list[Outcome] = []
    bar = _progress(len(submitted.jobs), progress)
    say = bar.write if bar is not None else echo
    try:
        for job, run in zip(submitted.jobs, submitted.runs, strict=True):
            try:
                outcome = job.result()
            except Exception as err:  # the job itself failed (node died, out of memory, ...)
                state = run_state(run)
                message = f"job {job.job_id}: {type(err).__name__}: {str(err)[-300:]}"
                if state != FINISHED:
                    previous = read_json(run.run_dir / STATUS) or {}
                    record = {"returncode": None, "log_tail": [message], "job": job.job_id}
                    atomic_write_json({**previous, **record, "state": FAILED}, run.run_dir / STATUS)
                outcome = Outcome(run, state if state == FINISHED else FAILED, message=message)
            outcomes.append(outcome)
            say(_line(outcome))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return outcomes
