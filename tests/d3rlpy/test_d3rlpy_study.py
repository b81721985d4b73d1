"""bench/d3rlpy_study.py, the d3rlpy entry point of the study runner: what a run writes (the CSVs
the study adapter reads, sharpness for SAM), the dataset cache, and the flag checks."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from d3rlpy_support import require_patched_d3rlpy

require_patched_d3rlpy()

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "d3rlpy_study.py"


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("flatrl_bench_d3rlpy_study", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


study = _load_script()
TINY = ["--steps", "4", "--eval-every", "2", "--eval-episodes", "1", "--hidden", "8"]
TINY += ["--batch-size", "8", "--episodes", "1", "--dataset", "pendulum"]


def _d3rlpy_rows(path: Path) -> list[tuple[int, int, float]]:
    rows = [line.split(",") for line in path.read_text().splitlines() if line]
    assert all(len(r) == 3 for r in rows), f"{path} is not d3rlpy's epoch,step,value CSV"
    return [(int(e), int(s), float(v)) for e, s, v in rows]


@pytest.mark.parametrize("algo", ["iql", "cql", "td3plusbc"])
def test_tiny_sam_run_writes_the_csvs_the_study_adapter_reads(tmp_path: Path, algo: str) -> None:
    from flatrl.study.entry_points import make_entry_point

    run_dir = tmp_path / "run"
    argv = [*TINY, "--algo", algo, "--optimizer", "sam", "--rho", "0.05", "--seed", "3"]
    argv += ["--log-dir", str(run_dir / "logs"), "--cache-dir", str(tmp_path / "cache")]
    assert study.main(argv) == 0
    (exp,) = (run_dir / "logs").iterdir()
    assert exp.name == f"{algo}-pendulum-sam0.05-seed3"
    evals = _d3rlpy_rows(exp / "eval_return.csv")
    assert [(e, s) for e, s, _ in evals] == [(1, 2), (2, 4)]
    assert all(-2000.0 < v <= 0.0 for _, _, v in evals)  # Pendulum returns are negative
    for name in ("critic_sharpness", "actor_sharpness"):
        values = [v for _, _, v in _d3rlpy_rows(exp / f"{name}.csv")]
        assert len(values) == 2 and all(np.isfinite(values)), name
    info = json.loads((exp / "run.json").read_text())
    assert info["dataset"]["transitions"] == 200 and info["args"]["rho"] == 0.05
    # the study's d3rlpy adapter finds the eval curve under <run_dir>/logs/**
    adapter = make_entry_point({"type": "d3rlpy", "script": str(SCRIPT)}, "entry_point", "t")
    series = adapter.read_metric(run_dir, "eval_return")
    assert series is not None and list(series.steps) == [2.0, 4.0]
    assert list(series.values) == [v for _, _, v in evals]


def test_adam_run_logs_no_sharpness_and_a_rerun_starts_over(tmp_path: Path) -> None:
    argv = [*TINY, "--algo", "td3plusbc", "--log-dir", str(tmp_path / "logs")]
    argv += ["--cache-dir", str(tmp_path / "cache")]
    assert study.main(argv) == 0
    exp = tmp_path / "logs" / "td3plusbc-pendulum-adam-seed0"
    assert (exp / "critic_loss.csv").is_file()
    assert not list(exp.glob("*_sharpness.csv"))
    (exp / "stale.csv").write_text("1,2,3\n")
    assert study.main(argv) == 0  # not resumable: a re-launch replaces the run's directory
    assert not (exp / "stale.csv").exists()
    assert len(_d3rlpy_rows(exp / "eval_return.csv")) == 2


def test_dataset_cache_is_reused_and_keyed_by_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = study.DatasetSpec("pendulum", "Pendulum-v1", 1, 0.15, 0.1, 2.0)
    first, path, hit = study.load_or_collect(spec, 0, tmp_path)
    assert not hit and path.is_file() and path.parent == tmp_path
    assert first["obs"].shape == (200, 3) and first["act"].shape == (200, 1)

    def no_collect(*args: object) -> None:
        raise AssertionError("the cached dataset was generated again")

    monkeypatch.setattr(study, "collect", no_collect)
    again, path2, hit2 = study.load_or_collect(spec, 0, tmp_path)
    assert hit2 and path2 == path
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    # anything that changes the content changes the key: a new file, not a stale hit
    assert study.dataset_key(spec, 1) != study.dataset_key(spec, 0)
    noisier = study.DatasetSpec("pendulum", "Pendulum-v1", 1, 0.3, 0.1, 2.0)
    assert study.dataset_key(noisier, 0) != study.dataset_key(spec, 0)
    # and a run reports the hit
    argv = [*TINY, "--algo", "td3plusbc", "--log-dir", str(tmp_path / "logs")]
    argv += ["--cache-dir", str(tmp_path)]
    assert study.main(argv) == 0
    info = json.loads((tmp_path / "logs/td3plusbc-pendulum-adam-seed0/run.json").read_text())
    assert info["dataset"]["cache_hit"] is True and info["dataset"]["cache"] == str(path)


def test_reward_scale_returns_is_fitted_to_the_datasets_episode_returns(tmp_path: Path) -> None:
    """``--reward-scale returns`` reaches d3rlpy as IQL's normalisation, fitted on our data; a
    number reaches it as a plain multiplier (the default stays x0.1, so old runs stand)."""
    common = [*TINY, "--episodes", "2", "--algo", "iql", "--cache-dir", str(tmp_path / "cache")]
    scalers = {}
    for scale in ("returns", "0.5", None):
        log_dir = tmp_path / f"logs-{scale}"
        extra = [] if scale is None else ["--reward-scale", scale]
        assert study.main([*common, *extra, "--log-dir", str(log_dir)]) == 0
        exp = log_dir / "iql-pendulum-adam-seed0"
        params = json.loads((exp / "params.json").read_text())
        scalers[scale] = params["config"]["params"]["reward_scaler"]
        info = json.loads((exp / "run.json").read_text())
    returns = scalers["returns"]
    assert returns["type"] == "return" and returns["params"]["multiplier"] == 1000.0
    assert info["dataset"]["episodes_total"] == 2
    # d3rlpy sums each episode's rewards but the last (a time-limited episode's last transition
    # has no successor), so each return is ours up to one Pendulum reward (at most 16.3)
    d = info["dataset"]
    assert d["behaviour_return_max"] - d["behaviour_return_min"] > 100.0
    assert returns["params"]["return_max"] == pytest.approx(d["behaviour_return_max"], abs=16.3)
    assert returns["params"]["return_min"] == pytest.approx(d["behaviour_return_min"], abs=16.3)
    assert scalers["0.5"] == {"type": "multiply", "params": {"multiplier": 0.5}}
    assert scalers[None] == {"type": "multiply", "params": {"multiplier": 0.1}}


def test_reward_scale_returns_on_equal_episode_returns_names_the_fix(tmp_path: Path) -> None:
    argv = [*TINY, "--algo", "iql", "--reward-scale", "returns", "--log-dir", str(tmp_path / "l")]
    with pytest.raises(SystemExit, match="every episode returns the same.*--reward-scale 0.1"):
        study.main([*argv, "--cache-dir", str(tmp_path / "cache")])  # TINY has one episode
    assert not (tmp_path / "l").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--algo", "sac"], "invalid choice: 'sac'"),
        (["--algo", "iql", "--dataset", "hopper"], "invalid choice: 'hopper'"),
        (["--algo", "iql", "--optimizer", "sam"], "--optimizer sam needs --rho"),
        (["--algo", "iql", "--rho", "0.05"], "--rho/--adaptive apply to --optimizer sam"),
        (["--algo", "iql", "--adaptive"], "--rho/--adaptive apply to --optimizer sam"),
        (["--algo", "iql", "--optimizer", "sam", "--rho", "-0.1"], "--rho must be a finite"),
        (["--algo", "iql", "--optimizer", "sam", "--rho", "nan"], "--rho must be a finite"),
        (["--algo", "iql", "--steps", "5", "--eval-every", "10"], "nothing would be evaluated"),
        (["--algo", "iql", "--steps", "0"], "--steps must be a positive integer"),
        (["--algo", "iql", "--eval-episodes", "0"], "--eval-episodes must be a positive"),
        (["--algo", "iql", "--reward-scale", "0"], "--reward-scale '0': give a positive"),
        (["--algo", "iql", "--reward-scale", "return"], "or 'returns'"),
    ],
)
def test_bad_flags_fail_before_anything_runs(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if "--dataset" not in argv:
        argv = [*argv, "--dataset", "pendulum"]
    with pytest.raises(SystemExit) as exit_info:
        study.parse_args([*argv, "--log-dir", str(tmp_path / "logs")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


# -- the MuJoCo dataset: HalfCheetah-v5 with a briefly trained SAC behaviour policy ---------------
def _tiny_halfcheetah() -> Any:
    """The halfcheetah recipe at test size: 250 online SAC steps (100 random) with 8-unit nets,
    100-step episodes (so the replay holds 2 finished episodes and one it drops), 2 rollouts."""
    return study.DatasetSpec(
        "halfcheetah",
        "HalfCheetah-v5",
        2,
        0.2,
        0.1,
        1.0,
        behaviour=study.BehaviourSpec(steps=250, random_steps=100, hidden=8, batch_size=16),
        max_episode_steps=100,
    )


@pytest.fixture
def one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def test_halfcheetah_dataset_has_replay_and_rollout_episodes_and_is_reproducible(
    tmp_path: Path, one_thread: None
) -> None:
    pytest.importorskip("mujoco", reason="pip install -c requirements/constraints.txt mujoco")
    spec = _tiny_halfcheetah()
    first, path, hit = study.load_or_collect(spec, 0, tmp_path)
    assert not hit and path.name.startswith("halfcheetah-")
    # 2 finished replay episodes (the 3rd, cut at step 250, is dropped) + 2 noisy rollouts
    assert first["obs"].shape == (400, 17) and first["act"].shape == (400, 6)
    for key in ("obs", "act", "rew", "term", "trunc", "ret"):
        assert first[key].dtype == np.float32, key
    assert first["rew"].shape == first["term"].shape == first["trunc"].shape == (400,)
    assert list(first["from_replay"]) == [True, True, False, False]
    # HalfCheetah never terminates: every episode ends in a time-limit truncation at step 100
    assert not first["term"].any()
    np.testing.assert_array_equal(np.flatnonzero(first["trunc"]), [99, 199, 299, 399])
    np.testing.assert_allclose(first["ret"], first["rew"].reshape(4, 100).sum(axis=1), rtol=1e-5)
    assert np.abs(first["act"]).max() <= 1.0
    # the same key gives the same arrays: the behaviour training and the rollouts are seeded
    again = study.collect(spec, 0)
    assert sorted(again) == sorted(first)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
    assert not np.array_equal(study.collect(spec, 1)["obs"], first["obs"])


def test_every_behaviour_and_simulator_setting_is_in_the_halfcheetah_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mujoco = pytest.importorskip("mujoco")
    import dataclasses

    spec = _tiny_halfcheetah()
    behaviour = spec.behaviour
    keys = {study.dataset_key(spec, 0)}
    changes = {"steps": 300, "random_steps": 50, "hidden": 16, "batch_size": 32}
    changes |= {"learning_rate": 1e-3, "gamma": 0.98, "tau": 0.01, "initial_temperature": 0.5}
    changes |= {"keep_replay": False}
    assert set(changes) == {f.name for f in dataclasses.fields(behaviour)}
    for name, value in changes.items():
        changed = dataclasses.replace(
            spec, behaviour=dataclasses.replace(behaviour, **{name: value})
        )
        keys.add(study.dataset_key(changed, 0))
    keys.add(study.dataset_key(dataclasses.replace(spec, max_episode_steps=200), 0))
    keys.add(study.dataset_key(dataclasses.replace(spec, episodes=3), 0))
    keys.add(study.dataset_key(spec, 1))
    monkeypatch.setattr(mujoco, "__version__", "0.0.1")  # another simulator, another dataset
    keys.add(study.dataset_key(spec, 0))
    assert len(keys) == len(changes) + 5


def test_scripted_dataset_keys_are_unchanged_by_the_halfcheetah_fields() -> None:
    """Adding ``behaviour``/``max_episode_steps`` to DatasetSpec must not change the keys of the
    scripted datasets: the committed d3rlpy-offline-cpu results name their cache files
    (``run.json``: ``pendulum-83832bf442441936.npz``, ``lunarlander-e84923c654000e8f.npz``), and
    a new key would silently regenerate data those results were not measured on. The key is
    recomputed here with generator 1's formula (the spec's original six fields); the hard-coded
    keys are those of the committed results, made under gymnasium 1.0.0 (the d3rlpy env)."""
    import hashlib

    import gymnasium

    committed = {"pendulum": "83832bf442441936", "lunarlander": "e84923c654000e8f"}
    old_fields = ("name", "env_id", "episodes", "noise", "random_prob", "max_action")
    for name, expected in committed.items():
        spec = study.DATASETS[name]
        blob = json.dumps(
            {
                "generator": 1,
                "spec": {f: getattr(spec, f) for f in old_fields},
                "seed": 0,
                "gymnasium": gymnasium.__version__,
                "numpy": np.__version__.split(".")[0],
            },
            sort_keys=True,
        )
        assert study.dataset_key(spec, 0) == hashlib.sha256(blob.encode()).hexdigest()[:16]
        if gymnasium.__version__ == "1.0.0" and np.__version__.startswith("2."):
            assert study.dataset_key(spec, 0) == expected, name


def test_a_missing_mujoco_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "mujoco", None)  # `import mujoco` raises ImportError
    fix = "pip install -c requirements/constraints.txt -r requirements/d3rlpy.txt"
    with pytest.raises(SystemExit) as exit_info:
        study.parse_args(["--algo", "iql", "--dataset", "halfcheetah", "--log-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--dataset halfcheetah (HalfCheetah-v5) needs the mujoco package" in err and fix in err
    with pytest.raises(study.MissingDependencyError, match="needs the mujoco package"):
        study.dataset_key(study.DATASETS["halfcheetah"], 0)
    # the scripted datasets do not need it
    assert study.parse_args(["--algo", "iql", "--dataset", "pendulum", "--log-dir", "x"])


def test_tiny_halfcheetah_run_end_to_end(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    one_thread: None,
    recwarn: pytest.WarningsRecorder,
) -> None:
    pytest.importorskip("mujoco")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(study.DATASETS, "halfcheetah", _tiny_halfcheetah())
    argv = [*TINY[:-2], "--dataset", "halfcheetah", "--algo", "iql", "--optimizer", "sam"]
    argv += ["--rho", "0.05", "--log-dir", str(tmp_path / "logs")]
    argv += ["--cache-dir", str(tmp_path / "cache")]
    assert study.main(argv) == 0
    exp = tmp_path / "logs" / "iql-halfcheetah-sam0.05-seed0"
    evals = _d3rlpy_rows(exp / "eval_return.csv")
    assert [(e, s) for e, s, _ in evals] == [(1, 2), (2, 4)]
    info = json.loads((exp / "run.json").read_text())
    # --episodes 1: one noisy rollout after the 2 replay episodes
    assert info["dataset"]["transitions"] == 300 and info["dataset"]["episodes_total"] == 3
    assert info["dataset"]["behaviour"]["steps"] == 250
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()  # mujoco's warnings do not litter cwd
    # nor print gymnasium's model-file deprecation a user cannot act on
    assert not [w for w in recwarn if "settotalmass" in str(w.message)]
