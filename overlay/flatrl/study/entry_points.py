"""Entry points: how one arm x seed becomes a command line, and where its metrics land.

Each adapter knows its program's conventions: which flag takes the seed and the budget, how to
point all of its output into the run's directory, how to ask it to resume, and which files hold
its metrics. The runner and the report only talk to this interface.

==============  =========================================  ========================================
entry point     command (cwd = the run directory)          metrics
==============  =========================================  ========================================
``tdmpc2``      ``.venv/tdmpc2/bin/python build/tdmpc2/     ``logs/<task>/<seed>/<arm>/eval.csv``
                tdmpc2/train.py k=v ... seed= steps=``     (``episode_reward``), ``train.csv``
``sac``         ``.venv/tdmpc2/bin/python -m                TensorBoard ``checkpoints/**/tb``
                flatrl.agents.sac.train k=v ...``          (``eval/return_mean``, ...)
``world_model`` ``.venv/d3rlpy/bin/python -m                TensorBoard ``tb/``
                flatrl.agents.world_model --flag v ...``   (``eval/mean_return``, ...)
``d3rlpy``      ``.venv/d3rlpy/bin/python SCRIPT --flag``   d3rlpy CSVs ``logs/**/<metric>.csv``
``tdmpc2_       ``.venv/tdmpc2/bin/python -m                ``metrics.csv`` (train losses, held-out
offline``       flatrl.tdmpc2.offline train k=v ...``      errors, measured sharpness)
``command``     any template with {python} {seed} ...      a CSV with a header (``metrics.csv``)
==============  =========================================  ========================================
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from flatrl.study.metrics import (
    Series,
    read_csv_column,
    read_d3rlpy_csv,
    read_tensorboard,
)


def repo_root() -> Path:
    """The flatrl checkout (``overlay/flatrl/study`` -> three levels up), or $FLATRL_ROOT."""
    env = os.environ.get("FLATRL_ROOT")
    return Path(env) if env else Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Launch:
    """One process to start: argv, working directory and extra environment variables."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]

    def shell(self) -> str:
        return f"cd {shlex.quote(str(self.cwd))} && {shlex.join(self.argv)}"


def _error(source: str, msg: str) -> ValueError:
    from flatrl.study.spec import StudyError

    return StudyError(f"{source}: {msg}")


class EntryPoint:
    """Base adapter. Subclasses set ``name``, ``options`` and the three hooks."""

    name: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}  # allowed option -> default (None: optional)
    required: ClassVar[tuple[str, ...]] = ()
    reserved: ClassVar[dict[str, str]] = {}  # override key the runner sets -> study key setting it
    style: ClassVar[str] = "hydra"  # how overrides are written: "hydra" (k=v) or "flags" (--k v)
    env_name: ClassVar[str] = "d3rlpy"  # default interpreter: .venv/<env_name>/bin/python

    def __init__(self, options: dict[str, Any]) -> None:
        self.opts = {**self.options, **options}

    # -- overrides ------------------------------------------------------------------------------
    def normalize_overrides(self, raw: Any, key: str, source: str) -> dict[str, Any]:
        """A mapping, or a list of ``k=v`` strings (hydra) / command-line tokens (flags)."""
        if raw is None:
            return {}
        if isinstance(raw, dict):
            return {str(k): v for k, v in raw.items()}
        if not isinstance(raw, list):
            raise _error(source, f"'{key}' must be a mapping or a list, got {type(raw).__name__}.")
        out: dict[str, Any] = {}
        if self.style == "hydra":
            for item in raw:
                if not isinstance(item, str) or "=" not in item:
                    raise _error(
                        source, f"'{key}' item {item!r} is not a Hydra override 'key=value'."
                    )
                k, v = item.split("=", 1)
                out[k] = _Raw(v)
            return out
        tokens = [str(t) for t in raw]
        i = 0
        while i < len(tokens):
            tok = tokens[i]
            if not tok.startswith("-"):
                raise _error(source, f"'{key}': {tok!r} is a value without a flag before it.")
            values = []
            while i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                i += 1
                values.append(_Raw(tokens[i]))
            out[tok] = True if not values else values[0] if len(values) == 1 else values
            i += 1
        return out

    @staticmethod
    def merge_overrides(shared: dict[str, Any], arm: dict[str, Any]) -> dict[str, Any]:
        """The arm's value wins over the shared one for the same key."""
        return {**shared, **arm}

    def check_overrides(self, overrides: dict[str, Any], where: str, source: str) -> None:
        for key in overrides:
            bare = key.lstrip("-+~").replace("_", "-") if self.style == "flags" else key
            for reserved, owner in self.reserved.items():
                target = (
                    reserved.lstrip("-").replace("_", "-") if self.style == "flags" else reserved
                )
                if bare == target:
                    raise _error(
                        source,
                        f"{where} sets '{key}', which the study runner sets for every run "
                        f"from {owner}; remove '{key}' from the overrides.",
                    )

    def render(self, overrides: dict[str, Any]) -> list[str]:
        if self.style == "hydra":
            return [f"{k}={_hydra_value(v)}" for k, v in overrides.items()]
        argv: list[str] = []
        for k, v in overrides.items():
            flag = k if k.startswith("-") else f"--{k}"
            if v is True:
                argv.append(flag)
            elif v is False or v is None:
                continue
            elif isinstance(v, list):
                argv += [flag, *(_flag_value(x) for x in v)]
            else:
                argv += [flag, _flag_value(v)]
        return argv

    # -- the hooks ------------------------------------------------------------------------------
    def python(self) -> str:
        explicit = self.opts.get("python")
        if explicit:
            return str(explicit)
        return str(repo_root() / ".venv" / self.env_name / "bin" / "python")

    def launch(self, run: Any, resume: bool) -> Launch:
        """The command for ``run`` (a runner.Run); ``resume`` continues an interrupted run."""
        raise NotImplementedError

    def can_resume(self, run_dir: Path) -> bool:
        """Whether a re-launch of an interrupted run can continue where it stopped."""
        return False

    def read_metric(self, run_dir: Path, name: str) -> Series | None:
        raise NotImplementedError

    def describe(self) -> str:
        extras = {k: v for k, v in self.opts.items() if v is not None and k != "python"}
        return self.name + (f" {json.dumps(extras)}" if extras else "")


class _Raw(str):
    """A value given as text on a command line in the study file: passed on verbatim."""


def _hydra_value(v: Any) -> str:
    if isinstance(v, _Raw):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, list | tuple):
        return "[" + ",".join(_hydra_value(x) for x in v) + "]"
    return str(v)


def _flag_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class TDMPC2(EntryPoint):
    """Patched TD-MPC2 ``train.py``. Started from the run directory so that upstream's
    ``logs/<task>/<seed>/<exp_name>`` (relative to the launch directory) lands inside it."""

    name = "tdmpc2"
    options = {"python": None, "train_py": None}
    reserved = {
        "seed": "'seeds'",
        "steps": "'budget'",
        "exp_name": "the arm name",
        "resume": "its own resume logic",
    }
    env_name = "tdmpc2"
    defaults = {"enable_wandb": "false", "save_video": "false"}

    def launch(self, run: Any, resume: bool) -> Launch:
        train_py = self.opts.get("train_py") or repo_root() / "build/tdmpc2/tdmpc2/train.py"
        overrides = {**self.defaults, **run.overrides}
        argv = [self.python(), str(train_py), *self.render(overrides)]
        argv += [f"seed={run.seed}", f"steps={run.budget}", f"exp_name={run.arm}"]
        argv += [f"hydra.run.dir={run.run_dir / 'hydra'}"]
        ckpt = self._checkpoint(run.run_dir)
        if resume and ckpt is not None:
            argv += [f"checkpoint={ckpt}", "resume=true"]
        return Launch(argv, run.run_dir, {})

    @staticmethod
    def _checkpoint(run_dir: Path) -> Path | None:
        found = sorted(Path(run_dir).glob("logs/*/*/*/models/checkpoint.pt"))
        return found[-1] if found else None

    def can_resume(self, run_dir: Path) -> bool:
        return self._checkpoint(run_dir) is not None

    def read_metric(self, run_dir: Path, name: str) -> Series | None:
        """``eval/episode_reward`` style names pick the file; bare names try eval, then train."""
        category, _, column = name.rpartition("/")
        files = [category] if category else ["eval", "train"]
        for work_dir in sorted(Path(run_dir).glob("logs/*/*/*")):
            for cat in files:
                found = read_csv_column(work_dir / f"{cat}.csv", column)
                if found is not None:
                    return found
        return None


class SAC(EntryPoint):
    """``python -m flatrl.agents.sac.train``: checkpoints, replay and TensorBoard in the run
    directory via ``training.checkpoint_dir``/``replay_dir``; ``resume=true`` continues."""

    name = "sac"
    options = {"python": None}
    reserved = {
        "seed": "'seeds'",
        "training.total_env_steps": "'budget'",
        "training.checkpoint_dir": "the run directory",
        "training.replay_dir": "the run directory",
        "resume": "its own resume logic",
    }
    env_name = "tdmpc2"

    def launch(self, run: Any, resume: bool) -> Launch:
        overrides = {"training.progress_bar": False, **run.overrides}
        argv = [self.python(), "-m", "flatrl.agents.sac.train", *self.render(overrides)]
        argv += [
            f"seed={run.seed}",
            f"training.total_env_steps={run.budget}",
            f"training.checkpoint_dir={run.run_dir / 'checkpoints'}",
            f"training.replay_dir={run.run_dir / 'replay'}",
            f"hydra.run.dir={run.run_dir / 'hydra'}",
        ]
        if resume:
            argv.append("resume=true")  # without a checkpoint the agent starts fresh
        return Launch(argv, run.run_dir, {})

    def can_resume(self, run_dir: Path) -> bool:
        return True

    def read_metric(self, run_dir: Path, name: str) -> Series | None:
        for tb in sorted(Path(run_dir).glob("checkpoints/**/tb")):
            found = read_tensorboard(tb, name)
            if found is not None:
                return found
        return None


class WorldModel(EntryPoint):
    """``python -m flatrl.agents.world_model``; the budget is ``--max-epoch``."""

    name = "world_model"
    options = {"python": None}
    style = "flags"
    reserved = {
        "--seed": "'seeds'",
        "--max-epoch": "'budget'",
        "--save-path": "the run directory",
        "--log-dir": "the run directory",
        "--resume": "its own resume logic",
    }

    def launch(self, run: Any, resume: bool) -> Launch:
        argv = [self.python(), "-m", "flatrl.agents.world_model", *self.render(run.overrides)]
        argv += ["--seed", str(run.seed), "--max-epoch", str(run.budget)]
        argv += ["--save-path", str(run.run_dir / "checkpoints")]
        argv += ["--log-dir", str(run.run_dir / "tb"), "--no-progress"]
        last = self._last(run.run_dir)
        if resume and last is not None:
            argv += ["--resume", str(last)]
        return Launch(argv, run.run_dir, {})

    @staticmethod
    def _last(run_dir: Path) -> Path | None:
        found = sorted(Path(run_dir).glob("checkpoints/last_*.pt"))
        return found[-1] if found else None

    def can_resume(self, run_dir: Path) -> bool:
        return self._last(run_dir) is not None

    def read_metric(self, run_dir: Path, name: str) -> Series | None:
        tb = Path(run_dir) / "tb"
        return read_tensorboard(tb, name) if tb.is_dir() else None


class D3rlpyScript(EntryPoint):
    """A d3rlpy study script that takes a seed, a budget and a log directory as flags and logs
    with d3rlpy's FileAdapter (``<logdir>/**/<metric>.csv``)."""

    name = "d3rlpy"
    options = {
        "python": None,
        "script": None,
        "seed_flag": "--seed",
        "budget_flag": "--steps",
        "logdir_flag": "--logdir",
        "resume_flag": None,  # d3rlpy's fit() has no resume: a re-launch starts over
    }
    required = ("script",)
    style = "flags"

    @property
    def reserved(self) -> dict[str, str]:  # type: ignore[override]
        out = {self.opts["seed_flag"]: "'seeds'", self.opts["budget_flag"]: "'budget'"}
        out[self.opts["logdir_flag"]] = "the run directory"
        return out

    def launch(self, run: Any, resume: bool) -> Launch:
        script = Path(self.opts["script"])
        script = script if script.is_absolute() else repo_root() / script
        argv = [self.python(), str(script), *self.render(run.overrides)]
        argv += [self.opts["seed_flag"], str(run.seed), self.opts["budget_flag"], str(run.budget)]
        argv += [self.opts["logdir_flag"], str(run.run_dir / "logs")]
        if resume and self.opts["resume_flag"]:
            argv.append(self.opts["resume_flag"])
        return Launch(argv, repo_root(), {})

    def can_resume(self, run_dir: Path) -> bool:
        return bool(self.opts["resume_flag"])

    def read_metric(self, run_dir: Path, name: str) -> Series | None:
        for path in sorted(Path(run_dir).glob(f"logs/**/{name}.csv")):
            found = read_d3rlpy_csv(path)
            if found is not None:
                return found
        return None


class TDMPC2Offline(EntryPoint):
    """``python -m flatrl.tdmpc2.offline train``: TD-MPC2's agent on a fixed DMC dataset, no
    env steps; the budget is gradient updates (``steps``). Any TD-MPC2 key passes through
    (``optimizer=SAM sam_scope=dynamics sam_rho=0.05``, and keys later patches add)."""

    name = "tdmpc2_offline"
    options = {"python": None}
    reserved = {
        "seed": "'seeds'",
        "steps": "'budget'",
        "run_dir": "the run directory",
        "resume": "its own resume logic",
    }
    env_name = "tdmpc2"

    def launch(self, run: Any, resume: bool) -> Launch:
        argv = [self.python(), "-m", "flatrl.tdmpc2.offline", "train", *self.render(run.overrides)]
        argv += [f"seed={run.seed}", f"steps={run.budget}", f"run_dir={run.run_dir}"]
        if resume and self.can_resume(run.run_dir):
            argv.append("resume=true")
        return Launch(argv, run.run_dir, {"MUJOCO_GL": "disable", "OMP_NUM_THREADS": "1"})

    def can_resume(self, run_dir: Path) -> bool:
        return (Path(run_dir) / "checkpoint.pt").is_file()

    def read_metric(self, run_dir: Path, name: str) -> Series | None:
        return read_csv_column(Path(run_dir) / "metrics.csv", name)


class Command(EntryPoint):
    """Any command (tests, one-off scripts). ``command`` is a template whose tokens may use
    ``{python}`` (this interpreter), ``{seed}``, ``{budget}``, ``{run_dir}``, ``{arm}``,
    ``{study}``, ``{root}`` (the flatrl checkout); overrides are appended as ``--key value``;
    ``resume_flag`` is appended to a re-launched run; ``metrics`` is the CSV (relative to the
    run directory) with a header."""

    name = "command"
    options = {
        "command": None,
        "resume_flag": None,
        "metrics": "metrics.csv",
        "step_column": "step",
        "cwd": None,
    }
    required = ("command",)
    style = "flags"

    def python(self) -> str:
        return sys.executable

    def launch(self, run: Any, resume: bool) -> Launch:
        fields = {
            "python": sys.executable,
            "seed": run.seed,
            "budget": run.budget,
            "run_dir": run.run_dir,
            "arm": run.arm,
            "study": run.study,
            "root": repo_root(),
        }
        argv = [tok.format(**fields) for tok in shlex.split(self.opts["command"])]
        argv += self.render(run.overrides)
        if resume and self.opts["resume_flag"]:
            argv.append(self.opts["resume_flag"])
        cwd = Path(self.opts["cwd"]) if self.opts["cwd"] else run.run_dir
        return Launch(argv, cwd, {})

    def can_resume(self, run_dir: Path) -> bool:
        return bool(self.opts["resume_flag"])

    def read_metric(self, run_dir: Path, name: str) -> Series | None:
        return read_csv_column(Path(run_dir) / self.opts["metrics"], name, self.opts["step_column"])


ENTRY_POINTS: dict[str, type[EntryPoint]] = {
    cls.name: cls for cls in (TDMPC2, SAC, WorldModel, D3rlpyScript, TDMPC2Offline, Command)
}


def make_entry_point(raw: Any, key: str, source: str) -> EntryPoint:
    """``tdmpc2`` or ``{type: d3rlpy, script: ...}`` -> an adapter, checked."""
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict) or "type" not in raw:
        raise _error(
            source,
            f"'{key}' must be an entry point name ({', '.join(ENTRY_POINTS)}) or a mapping "
            "with 'type' and its options.",
        )
    kind = raw["type"]
    if kind not in ENTRY_POINTS:
        import difflib

        close = difflib.get_close_matches(str(kind), list(ENTRY_POINTS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise _error(
            source,
            f"'{key}' = {kind!r} is not an entry point{hint}; use one of: "
            f"{', '.join(ENTRY_POINTS)}.",
        )
    cls = ENTRY_POINTS[kind]
    options = {k: v for k, v in raw.items() if k != "type"}
    for opt in options:
        if opt not in cls.options:
            from flatrl.study.spec import _unknown

            raise _unknown(opt, f"'{key}' ({kind})", ["type", *cls.options], source)
    for opt in cls.required:
        if not options.get(opt):
            raise _error(source, f"'{key}' ({kind}) needs '{opt}'; add '{opt}: ...' under it.")
    return cls(options)
