"""One offline-RL run for a study: IQL, CQL or TD3+BC with Adam, SAM or ASAM on a local dataset.

The ``d3rlpy`` entry point of ``python -m flatrl.study`` starts this script once per arm x seed
(``studies/d3rlpy-offline.yaml``); ``bench/d3rlpy_demo.py`` imports it. One run:

1. builds the offline dataset, or loads it from the cache (``--cache-dir``, default
   ``$FLATRL_CACHE/datasets`` = ``~/.cache/flatrl/datasets``), keyed by a hash of everything
   that determines its content (generator version, environment, episodes, noise, seed, gymnasium
   version; for ``halfcheetah`` also the behaviour training settings and the torch, d3rlpy and
   mujoco versions). Nothing is downloaded: a noisy scripted controller, or a behaviour policy
   trained here, rolls out locally.

   * ``pendulum``: Pendulum-v1, an energy-pumping swing-up + PD balance with Gaussian noise and
     10% uniform random actions (40 episodes, 8,000 transitions, behaviour return -401:
     good and bad behaviour mixed).
   * ``lunarlander``: LunarLanderContinuous-v3 (Box2D), gymnasium's own landing heuristic with
     noise and random actions (30 episodes, 11,489 transitions, behaviour return +249). A
     second task that is not MuJoCo: the harder continuous-control task whose scripted expert
     the environment ships (2-d actions, 8-d state, +-100 landing/crash rewards, episodes up to
     1000 steps); the first d3rlpy-offline-cpu results were measured on it.
   * ``halfcheetah``: HalfCheetah-v5 (MuJoCo locomotion: 17-d state, 6-d actions, 1000-step
     episodes that never terminate; needs ``mujoco``, in requirements/d3rlpy.txt). It has no
     scripted controller, so the behaviour policy is a briefly trained d3rlpy SAC
     (``BehaviourSpec``: 25,000 online steps, the first 5,000 uniformly random, then one
     gradient step per step; 2x128 nets, batch 256, one CPU thread). The dataset is the SAC's
     25 finished training-replay episodes (random warm-up to early running, returns -531 to
     +689; like D4RL's medium-replay) followed by 25 rollouts of the final policy with 0.2
     Gaussian noise and 10% random actions (returns +524 to +915, mean +660; a noisy
     "medium"): 50,000 transitions, behaviour return mean +252. Why this mix: bad, improving
     and decent behaviour in one buffer is where offline RL must do more than clone the
     behaviour, and both parts come from one training run. Building it took 342 CPU-seconds
     (7.8 min wall on the shared 2-core machine), once per cache key. The SAC is weak by
     MuJoCo standards (D4RL's medium policy scores about 4,800): 25,000 steps is what fits a
     budget of about 10 CPU-minutes; raise ``BehaviourSpec.steps`` for a stronger one.

   The dataset's seed (``--dataset-seed``, default 0) is separate from the training seed: every
   seed of a study trains on the same data, as with a fixed benchmark dataset.
2. trains the algorithm with d3rlpy's ``fit`` for ``--steps`` gradient steps; with
   ``--optimizer sam`` every network optimizer is ``SAMFactory(base=<its Adam>, rho, adaptive)``
   (CQL's scalar temperature stays on Adam: SAM is for the networks; CQL's conservative weight
   is fixed, as d3rlpy's CQL reproduction runs MuJoCo). Rewards are scaled by
   ``--reward-scale`` (default x0.1; see ``make_reward_scaler``).
3. evaluates every ``--eval-every`` steps over ``--eval-episodes`` episodes and writes d3rlpy's
   header-less CSVs (``epoch,step,value``) under ``<log-dir>/<experiment>/``: the losses, the
   patched d3rlpy's ``*_sharpness`` (SAM only: L(w+e) - L(w)) and ``eval_return.csv`` (the
   study adapter reads ``logs/**/<metric>.csv``), plus ``run.json`` (settings, dataset, timing).

This lives in bench/, not overlay/flatrl/d3rlpy/: it is evidence tooling (gymnasium's Box2D and
MuJoCo environments, scripted controllers, a trained behaviour policy, a dataset cache), not
library code flatrl's users import.
Not resumable: d3rlpy's ``fit`` has no resume, so a re-launch deletes the run's own experiment
directory and starts over (runs are minutes long on CPU).

    OMP_NUM_THREADS=1 .venv/d3rlpy/bin/python bench/d3rlpy_study.py --algo iql \
        --dataset pendulum --optimizer sam --rho 0.05 --seed 0 --steps 20000 --log-dir runs/x
    OMP_NUM_THREADS=1 .venv/d3rlpy/bin/python bench/d3rlpy_study.py --algo td3plusbc \
        --dataset halfcheetah --seed 0 --steps 1000 --eval-every 1000 --eval-episodes 2 \
        --hidden 64 --log-dir /tmp/hc-try
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

# bump when a collector changes: cached datasets of the old code are then not reused
GENERATOR_VERSION = 1
ALGOS = ("iql", "cql", "td3plusbc")
OPTIMIZERS = ("adam", "sam")
EVAL_METRIC = "eval_return"


@dataclasses.dataclass(frozen=True)
class BehaviourSpec:
    """A briefly trained d3rlpy SAC as the behaviour policy of a task with no scripted controller.

    Online ``fit_online`` on CPU with one torch thread: uniform random actions for
    ``random_steps`` (no updates yet), then one gradient step per environment step. Every field
    is part of the dataset's cache key, so changing how the behaviour policy is trained never
    reuses a stale dataset.
    """

    steps: int  # environment steps of online training, random warm-up included
    random_steps: int  # uniformly random warm-up steps (no gradient steps before they end)
    hidden: int  # units of the 2 hidden layers of actor and critics
    batch_size: int
    learning_rate: float = 3e-4  # actor, critic and temperature (d3rlpy's SAC defaults)
    gamma: float = 0.99
    tau: float = 0.005
    initial_temperature: float = 1.0
    keep_replay: bool = True  # the training replay's finished episodes join the dataset


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Everything that determines a dataset's content (and so its cache key)."""

    name: str
    env_id: str
    episodes: int  # noisy rollouts of the behaviour policy
    noise: float  # Gaussian action noise, as a fraction of the action bound
    random_prob: float  # share of uniformly random actions
    max_action: float
    # fields added after generator 1 enter the cache key only when set (see dataset_key)
    behaviour: BehaviourSpec | None = None  # None: a scripted controller (CONTROLLERS)
    max_episode_steps: int | None = None  # None: the environment's own time limit


DATASETS: dict[str, DatasetSpec] = {
    "pendulum": DatasetSpec("pendulum", "Pendulum-v1", 40, 0.15, 0.1, 2.0),
    "lunarlander": DatasetSpec("lunarlander", "LunarLanderContinuous-v3", 30, 0.3, 0.1, 1.0),
    "halfcheetah": DatasetSpec(
        "halfcheetah",
        "HalfCheetah-v5",
        25,
        0.2,
        0.1,
        1.0,
        behaviour=BehaviourSpec(steps=25_000, random_steps=5_000, hidden=128, batch_size=256),
    ),
}
MISSING_MUJOCO_FIX = "pip install -c requirements/constraints.txt -r requirements/d3rlpy.txt"


class MissingDependencyError(RuntimeError):
    """A dataset's environment needs a package this interpreter lacks."""


# -- the scripted controllers ---------------------------------------------------------------------
def swing_up_action(obs: np.ndarray, env: Any = None) -> float:
    """A hand-written Pendulum-v1 controller: pump energy, then balance with a PD law."""
    cos_th, sin_th, th_dot = obs
    theta = math.atan2(sin_th, cos_th)  # 0 = upright
    if cos_th > 0.85:
        return float(np.clip(-10.0 * theta - 2.0 * th_dot, -2.0, 2.0))
    energy = 0.5 * th_dot**2 + 10.0 * (cos_th - 1.0)  # 0 when upright and still
    return float(np.clip(-2.0 * np.sign(th_dot * energy) if th_dot != 0 else 2.0, -2.0, 2.0))


def lander_action(obs: np.ndarray, env: Any) -> np.ndarray:
    """gymnasium's LunarLander landing heuristic (continuous actions)."""
    from gymnasium.envs.box2d.lunar_lander import heuristic

    return np.asarray(heuristic(env, obs), dtype=np.float64)


CONTROLLERS: dict[str, Callable[[np.ndarray, Any], Any]] = {
    "pendulum": swing_up_action,
    "lunarlander": lander_action,
}


def needs_mujoco(spec: DatasetSpec) -> bool:
    """Whether gymnasium registers the task as a MuJoCo environment."""
    import gymnasium as gym

    return str(gym.spec(spec.env_id).entry_point).startswith("gymnasium.envs.mujoco")


def require_env_deps(spec: DatasetSpec) -> dict[str, str]:
    """The versions of the task's simulator packages (for the cache key), or one clear error."""
    if not needs_mujoco(spec):
        return {}
    try:
        import mujoco
    except ImportError as error:
        raise MissingDependencyError(
            f"--dataset {spec.name} ({spec.env_id}) needs the mujoco package, which this "
            f"interpreter ({sys.executable}) lacks ({error}); install the d3rlpy environment's "
            f"lock: {MISSING_MUJOCO_FIX}"
        ) from None
    # mujoco's default warning handler writes MUJOCO_LOG.TXT into the working directory (a run's
    # cwd, the repository): its warnings go through Python's warnings module instead
    mujoco.set_mju_user_warning(_mujoco_warning)
    return {"mujoco": mujoco.__version__}


def _mujoco_warning(message: str) -> None:
    """MuJoCo's warnings as Python warnings, less one a user cannot act on: HalfCheetah-v5's
    model file (shipped by gymnasium) uses the deprecated ``settotalmass``, once per env."""
    if "'settotalmass' is deprecated" in message:
        return
    warnings.warn(f"MuJoCo: {message}", stacklevel=2)


def make_env(spec: DatasetSpec) -> Any:
    import gymnasium as gym

    require_env_deps(spec)
    if spec.max_episode_steps is None:
        return gym.make(spec.env_id)
    return gym.make(spec.env_id, max_episode_steps=spec.max_episode_steps)


# -- the dataset and its cache --------------------------------------------------------------------
def dataset_key(spec: DatasetSpec, seed: int) -> str:
    """A content hash: the same key means the same transitions (on the same software).

    The fields added after generator 1 (``behaviour``, ``max_episode_steps``) enter the hash only
    when set, so the scripted datasets keep the keys their committed study results name. A
    trained behaviour policy also depends on torch and d3rlpy, a MuJoCo task on mujoco: their
    versions are hashed for those datasets only.
    """
    import gymnasium

    fields = dataclasses.asdict(spec)
    for name in ("behaviour", "max_episode_steps"):
        if fields[name] is None:
            del fields[name]
    payload: dict[str, Any] = {
        "generator": GENERATOR_VERSION,
        "spec": fields,
        "seed": seed,
        "gymnasium": gymnasium.__version__,
        "numpy": np.__version__.split(".")[0],
        **require_env_deps(spec),
    }
    if spec.behaviour is not None:
        payload["torch"] = importlib.metadata.version("torch")
        payload["d3rlpy"] = importlib.metadata.version("d3rlpy")
    blob = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


Episode = dict[str, Any]  # obs, act, rew, term, trunc: one entry per step; ret: the return


def rollouts(
    spec: DatasetSpec, seed: int, controller: Callable[[np.ndarray, Any], Any]
) -> list[Episode]:
    """``spec.episodes`` episodes of the controller with Gaussian noise and random actions."""
    env = make_env(spec)
    rng = np.random.default_rng(seed)
    act_dim = env.action_space.shape[0]
    episodes: list[Episode] = []
    for episode in range(spec.episodes):
        obs, _ = env.reset(seed=seed * 100_000 + episode)
        ep: Episode = {"obs": [], "act": [], "rew": [], "term": [], "trunc": []}
        total, done = 0.0, False
        while not done:
            if rng.random() < spec.random_prob:
                action = rng.uniform(-spec.max_action, spec.max_action, size=act_dim)
            else:
                base = np.asarray(controller(obs, env), dtype=np.float64).reshape(act_dim)
                action = base + rng.normal(0.0, spec.noise * spec.max_action, size=act_dim)
            action = np.clip(action, -spec.max_action, spec.max_action).astype(np.float32)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            ep["obs"].append(np.asarray(obs, dtype=np.float32))
            ep["act"].append(action)
            ep["rew"].append(float(reward))
            ep["term"].append(float(terminated))
            ep["trunc"].append(float(truncated))
            total += float(reward)
            obs, done = next_obs, terminated or truncated
        episodes.append({**ep, "ret": total})
    env.close()
    return episodes


def train_behaviour(spec: DatasetSpec, seed: int) -> tuple[Any, list[Episode]]:
    """Train ``spec.behaviour``'s SAC online; the trained algorithm and its replay's episodes.

    Seeded throughout (d3rlpy.seed, the environment's first reset, which seeds the later ones,
    and its action space for the random warm-up), on one torch thread: the same spec and seed
    give the same policy on the same software. The replay's last episode is dropped when the
    training ended inside it (it has no return to report).
    """
    assert spec.behaviour is not None
    b = spec.behaviour
    d3rlpy = _import_d3rlpy()
    import gymnasium as gym
    import torch
    from d3rlpy.models import VectorEncoderFactory

    torch.set_num_threads(1)
    d3rlpy.seed(seed)
    env = gym.wrappers.RecordEpisodeStatistics(make_env(spec))
    env.reset(seed=seed * 100_000 + 90_000)  # apart from the rollouts' reset seeds
    env.action_space.seed(seed)
    encoder = VectorEncoderFactory(hidden_units=[b.hidden, b.hidden])
    sac = d3rlpy.algos.SACConfig(
        batch_size=b.batch_size,
        actor_learning_rate=b.learning_rate,
        critic_learning_rate=b.learning_rate,
        temp_learning_rate=b.learning_rate,
        gamma=b.gamma,
        tau=b.tau,
        initial_temperature=b.initial_temperature,
        actor_encoder_factory=encoder,
        critic_encoder_factory=encoder,
    ).create(device="cpu:0")
    buffer = d3rlpy.dataset.create_fifo_replay_buffer(limit=b.steps, env=env)
    sac.fit_online(
        env,
        buffer=buffer,
        n_steps=b.steps,
        n_steps_per_epoch=b.steps,
        random_steps=b.random_steps,
        update_start_step=b.random_steps,
        save_interval=10**9,
        experiment_name=f"behaviour-{spec.name}",
        with_timestamp=False,
        logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
        show_progress=False,
    )
    finished = list(buffer.episodes)[: env.episode_count]
    env.close()
    replay = []
    for ep in finished:
        rew = np.asarray(ep.rewards, dtype=np.float64).reshape(-1)
        last = np.zeros_like(rew)
        last[-1] = 1.0
        term, trunc = (last, 0.0 * last) if ep.terminated else (0.0 * last, last)
        replay.append(
            {
                "obs": np.asarray(ep.observations, dtype=np.float32),
                "act": np.asarray(ep.actions, dtype=np.float32),
                "rew": rew,
                "term": term,
                "trunc": trunc,
                "ret": float(rew.sum()),
            }
        )
    return sac, replay


def policy_controller(algo: Any) -> Callable[[np.ndarray, Any], np.ndarray]:
    """A trained d3rlpy algorithm's greedy action as a controller for ``rollouts``."""

    def act(obs: np.ndarray, env: Any = None) -> np.ndarray:
        return algo.predict(np.asarray(obs, dtype=np.float32)[None])[0]

    return act


def collect(spec: DatasetSpec, seed: int) -> dict[str, np.ndarray]:
    """The dataset's arrays for an MDPDataset, plus ``ret`` (each episode's return).

    Scripted tasks: noisy rollouts of the controller. A task with a ``behaviour`` spec: the
    trained SAC's replay episodes (if kept) first, then noisy rollouts of the final policy;
    ``from_replay`` marks each episode's source.
    """
    replay: list[Episode] = []
    if spec.behaviour is None:
        controller = CONTROLLERS[spec.name]
    else:
        sac, replay = train_behaviour(spec, seed)
        controller = policy_controller(sac)
        if not spec.behaviour.keep_replay:
            replay = []
    episodes = replay + rollouts(spec, seed, controller)
    out: dict[str, list[Any]] = {k: [] for k in ("obs", "act", "rew", "term", "trunc")}
    for ep in episodes:
        for key, values in out.items():
            values.extend(ep[key])
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}
    arrays["ret"] = np.asarray([ep["ret"] for ep in episodes], dtype=np.float32)
    if spec.behaviour is not None:
        arrays["from_replay"] = np.asarray([i < len(replay) for i in range(len(episodes))])
    return arrays


def load_or_collect(
    spec: DatasetSpec, seed: int, cache_dir: Path
) -> tuple[dict[str, np.ndarray], Path, bool]:
    """The dataset's arrays, its cache file and whether the cache was hit."""
    path = Path(cache_dir) / f"{spec.name}-{dataset_key(spec, seed)}.npz"
    if path.is_file():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}, path, True
    arrays = collect(spec, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: concurrent runs never read half a file
    return arrays, path, False


def to_mdp_dataset(arrays: dict[str, np.ndarray]) -> Any:
    import d3rlpy

    return d3rlpy.dataset.MDPDataset(
        observations=arrays["obs"],
        actions=arrays["act"],
        rewards=arrays["rew"].reshape(-1, 1),
        terminals=arrays["term"],
        timeouts=arrays["trunc"],
        action_space=d3rlpy.constants.ActionSpace.CONTINUOUS,
    )


def default_cache_dir() -> Path:
    root = os.environ.get("FLATRL_CACHE") or str(Path.home() / ".cache" / "flatrl")
    return Path(root) / "datasets"


# -- the algorithm --------------------------------------------------------------------------------
def make_reward_scaler(reward_scale: str) -> Any:
    """``--reward-scale``: a constant multiplier, or ``returns`` (IQL's locomotion normalisation).

    Why it is a flag: IQL's advantage weights exp(weight_temp * (Q - V)) and CQL's log-sum-exp
    penalty and SAC entropy bonus are not invariant to the reward scale. At x0.1 on HalfCheetah
    (per-step rewards ~0.1-0.3 after scaling) IQL's weights are ~1, so it clones the mixed
    behaviour and the cheetah stands still (Adam -11 at 5,000 steps), while the same run with
    unscaled rewards reached +2,300 by 3,000 steps (seed 0, session 7); at x0.1 CQL's entropy
    bonus outweighs the rewards and its policy stands still too. ``returns`` multiplies
    rewards by 1000 / (max - min episode return of the dataset): the IQL paper's MuJoCo
    normalisation, which d3rlpy's own IQL reproduction uses through
    ``ReturnBasedRewardScaler(multiplier=1000)``. CQL's paper and d3rlpy's CQL reproduction
    use unscaled rewards (``--reward-scale 1``).
    """
    import d3rlpy

    if reward_scale == "returns":
        return d3rlpy.preprocessing.ReturnBasedRewardScaler(multiplier=1000.0)
    return d3rlpy.preprocessing.MultiplyRewardScaler(float(reward_scale))


def make_config(
    algo: str, spec: DatasetSpec, batch_size: int, hidden: int, reward_scale: str = "0.1"
) -> Any:
    """The algorithm's config: d3rlpy defaults except small nets, CPU-sized sampling, scalers."""
    import d3rlpy
    from d3rlpy.models import VectorEncoderFactory

    encoder = VectorEncoderFactory(hidden_units=[hidden, hidden])
    common: dict[str, Any] = {
        "batch_size": batch_size,
        "actor_encoder_factory": encoder,
        "critic_encoder_factory": encoder,
        "observation_scaler": d3rlpy.preprocessing.StandardObservationScaler(),
        "action_scaler": d3rlpy.preprocessing.MinMaxActionScaler(
            minimum=-spec.max_action, maximum=spec.max_action
        ),
        # default x0.1: per-step rewards reach -16 (Pendulum) or +-100 (a landing/crash); scaled
        # down, the Q-values stay small enough to fit in a few thousand steps
        "reward_scaler": make_reward_scaler(reward_scale),
    }
    if algo == "iql":
        return d3rlpy.algos.IQLConfig(
            value_encoder_factory=encoder, expectile=0.7, weight_temp=3.0, **common
        )
    if algo == "cql":
        # a fixed conservative weight (alpha_learning_rate 0), as d3rlpy's CQL reproduction runs
        # MuJoCo: with the Lagrangian (threshold 10) alpha fell to 0.2 by 20k steps on
        # halfcheetah, the penalty faded and the policy collapsed (+164 at 15k, -785 at 20k)
        return d3rlpy.algos.CQLConfig(
            n_action_samples=4, conservative_weight=5.0, alpha_learning_rate=0.0, **common
        )
    if algo == "td3plusbc":
        return d3rlpy.algos.TD3PlusBCConfig(alpha=2.5, **common)
    raise ValueError(f"--algo {algo!r}: use one of {', '.join(ALGOS)}")


def with_sam(config: Any, rho: float, adaptive: bool) -> Any:
    """Every network optimizer wrapped in SAMFactory around its own (Adam) factory."""
    from d3rlpy.optimizers import SAMFactory

    fields = [f.name for f in dataclasses.fields(config) if f.name.endswith("optim_factory")]
    fields = [f for f in fields if not f.startswith(("temp_", "alpha_"))]
    return dataclasses.replace(
        config,
        **{f: SAMFactory(base=getattr(config, f), rho=rho, adaptive=adaptive) for f in fields},
    )


def arm_label(args: argparse.Namespace) -> str:
    if args.optimizer == "adam":
        return "adam"
    return f"{'asam' if args.adaptive else 'sam'}{args.rho:g}"


# -- the command line -----------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="One offline-RL run (IQL/CQL/TD3+BC; Adam/SAM/ASAM) on a local dataset.",
    )
    p.add_argument("--algo", required=True, choices=ALGOS)
    p.add_argument("--dataset", required=True, choices=tuple(DATASETS))
    p.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    p.add_argument("--rho", type=float, default=None, help="SAM radius (>= 0; sam only)")
    p.add_argument("--adaptive", action="store_true", help="ASAM (sam only; needs a larger rho)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--steps", type=int, default=20000, help="gradient steps")
    p.add_argument("--log-dir", "--logdir", dest="log_dir", type=Path, required=True)
    p.add_argument("--eval-every", type=int, default=2000, help="steps between evaluations")
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256, help="units of the 2 hidden layers")
    p.add_argument(
        "--reward-scale",
        default="0.1",
        help="rewards x this constant (default 0.1), or 'returns': x 1000 / (max - min episode "
        "return), the IQL paper's MuJoCo normalisation (IQL on halfcheetah uses it; CQL runs "
        "unscaled: 1)",
    )
    p.add_argument("--dataset-seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=None, help="dataset episodes (default: task's)")
    p.add_argument("--cache-dir", type=Path, default=None, help="default $FLATRL_CACHE/datasets")
    p.add_argument("--device", default="cpu:0")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check: every bad combination stops here, before a dataset or net is built."""
    p = parser()
    args = p.parse_args(argv)
    for name in ("steps", "eval_every", "eval_episodes", "batch_size", "hidden"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer")
    if args.reward_scale != "returns":
        try:
            scale = float(args.reward_scale)
        except ValueError:
            scale = math.nan
        if not (math.isfinite(scale) and scale > 0):
            p.error(
                f"--reward-scale {args.reward_scale!r}: give a positive number (e.g. 0.1) "
                "or 'returns'"
            )
    if args.episodes is not None and args.episodes < 1:
        p.error("--episodes must be a positive integer")
    if args.seed < 0 or args.dataset_seed < 0:
        p.error("--seed and --dataset-seed must be >= 0")
    if args.eval_every > args.steps:
        p.error(
            f"--eval-every {args.eval_every} > --steps {args.steps}: nothing would be evaluated"
        )
    try:
        require_env_deps(DATASETS[args.dataset])
    except MissingDependencyError as error:
        p.error(str(error))
    if args.optimizer == "adam":
        if args.rho is not None or args.adaptive:
            p.error("--rho/--adaptive apply to --optimizer sam; drop them or add --optimizer sam")
    else:
        if args.rho is None:
            p.error("--optimizer sam needs --rho (e.g. 0.05; ASAM with --adaptive: 0.5)")
        if not (math.isfinite(args.rho) and args.rho >= 0):
            p.error(f"--rho must be a finite number >= 0, got {args.rho}")
    return args


def _import_d3rlpy() -> Any:
    """d3rlpy, with its structlog output at WARNING (the patched tree mutes old gym's notice)."""
    import structlog

    # d3rlpy logs every build and epoch through structlog; run.json and the CSVs are the output
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    import d3rlpy

    return d3rlpy


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Dataset (cached), training, periodic evaluation; returns what run.json records."""
    d3rlpy = _import_d3rlpy()
    import torch
    from d3rlpy.logging import FileAdapterFactory

    if not hasattr(d3rlpy.optimizers, "SAMFactory"):
        raise SystemExit(f"d3rlpy at {d3rlpy.__file__} is not flatrl's patched tree")
    torch.set_num_threads(1)
    spec = DATASETS[args.dataset]
    if args.episodes is not None:
        spec = dataclasses.replace(spec, episodes=args.episodes)
    t0, cpu0 = time.perf_counter(), time.process_time()
    cache_dir = args.cache_dir or default_cache_dir()
    arrays, cache_path, hit = load_or_collect(spec, args.dataset_seed, cache_dir)
    returns = arrays["ret"]
    if args.reward_scale == "returns" and not returns.max() > returns.min():
        raise SystemExit(
            f"--reward-scale returns divides by (max - min episode return), but every episode "
            f"returns the same ({returns.max():.1f}, {len(returns)} episodes): use more "
            f"episodes or a constant scale such as --reward-scale 0.1"
        )
    dataset = to_mdp_dataset(arrays)
    data_seconds, data_cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0

    config = make_config(args.algo, spec, args.batch_size, args.hidden, args.reward_scale)
    if args.optimizer == "sam":
        config = with_sam(config, args.rho, args.adaptive)
    experiment = f"{args.algo}-{args.dataset}-{arm_label(args)}-seed{args.seed}"
    log_dir = Path(args.log_dir)
    shutil.rmtree(log_dir / experiment, ignore_errors=True)  # not resumable: start over
    d3rlpy.seed(args.seed)
    algo = config.create(device=args.device)
    eval_env = make_env(spec)
    eval_env.reset(seed=10_000 + args.seed)
    t1 = time.perf_counter()
    algo.fit(
        dataset,
        n_steps=args.steps,
        n_steps_per_epoch=args.eval_every,
        experiment_name=experiment,
        with_timestamp=False,
        logger_adapter=FileAdapterFactory(root_dir=str(log_dir)),
        evaluators={EVAL_METRIC: d3rlpy.metrics.EnvironmentEvaluator(eval_env, args.eval_episodes)},
        show_progress=False,
        save_interval=10**9,  # no model files: the study reads the CSVs
    )
    train_seconds = time.perf_counter() - t1
    info = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "experiment": experiment,
        "dataset": {
            **dataclasses.asdict(spec),
            "seed": args.dataset_seed,
            "transitions": int(len(arrays["rew"])),
            "behaviour_return_mean": float(arrays["ret"].mean()),
            "behaviour_return_min": float(arrays["ret"].min()),
            "behaviour_return_max": float(arrays["ret"].max()),
            "episodes_total": int(len(arrays["ret"])),
            "cache": str(cache_path),
            "cache_hit": hit,
            "seconds": round(data_seconds, 2),
            "cpu_seconds": round(data_cpu_seconds, 2),
        },
        "train_seconds": round(train_seconds, 2),
        "command": " ".join([sys.executable, *sys.argv]),
    }
    out = log_dir / experiment
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = run(args)
    d = info["dataset"]
    print(
        f"{info['experiment']}: {args.steps} steps in {info['train_seconds']:.1f}s; dataset "
        f"{d['transitions']} transitions (behaviour return {d['behaviour_return_mean']:.1f}, "
        f"{'cached' if d['cache_hit'] else 'collected'}: {d['cache']}); "
        f"logs {Path(args.log_dir) / info['experiment']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
