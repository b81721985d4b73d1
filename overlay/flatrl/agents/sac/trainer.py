"""The training loop: collect, update, log, evaluate, checkpoint, resume.

Checkpoints are taken at episode ends (the first one after every ``checkpoint_every_steps``
environment steps, and at the end of training). At an episode boundary the whole future of
the run is determined by what we save: networks, optimizers with their Muon momentum buffers
and schedule positions, temperature, the replay buffer with its sampling generator, the
torch/numpy/python RNGs, the task's RNG (which draws the next initial state), the rank probe's
generator, the logging cadence and the partly filled logging interval. So a resumed run
continues exactly as if it had never stopped (same parameters, same logged metrics), and an
interrupted run loses only the steps since its last checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from flatrl.agents.sac.buffer import ReplayMemory
from flatrl.agents.sac.checkpoint import (
    RunPaths,
    config_differences,
    load_checkpoint,
    replay_dump,
    save_checkpoint,
)
from flatrl.agents.sac.env import DMCEnv
from flatrl.agents.sac.sac import SACAgent
from flatrl.agents.sac.settings import Settings, with_defaults
from flatrl.runtime import resolve_device, rng_state, seed_everything, set_rng_state

log = logging.getLogger(__name__)

# Keys that may change between a run and its resumption without changing what it computes.
RESUME_FREE_KEYS = ("resume", "training.total_env_steps", "training.progress_bar", "threads")

# The rank probe's generator is seeded apart from the replay sampler's (which uses the run's seed).
PROBE_SEED_OFFSET = 0x5EED


class IntervalMeans:
    """Per-key running sums of the update metrics since the last log, and their means.

    A logged training metric is the mean over every update of the logging interval (not the
    last update's, which is one noisy sample out of ``log_every_steps``). Keys that appear only
    on some updates (actor metrics with ``actor_update_freq > 1``, SAM sharpness with
    ``every_k > 1``) are averaged over the updates that produced them. Sums stay on the device
    as float64 tensors until logged, so accumulating costs no host sync.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, metrics: Mapping[str, torch.Tensor | float]) -> None:
        for key, value in metrics.items():
            v = torch.as_tensor(value).detach().to(torch.float64)
            self.sums[key] = self.sums[key] + v if key in self.sums else v
            self.counts[key] = self.counts.get(key, 0) + 1

    def pop(self) -> dict[str, float]:
        """The means since the last call, and start a new interval."""
        means = {k: float(self.sums[k]) / self.counts[k] for k in self.sums}
        self.sums, self.counts = {}, {}
        return means

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": {k: v.cpu() for k, v in self.sums.items()},
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.counts = dict(state["counts"])


def evaluate(agent: SACAgent, settings: Settings, episodes: int) -> tuple[float, float]:
    """Mean and std of the return of the deterministic policy over ``episodes`` episodes.

    A fresh environment with a fixed seed is used, so evaluation neither consumes nor depends
    on the training RNGs (and resuming cannot change what it measures).
    """
    env = DMCEnv(settings.env.task, settings.seed + 100_000, settings.env.action_repeat)
    returns = []
    agent.actor.eval()  # spectral norm must not advance its power iteration while evaluating
    try:
        for _ in range(episodes):
            obs, done, total = env.reset(), False, 0.0
            while not done:
                obs, reward, _, done = env.step(agent.act(obs, deterministic=True))
                total += reward
            returns.append(total)
    finally:
        agent.actor.train()
    return float(np.mean(returns)), float(np.std(returns))


class Trainer:
    def __init__(self, settings: Settings, config: Mapping[str, Any], paths: RunPaths) -> None:
        self.s = settings
        self.t = settings.training
        self.config = dict(config)
        self.paths = paths
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        seed_everything(settings.seed)
        self.device = resolve_device(settings.device)
        self.env = DMCEnv(settings.env.task, settings.seed, settings.env.action_repeat)
        self.agent = SACAgent(
            self.env.obs_dim, self.env.action_dim, settings.model, settings.training, self.device
        )
        self.memory = ReplayMemory(
            self.t.replay_capacity, self.t.batch_size, settings.seed, device="cpu"
        )
        self.probe_generator = torch.Generator().manual_seed(settings.seed + PROBE_SEED_OFFSET)
        self.means = IntervalMeans()
        self.env_steps = 0
        self.episodes = 0
        self.next_eval = self.t.eval_every_steps
        self.next_checkpoint = self.t.checkpoint_every_steps
        self.next_log = self.t.log_every_steps
        self.resumed_from: int | None = None
        self.last_eval: tuple[float, float] | None = None
        self.last_eval_step: int | None = None

    # --- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent.state_dict(),
            "loop": {
                "env_steps": self.env_steps,
                "episodes": self.episodes,
                "next_eval": self.next_eval,
                "next_checkpoint": self.next_checkpoint,
                "next_log": self.next_log,
            },
            "interval_means": self.means.state_dict(),
            "rng": rng_state(),
            "probe_rng": self.probe_generator.get_state(),
            "env_rng": self.env.rng_state(),
            "config": self.config,
        }

    def save(self) -> None:
        save_checkpoint(self.paths, self.state_dict(), self.memory if self.t.save_replay else None)
        log.info("checkpoint at env step %d: %s", self.env_steps, self.paths.checkpoint)

    def prepare_run_dir(self) -> None:
        """Resume if asked and possible; refuse to silently overwrite another run's files."""
        exists = self.paths.checkpoint.exists()
        if not self.s.resume:
            if exists:
                raise ValueError(
                    f"{self.paths.checkpoint} already exists. Pass resume=true to continue that "
                    "run, give this one another method_name (sweeps: method_name='SAC_${...}'), "
                    "or delete the directory."
                )
            return
        if not exists:
            log.info("resume=true but no checkpoint at %s: starting fresh", self.paths.checkpoint)
            return
        self.load(load_checkpoint(self.paths))

    def load(self, state: dict[str, Any]) -> None:
        diffs = [
            d
            for d in config_differences(with_defaults(state["config"]), with_defaults(self.config))
            if not d.startswith(RESUME_FREE_KEYS)
        ]
        if diffs:
            log.warning("resuming with a config that differs from the checkpoint's: %s", diffs)
        try:
            self.agent.load_state_dict(state["agent"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"{self.paths.checkpoint} does not fit this config ({err}); config changes since "
                f"it was saved: {diffs or 'none found'}. Resume with the run's original settings, "
                "or start a new run under another method_name."
            ) from err
        dump = replay_dump(self.paths, state)
        if dump is not None:
            self.memory.load(dump)
        elif self.t.save_replay:
            raise ValueError(
                f"{self.paths.checkpoint} was saved without its replay buffer "
                "(training.save_replay=false); resume with training.save_replay=false."
            )
        loop = state["loop"]
        self.env_steps = int(loop["env_steps"])
        self.episodes = int(loop["episodes"])
        self.next_eval = int(loop["next_eval"])
        self.next_checkpoint = int(loop["next_checkpoint"])
        self.next_log = int(loop["next_log"])
        self.means.load_state_dict(state["interval_means"], self.device)
        set_rng_state(state["rng"])
        self.probe_generator.set_state(state["probe_rng"])
        self.env.set_rng_state(state["env_rng"])
        self.resumed_from = self.env_steps
        log.info("resumed from env step %d", self.env_steps)

    # --- the loop ----------------------------------------------------------------------------
    def _log(self, writer: SummaryWriter, values: Mapping[str, Any], step: int) -> None:
        for key, value in values.items():
            writer.add_scalar(key, float(value), step)

    def _update(self, writer: SummaryWriter) -> None:
        rank = self.t.rank_logging
        for _ in range(self.t.updates_per_step):
            self.means.add(self.agent.update(self.memory.sample(self.device)))
            if rank.enabled and self.agent.num_updates % rank.every_n_updates == 0:
                # Its own generator and an eval-mode critic: the probe changes nothing it sees.
                probe = self.memory.probe(rank.max_samples, self.probe_generator, self.device)
                ranks = self.agent.rank_metrics(probe, rank.max_samples, rank.top_k)
                self._log(writer, ranks, self.env_steps)

    def run(self) -> dict[str, float]:
        """Train to ``training.total_env_steps``; returns the final evaluation."""
        self.prepare_run_dir()
        t = self.t
        # Events at the checkpoint's own step were written before it was saved: keep them, and
        # drop only what a crashed predecessor logged after it.
        purge = None if self.resumed_from is None else self.resumed_from + 1
        writer = SummaryWriter(str(self.paths.tensorboard), purge_step=purge)
        bar = tqdm(
            total=t.total_env_steps,
            initial=self.env_steps,
            disable=not t.progress_bar,
            desc=self.s.method_name,
            unit="step",
            dynamic_ncols=True,
        )
        obs, episode_return = self.env.reset(), 0.0
        clock, clock_steps = time.perf_counter(), self.env_steps
        saved_at = None
        postfix: dict[str, str] = {}
        try:
            while self.env_steps < t.total_env_steps:
                if self.env_steps < t.seed_steps:
                    action = np.random.uniform(-1, 1, self.env.action_dim).astype(np.float32)
                else:
                    action = self.agent.act(obs)
                next_obs, reward, terminated, done = self.env.step(action)
                self.memory.add(obs, action, reward, next_obs, terminated)
                obs, episode_return = next_obs, episode_return + reward
                self.env_steps += self.env.action_repeat
                bar.update(self.env.action_repeat)
                if self.env_steps >= t.seed_steps and len(self.memory) >= t.batch_size:
                    self._update(writer)

                if self.env_steps >= self.next_log:
                    now = time.perf_counter()
                    sps = (self.env_steps - clock_steps) / max(now - clock, 1e-9)
                    clock, clock_steps = now, self.env_steps
                    self._log(writer, self.means.pop(), self.env_steps)
                    self._log(writer, self.agent.hyperparameters(), self.env_steps)
                    writer.add_scalar("time/steps_per_second", sps, self.env_steps)
                    postfix["steps/s"] = f"{sps:.0f}"
                    bar.set_postfix(postfix, refresh=False)
                    while self.next_log <= self.env_steps:
                        self.next_log += t.log_every_steps

                if done:
                    self.episodes += 1
                    writer.add_scalar("train/episode_return", episode_return, self.env_steps)
                    postfix["ep_return"] = f"{episode_return:.1f}"
                    bar.set_postfix(postfix, refresh=False)
                    if self.env_steps >= self.next_eval:
                        self._evaluate(writer)
                        while self.next_eval <= self.env_steps:
                            self.next_eval += t.eval_every_steps
                    finished = self.env_steps >= t.total_env_steps
                    if self.env_steps >= self.next_checkpoint or finished:
                        while self.next_checkpoint <= self.env_steps:
                            self.next_checkpoint += t.checkpoint_every_steps
                        self.save()
                        saved_at = self.env_steps
                    obs, episode_return = self.env.reset(), 0.0
            if self.last_eval_step != self.env_steps:
                self._evaluate(writer)
            if saved_at != self.env_steps:
                # Training ended mid-episode: still keep the result (a resume restarts it).
                self.save()
        finally:
            bar.close()
            writer.close()
        mean, std = self.last_eval if self.last_eval is not None else (float("nan"),) * 2
        return {
            "eval/return_mean": mean,
            "eval/return_std": std,
            "env_steps": float(self.env_steps),
        }

    def _evaluate(self, writer: SummaryWriter) -> None:
        if self.t.eval_episodes == 0:
            return
        self.last_eval = evaluate(self.agent, self.s, self.t.eval_episodes)
        self.last_eval_step = self.env_steps
        writer.add_scalar("eval/return_mean", self.last_eval[0], self.env_steps)
        writer.add_scalar("eval/return_std", self.last_eval[1], self.env_steps)
        log.info("env step %d: eval return %.1f ± %.1f", self.env_steps, *self.last_eval)
