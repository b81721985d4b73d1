"""Drive a TD-MPC2 agent of one patched tree on synthetic batches, for the tests.

Run as ``python probe.py TREE JOBS`` with ``TREE`` the tree's ``tdmpc2/`` folder and ``JOBS`` a
JSON list of ``{"mode": ..., "overrides": {...}, ...}``; prints one JSON line (a list of
results). Each tree runs in its own process because TD-MPC2 imports its modules by top-level
names (``common``, ``envs``, ``tdmpc2``), which two trees in one process would share.
Synthetic batches (from numpy, so they do not touch torch's random stream) replace the
environment and replay buffer: the tests are about the update, not about data collection.

Modes:
    trace       ``updates`` updates; losses per update, final parameters saved to ``out``
                (``"fallback_random": true``: compiled code draws eager's random numbers;
                ``"float64": true``: the agent and batches in double precision)
    perturbed   one SAM update; which parameters differ between the two loss passes
    latents     one SAM update; whether update_pi got the latents of the unperturbed pass
    grads       one update; which modules' parameters get a gradient in each world-model
                pass, and which parameters have ``requires_grad`` on before and after
    checkpoint  train, checkpoint, load into a fresh agent: same optimizer state and next update
    buffer      a wrapped replay buffer saved and restored at the same and at other capacities
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any

import numpy as np
import torch

OBS_DIM, ACTION_DIM, EPISODE_LENGTH = 5, 1, 500


def make_agent(tree: str, overrides: dict[str, Any]) -> Any:
    """Build the agent as train.py would, with the environment's facts filled in by hand."""
    os.chdir(tree)
    if tree not in sys.path:
        sys.path.insert(0, tree)
    import hydra.utils
    from common.parser import parse_cfg
    from common.seed import set_seed
    from omegaconf import OmegaConf

    # parse_cfg asks Hydra for the launch directory; outside a Hydra app there is none.
    hydra.utils.get_original_cwd = lambda: tree
    cfg = OmegaConf.load("config.yaml")
    cfg.pop("defaults", None)
    base = dict(task="cartpole-swingup", model_size=1, batch_size=16, horizon=3, device="cpu")
    base.update(compile=False, enable_wandb=False, seed=1)
    for key, value in {**base, **overrides}.items():
        cfg[key] = value
    cfg = parse_cfg(cfg)
    from flatrl.tdmpc2.runtime import configure_runtime

    configure_runtime(cfg)
    cfg.obs_shape = {"state": (OBS_DIM,)}
    cfg.action_dim = ACTION_DIM
    cfg.episode_length = EPISODE_LENGTH
    cfg.seed_steps = 10
    set_seed(cfg.seed)
    from tdmpc2 import TDMPC2

    return TDMPC2(cfg)


def batches(cfg: Any, n: int, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    rs = np.random.RandomState(seed)
    h, b = cfg.horizon, cfg.batch_size
    out = []
    for _ in range(n):
        dtype = torch.get_default_dtype()
        obs = torch.from_numpy(rs.randn(h + 1, b, OBS_DIM).astype(np.float32)).to(dtype)
        action = torch.from_numpy(rs.uniform(-1, 1, (h, b, ACTION_DIM)).astype(np.float32))
        action = action.to(dtype)
        reward = torch.from_numpy(rs.randn(h, b, 1).astype(np.float32)).to(dtype)
        terminated = torch.zeros(h, b, 1)
        out.append(tuple(x.to(cfg.device) for x in (obs, action, reward, terminated)))
    return out


def trace(agent: Any, updates: int, out: str) -> dict[str, Any]:
    """``updates`` updates on fixed batches: their metrics, the weights after them (in ``out``),
    and how much work the encoder and reward head did (calls; rows per reward-head call)."""
    encoder_calls, reward_rows = [], []
    encoder = agent.model._encoder[agent.cfg.obs]
    encoder.register_forward_hook(lambda m, args, out: encoder_calls.append(1))
    agent.model._reward.register_forward_hook(lambda m, args, out: reward_rows.append(len(out)))
    losses = []
    for batch in batches(agent.cfg, updates):
        torch.compiler.cudagraph_mark_step_begin()
        info = agent._update(*batch)
        losses.append({k: float(v) for k, v in info.items()})
    torch.save({k: v.detach().cpu() for k, v in agent.model.state_dict().items()}, out)
    return {"losses": losses, "encoder_calls": len(encoder_calls), "reward_rows": reward_rows}


def _snapshot(agent: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in agent.model.named_parameters()}


def perturbed(agent: Any) -> dict[str, Any]:
    """Record the parameters at each loss pass of the SAM-wrapped optimizer."""
    snaps: list[tuple[str, dict[str, torch.Tensor]]] = []
    for name in ("_world_model_loss", "_pi_loss"):
        original = getattr(agent, name)

        def wrapped(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            snaps.append((_name, _snapshot(agent)))
            return _original(*args, **kwargs)

        setattr(agent, name, wrapped)
    (batch,) = batches(agent.cfg, 1)
    info = agent._update(*batch)
    # SAM runs the wrapped loss twice in a row (w, then w + e); nothing steps in between.
    changed: set[str] = set()
    repeated = []
    for (name_a, a), (name_b, b) in zip(snaps, snaps[1:], strict=False):
        if name_a == name_b:
            repeated.append(name_a)
            changed |= {n for n in a if not torch.equal(a[n], b[n])}
    return {
        "passes": [name for name, _ in snaps],
        "repeated": repeated,
        "changed_between_passes": sorted(changed),
        "sharpness": float(info["sharpness"]) if "sharpness" in info else None,
        "perturbed_loss": float(info["perturbed_loss"]) if "perturbed_loss" in info else None,
    }


def latents(agent: Any) -> dict[str, Any]:
    """Compare the latents update_pi gets with those of each world-model pass."""
    passes: list[torch.Tensor] = []
    got: list[torch.Tensor] = []
    original_loss, original_pi = agent._world_model_loss, agent.update_pi

    def loss(*args: Any, **kwargs: Any) -> Any:
        total, zs, terms = original_loss(*args, **kwargs)
        passes.append(zs.detach().clone())
        return total, zs, terms

    def update_pi(zs: torch.Tensor, task: Any) -> Any:
        got.append(zs.detach().clone())
        return original_pi(zs, task)

    agent._world_model_loss, agent.update_pi = loss, update_pi
    (batch,) = batches(agent.cfg, 1)
    agent._update(*batch)
    return {
        "passes": len(passes),
        "equals_pass": [bool(torch.equal(got[0], z)) for z in passes],
    }


def _tensors_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(_tensors_equal(a[k], b[k]) for k in a)
        )
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_tensors_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


class _NoBuffer:
    """A replay buffer with no episodes: the checkpoint then holds only the agent."""

    num_eps = 0
    capacity = 0


def checkpoint(tree: str, overrides: dict[str, Any], path: str) -> dict[str, Any]:
    from flatrl.tdmpc2.checkpoint import load_checkpoint, save_checkpoint

    agent = make_agent(tree, overrides)
    data = batches(agent.cfg, 4)
    for batch in data[:3]:
        agent._update(*batch)
    save_checkpoint(path, agent, _NoBuffer(), step=1234, episode=7)
    fresh = make_agent(tree, dict(overrides, seed=2))
    differs_before = not _tensors_equal(agent.optim.state_dict(), fresh.optim.state_dict())
    loaded = load_checkpoint(path, fresh, _NoBuffer())
    counters = {k: loaded[k] for k in ("step", "episode")}
    same = {
        name: _tensors_equal(getattr(agent, name).state_dict(), getattr(fresh, name).state_dict())
        for name in ("model", "optim", "pi_optim", "scale")
    }
    for a in (agent, fresh):
        torch.manual_seed(123)
        a._update(*data[3])
    same_after_update = _tensors_equal(agent.model.state_dict(), fresh.model.state_dict())
    return {
        "counters": counters,
        "differs_before": differs_before,
        "same": same,
        "same_after_update": same_after_update,
    }


def buffer_roundtrip(tree: str) -> dict[str, Any]:
    """Wrap a small replay buffer, save it, restore it at the same and at other capacities."""
    os.chdir(tree)
    if tree not in sys.path:
        sys.path.insert(0, tree)
    from common.buffer import Buffer
    from omegaconf import OmegaConf
    from tensordict import TensorDict

    def make(capacity: int) -> Any:
        cfg = dict(device="cpu", buffer_size=capacity, steps=10**6, batch_size=2, horizon=1)
        return Buffer(OmegaConf.create(dict(cfg, multitask=False)))

    def episode(i: int, n: int = 4) -> Any:
        return TensorDict(
            obs=torch.full((n, 1), float(i)),
            action=torch.zeros(n, 1),
            reward=torch.arange(n, dtype=torch.float32) + 10 * i,  # a timestamp per entry
            terminated=torch.zeros(n),
            batch_size=(n,),
        )

    def contents(buffer: Any) -> list[float]:
        return buffer._buffer.storage[: len(buffer._buffer)]["reward"].tolist()

    saved = make(10)
    for i in range(4):  # 16 entries into 10: wrapped
        saved.add(episode(i))
    state = saved.state_dict()
    same, larger, smaller = make(10), make(20), make(8)
    for buffer in (same, larger, smaller):
        buffer.load_state_dict(state)
    cursor = int(saved._buffer.writer.state_dict()["_cursor"])
    result = {
        "saved": contents(saved),
        "cursor": cursor,
        "same": contents(same),
        "same_cursor": int(same._buffer.writer.state_dict()["_cursor"]),
        "num_eps": [b.num_eps for b in (same, larger, smaller)],
        "larger": contents(larger),
        "smaller": contents(smaller),
    }
    for buffer in (same, smaller):
        buffer.add(episode(4))
    result["same_after_add"] = contents(same)
    result["smaller_after_add"] = contents(smaller)
    return result


def grads(agent: Any, user_frozen: list[str]) -> dict[str, Any]:
    """Record, per world-model loss pass, the modules whose parameters accumulate a gradient.

    ``user_frozen``: parameter names switched off beforehand, as a user freezing them would.
    """
    params = dict(agent.model.named_parameters())
    for name in user_frozen:
        params[name].requires_grad_(False)
    passes: list[tuple[str, set[str]]] = []  # (which loss, modules that got a gradient)
    for name, p in params.items():
        if not p.requires_grad:
            continue  # user-frozen: it must stay so, and takes no hook
        module = name.split(".")[0]
        p.register_post_accumulate_grad_hook(lambda _p, m=module: passes[-1][1].add(m))
    originals = {name: getattr(agent, name) for name in ("_world_model_loss", "update_pi")}
    for name, original in originals.items():

        def wrapped(*args: Any, _original: Any = original, _name: str = name, **kw: Any) -> Any:
            passes.append((_name, set()))
            return _original(*args, **kw)

        setattr(agent, name, wrapped)
    before = sorted(n for n, p in params.items() if p.requires_grad)
    (batch,) = batches(agent.cfg, 1)
    agent._update(*batch)
    for name, original in originals.items():
        setattr(agent, name, original)
    return {
        "passes": [sorted(m) for name, m in passes if name == "_world_model_loss"],
        "requires_grad_before": before,
        "requires_grad_after": sorted(n for n, p in params.items() if p.requires_grad),
    }


def run_job(tree: str, job: dict[str, Any]) -> dict[str, Any]:
    mode, overrides = job["mode"], dict(job.get("overrides", {}))
    if mode == "checkpoint":
        return checkpoint(tree, overrides, job["out"])
    if mode == "buffer":
        return buffer_roundtrip(tree)
    if job.get("fallback_random"):
        importlib.import_module("torch._inductor.config").fallback_random = True
    torch.set_default_dtype(torch.float64 if job.get("float64") else torch.float32)
    agent = make_agent(tree, overrides)
    if job.get("float64"):
        agent.scale.double()  # RunningScale's buffers are float32 by construction
    for name, value in job.get("attrs", {}).items():  # e.g. a switch of the patched agent
        assert hasattr(agent, name), name
        setattr(agent, name, value)
    if mode == "trace":
        return trace(agent, int(job.get("updates", 3)), job.get("out", os.devnull))
    if mode == "perturbed":
        return perturbed(agent)
    if mode == "latents":
        return latents(agent)
    if mode == "grads":
        return grads(agent, list(job.get("user_frozen", [])))
    raise SystemExit(f"unknown mode {mode!r}")


def main() -> None:
    torch.set_num_threads(1)
    tree, jobs = sys.argv[1], json.loads(sys.argv[2])
    tree = os.path.abspath(tree)
    print("PROBE " + json.dumps([run_job(tree, job) for job in jobs]))


if __name__ == "__main__":
    main()
