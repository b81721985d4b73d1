"""The runner: local pool, resume after an interruption, failures recorded, submitit path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import flatrl
import pytest
from flatrl.study import runner
from flatrl.study.runner import (
    FAILED,
    FINISHED,
    INTERRUPTED,
    PENDING,
    plan,
    run_local,
    run_state,
    select,
    subset,
)
from flatrl.study.spec import StudyError
from study_support import TOY, invocations, make_study, toy_raw


def test_local_pool_runs_every_arm_and_seed_single_threaded(tmp_path):
    study = make_study(
        entry_point={
            "type": "command",
            "command": f"{{python}} {TOY} --seed {{seed}} --steps {{budget}} --out {{run_dir}}",
        }
    )
    runs = plan(study, tmp_path)
    outcomes = run_local(runs, workers=2, progress=False, echo=lambda s: None)
    assert sorted(o.state for o in outcomes) == [FINISHED] * 4
    for run in runs:
        assert run_state(run) == FINISHED
        done = json.loads((run.run_dir / runner.DONE).read_text())
        assert (
            done["returncode"] == 0
            and done["argv"][-2:] == ["--out", str(run.run_dir)]
            or ("--quality" in done["argv"])
        )
        rows = (run.run_dir / "metrics.csv").read_text().splitlines()
        assert len(rows) == 1 + study.budget
    # the arm's overrides reach its command line, and only its
    by_arm = {run.arm: run for run in runs}
    assert "--quality" in invocations(by_arm["better"].run_dir)[0]["argv"]
    assert "--quality" not in invocations(by_arm["base"].run_dir)[0]["argv"]


def test_children_get_one_thread(tmp_path):
    study = make_study(
        entry_point={
            "type": "command",
            "command": "{python} -c \"import os; print(os.environ['OMP_NUM_THREADS'], end='')\"",
        },
        seeds=[0],
        arms={"a": {}},
        baseline=None,
    )
    (run,) = plan(study, tmp_path)
    assert runner.execute(run).state == FINISHED
    assert (run.run_dir / "run.log").read_text().splitlines()[-1] == "1"


def test_failed_run_is_recorded_and_the_others_finish(tmp_path):
    study = make_study(arms={"base": {}, "broken": {"overrides": {"--fail": True}}})
    runs = plan(study, tmp_path)
    outcomes = {o.run.key: o for o in run_local(runs, workers=2, progress=False, echo=print)}
    assert outcomes["base/seed_0"].state == outcomes["base/seed_1"].state == FINISHED
    broken = next(run for run in runs if run.arm == "broken")
    assert outcomes[broken.key].state == FAILED and outcomes[broken.key].returncode == 3
    status = json.loads((broken.run_dir / runner.STATUS).read_text())
    assert status["state"] == FAILED and status["returncode"] == 3
    assert any("diverged" in line for line in status["log_tail"])
    assert status["log"] == str(broken.run_dir / "run.log")
    assert not (broken.run_dir / runner.DONE).exists()
    # a second `run` leaves failed runs alone unless asked to retry them
    todo, counts = select(runs)
    assert todo == [] and counts[FAILED] == 2 and counts[FINISHED] == 2
    todo, _ = select(runs, retry_failed=True)
    assert [r.arm for r in todo] == ["broken", "broken"]


def test_dead_running_record_is_interrupted_and_resumes_with_the_flag(tmp_path):
    study = make_study(seeds=[0], arms={"base": {}}, baseline=None)
    (run,) = plan(study, tmp_path)
    # an attempt that stopped at step 2: its process is gone (pid of an exited child)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runner.execute(run, resume=False)  # writes a full run; now fake the interrupted state
    (run.run_dir / runner.DONE).unlink()
    (run.run_dir / "checkpoint.json").write_text(json.dumps({"step": 2}))
    lines = (run.run_dir / "metrics.csv").read_text().splitlines()[:3]
    (run.run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    status = json.loads((run.run_dir / runner.STATUS).read_text())
    status.update(state="running", pid=dead.pid)
    (run.run_dir / runner.STATUS).write_text(json.dumps(status))
    assert run_state(run) == INTERRUPTED
    (outcome,) = run_local([run], progress=False, echo=lambda s: None)
    assert outcome.state == FINISHED and outcome.resumed
    assert invocations(run.run_dir)[-1]["resume"] is True
    steps = [int(r.split(",")[0]) for r in (run.run_dir / "metrics.csv").read_text().split()[1:]]
    assert steps == [1, 2, 3, 4, 5]


def _cli_env() -> dict[str, str]:
    overlay = str(Path(flatrl.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": overlay + (os.pathsep + path if path else "")}


def test_interrupted_study_resumes_and_skips_finished_runs(tmp_path):
    """SIGTERM to `run` stops the children; the next `run` skips finished runs and re-launches
    the interrupted one with --resume, which continues from its checkpoint."""
    yaml = pytest.importorskip("yaml", reason="study files are YAML (pyyaml)")
    raw = {
        "name": "toy",
        "entry_point": {
            "type": "command",
            "command": f"{{python}} {TOY} --seed {{seed}} --steps {{budget}} --out {{run_dir}}",
            "resume_flag": "--resume",
        },
        "seeds": [0],
        "budget": 6,
        "metric": "return",
        "arms": {"quick": {}, "slow": {"overrides": {"--hang-at": 3}}},
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(raw))
    root = tmp_path / "runs"
    cmd = [sys.executable, "-m", "flatrl.study", "run", str(path), "--runs-root", str(root)]
    cmd += ["--workers", "2", "--no-progress"]
    slow, quick = root / "toy/slow/seed_0", root / "toy/quick/seed_0"
    proc = subprocess.Popen(cmd, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not ((quick / runner.DONE).exists() and "waiting" in _read(slow / "run.log")):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "toy runs did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "will resume" in out
    status = json.loads((slow / runner.STATUS).read_text())
    assert status["state"] == INTERRUPTED
    child = status["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # the runner stopped its child
    assert json.loads((slow / "checkpoint.json").read_text())["step"] == 3

    again = subprocess.run(cmd, env=_cli_env(), capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 finished" in again.stdout and "1 interrupted: resume" in again.stdout
    assert [i["resume"] for i in invocations(quick)] == [False]  # skipped: ran once
    assert [i["resume"] for i in invocations(slow)] == [False, True]
    steps = [int(r.split(",")[0]) for r in (slow / "metrics.csv").read_text().split()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]
    status_out = subprocess.run(
        [sys.executable, "-m", "flatrl.study", "status", str(path), "--runs-root", str(root)],
        env=_cli_env(),
        capture_output=True,
        text=True,
    ).stdout
    assert "finished     2" in status_out and "report:" in status_out
    assert "arms with every seed finished: 2 of 2" in status_out


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_submitit_debug_executor_runs_jobs_and_records_failures(tmp_path):
    pytest.importorskip("submitit", reason="--launcher slurm goes through submitit")
    study = make_study(
        arms={"base": {}, "broken": {"overrides": {"--fail": True}}},
        baseline=None,
    )
    runs = plan(study, tmp_path)
    settings = {"partition": "gpu", "gpus": 1, "time_min": 30, "array_parallelism": 2}
    params = runner.slurm_parameters(settings, "study-toy")
    assert params == {
        "name": "study-toy",
        "gpus_per_node": 1,
        "timeout_min": 30,
        "slurm_partition": "gpu",
        "slurm_array_parallelism": 2,
    }
    submitted = runner.submit_slurm(runs, settings, tmp_path / ".submitit", cluster="debug")
    outcomes = runner.wait_slurm(submitted, progress=False, echo=lambda s: None)
    expected = [FAILED if run.arm == "broken" else FINISHED for run in runs]
    assert [o.state for o in outcomes] == expected
    assert [run_state(r) for r in runs] == expected
    # a second submission has nothing left to do
    assert select(runs)[0] == []
    assert run_state(plan(make_study(seeds=[9]), tmp_path)[0]) == PENDING


def test_arms_and_seeds_select_a_subset_in_plan_order(tmp_path):
    study = make_study(
        arms={"iql-adam": {}, "iql-sam": {}, "cql-adam": {}},
        seeds=[0, 1, 2],
        baseline=None,
    )
    runs = plan(study, tmp_path)
    chosen = subset(runs, arms=["iql-*"], seeds=[1, 2])
    assert [r.key for r in chosen] == [
        "iql-adam/seed_1",
        "iql-sam/seed_1",
        "iql-adam/seed_2",
        "iql-sam/seed_2",
    ]
    assert [r.key for r in subset(runs, arms=["cql-adam", "iql-sam"], seeds=[0])] == [
        "iql-sam/seed_0",
        "cql-adam/seed_0",
    ]
    assert subset(runs) == runs


def test_a_subset_that_selects_nothing_names_what_exists(tmp_path):
    study = make_study(arms={"iql-adam": {}, "iql-sam": {}}, seeds=[0, 1], baseline=None)
    runs = plan(study, tmp_path)
    with pytest.raises(StudyError, match=r"'td3\*' matches no arm.*iql-adam, iql-sam"):
        subset(runs, arms=["td3*"])
    with pytest.raises(StudyError, match=r"\[7\] are not in the study's seed list \[0, 1\]"):
        subset(runs, seeds=[7])


def test_archive_keeps_finished_runs_metrics_and_no_checkpoints(tmp_path):
    from flatrl.study.archive import archive_study
    from flatrl.study.report import collect

    study = make_study(
        entry_point={
            "type": "command",
            "command": f"{{python}} {TOY} --seed {{seed}} --steps {{budget}} --out {{run_dir}}",
        }
    )
    runs = plan(study, tmp_path / "runs")
    run_local(runs[:3], workers=1, progress=False, echo=lambda s: None)  # one run not finished
    (runs[0].run_dir / "big.csv").write_text("return\n" + "1\n" * 1000)
    (runs[0].run_dir / "grad_stats.csv").write_text("step,norm\n1,0.5\n")  # no study metric
    (runs[0].run_dir / "sharpness.csv").write_text("1,1,0.5\n")  # d3rlpy style: named after one
    (runs[0].run_dir / "tb").mkdir()
    (runs[0].run_dir / "tb/events.out.tfevents.1.host").write_bytes(b"\0" * 100)  # SAC's logs
    (runs[0].run_dir / "replay/step_5").mkdir(parents=True)
    (runs[0].run_dir / "replay/step_5/meta.json").write_text("{}")  # a buffer dump's metadata
    done = archive_study(study, tmp_path / "runs", tmp_path / "kept", max_bytes=1000)
    assert done.runs == [r.key for r in runs[:3]] and done.not_finished == [runs[3].key]
    kept = {p.relative_to(tmp_path / "kept").as_posix() for p in (tmp_path / "kept").rglob("*")}
    first = f"toy/{runs[0].key}"
    names = ("done.json", "status.json", "metrics.csv", "sharpness.csv")
    names += ("tb/events.out.tfevents.1.host",)
    assert {f"{first}/{n}" for n in names} <= kept
    left = ("checkpoint", ".log", "big.csv", "grad_stats.csv", "replay")
    assert not [k for k in kept if any(part in k for part in left)]
    assert not any(runs[3].key in k for k in kept)
    # the archive reports the same scores as the runs, and resumes as finished
    scores = {
        root: {a: [r.final for r in rs] for a, rs in collect(study, tmp_path / root).items()}
        for root in ("runs", "kept")
    }
    assert scores["runs"] == scores["kept"] and scores["kept"]["base"][0] is not None
    assert [run_state(r) for r in plan(study, tmp_path / "kept")][:3] == [FINISHED] * 3
    # archiving again replaces, and the runs root itself is refused
    assert archive_study(study, tmp_path / "runs", tmp_path / "kept").runs == done.runs
    with pytest.raises(ValueError, match="another folder"):
        archive_study(study, tmp_path / "runs", tmp_path / "runs")


def test_report_arms_bring_their_baselines(tmp_path):
    from flatrl.study.runner import matching_arms

    study = make_study(arms={"base": {}, "better": {}, "worse": {}}, baseline="base")
    assert matching_arms(study, ["bett*"]) == ["base", "better"]
    assert matching_arms(study, ["worse", "better"]) == ["base", "better", "worse"]
    with pytest.raises(StudyError, match="'none' matches no arm"):
        matching_arms(study, ["none"])


def test_two_runners_of_one_study_launch_each_run_once(tmp_path):
    """Two ``run`` calls on one study (two terminals, or a second pool started to use another
    core) plan the same pending runs; each run must still be launched exactly once: a second
    launch in the same directory deletes or interleaves the first one's logs."""
    import threading

    study = make_study(seeds=[0, 1, 2])
    outcomes: list[list] = [[], []]

    def pool(i: int) -> None:
        outcomes[i] = run_local(plan(study, tmp_path), workers=1, progress=False, echo=str)

    threads = [threading.Thread(target=pool, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    runs = plan(study, tmp_path)
    assert [len(invocations(run.run_dir)) for run in runs] == [1] * len(runs)
    assert all(run_state(run) == FINISHED for run in runs)
    states = sorted(o.state for pool_outcomes in outcomes for o in pool_outcomes)
    assert states.count(FINISHED) == len(runs)
    assert states.count(runner.SKIPPED) == len(runs)


def test_a_claimed_run_is_skipped_not_launched(tmp_path):
    run = plan(make_study(), tmp_path)[0]
    with runner.claimed(run) as mine:
        assert mine
        outcome = runner.execute(run)
    assert outcome.state == runner.SKIPPED and "another runner" in outcome.message
    assert invocations(run.run_dir) == [] and run_state(run) == PENDING
    assert runner.execute(run).state == FINISHED  # the claim went with its holder


def test_validate_into_a_closed_pipe_stops_quietly(tmp_path):
    """`flatrl.study validate study.yaml | head -1`: the reader leaves early; the CLI must stop
    with SIGPIPE's status and no traceback (it printed a BrokenPipeError traceback before)."""
    path = tmp_path / "study.yaml"
    # one command line per arm, ~500 KB in all: more than a pipe holds, so the CLI is still
    # writing when the reader leaves (a few lines could all fit, and it would exit 0 first)
    arms = {"base": {}, **{f"arm{i}": {"overrides": {"--quality": i}} for i in range(2000)}}
    path.write_text(json.dumps(toy_raw(arms=arms)))  # JSON is YAML
    cmd = [sys.executable, "-m", "flatrl.study", "validate", str(path)]
    proc = subprocess.Popen(cmd, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(str(path).encode())
    proc.stdout.close()  # what `head -1` does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err
