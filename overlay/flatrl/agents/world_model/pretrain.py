"""Pre-training stages: vision alone, then memory on a frozen (loaded) vision.

Both learn from random-policy rollouts, collected with the same collector as RL (so autoreset
slots are masked the same way). An epoch here is one such rollout (n_steps x n_envs steps)
and one pass over it in --num-minibatches steps. The stages write
`<save-path>/pretrainedV_<env>.pt` and `<save-path>/pretrainedVM_<env>.pt`, which --load-path
accepts for the next stage or for A2C.
"""

from __future__ import annotations

import os
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from flatrl.runtime import seed_everything

from . import checkpoint
from .a2c import encode_rollout, history
from .config import TrainConfig
from .envs import make_vector_env
from .rollout import Rollout, RolloutCollector
from .train import model_config, run_name
from .world_model import WorldModel


def _vision_loss(model: WorldModel, rollout: Rollout, t: torch.Tensor, e: torch.Tensor) -> dict:
    vis = model.vision(rollout.obs[t + rollout.context, e])
    return {"loss": vis.loss, "vision_loss": vis.loss, "recon_loss": vis.recon_loss}


def _memory_loss(
    model: WorldModel, rollout: Rollout, t: torch.Tensor, e: torch.Tensor, z_all, tok_all
) -> dict:
    c, slot = rollout.context, t + rollout.context
    vis = model.vision(rollout.obs[slot, e])
    token = model.memory.token(vis.z, rollout.prev_action[slot, e])
    h = model.memory.hidden(history(tok_all, slot, e, c), token, rollout.hist_len[slot, e])
    a_in = model.controller.action_input(rollout.actions[t, e])
    memory_loss = F.mse_loss(model.memory.predict_next(vis.z, a_in, h), z_all[slot + 1, e])
    reward_loss = F.mse_loss(model.reward_predictor(vis.z, h, a_in), rollout.scaled_rewards[t, e])
    loss = memory_loss + reward_loss
    if any(p.requires_grad for p in model.vision.parameters()):
        loss = loss + vis.loss  # vector envs without a loaded vision learn it alongside
    return {"loss": loss, "memory_loss": memory_loss, "reward_loss": reward_loss}


def pretrain(cfg: TrainConfig) -> str:
    """Run the stage the flags ask for; returns the path of the file it wrote."""
    assert cfg.spec is not None, "call config.validate(cfg) first"
    env_name, run = cfg.env.env_name, cfg.run
    seed_everything(run.seed)
    device = cfg.torch_device()
    model = WorldModel(cfg.spec, model_config(cfg)).to(device)
    stage = "vision" if run.pretrain_vision else "memory"
    if run.load_path:
        parts = checkpoint.load_weights(model, run.load_path, env_name)
        tqdm.write(f"loaded {', '.join(parts)} from {run.load_path}")
        if stage == "memory" and "vision" in parts:
            model.vision.requires_grad_(False)
    trained = [model.vision] if stage == "vision" else [model.memory, model.reward_predictor]
    if stage == "memory" and any(p.requires_grad for p in model.vision.parameters()):
        trained.append(model.vision)
    params = [p for m in trained for p in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=cfg.optim.learning_rate)
    envs = make_vector_env(env_name, cfg.num_envs, run.seed)
    # The reward predictor learns the same reward scale RL will train it on (raw with
    # --no-normalize-rewards, else reward / running std of the return).
    collector = RolloutCollector(
        envs, model, cfg.env.n_steps, device, run.seed, cfg.update.gamma, cfg.env.normalize_rewards
    )
    writer = SummaryWriter(os.path.join(run.log_dir, f"pretrain-{stage}_{run_name(cfg)}"))
    try:
        for epoch in tqdm(range(1, run.max_epoch + 1), disable=not run.progress, desc=stage):
            rollout = collector.collect(random_policy=True)
            z_all, tok_all = encode_rollout(model, rollout)
            t_idx, e_idx = rollout.valid.nonzero(as_tuple=True)
            perm = torch.randperm(t_idx.numel()).to(t_idx.device)
            sums: dict[str, float] = {}
            chunks = perm.chunk(cfg.update.num_minibatches)
            for mb in chunks:
                t, e = t_idx[mb], e_idx[mb]
                if stage == "vision":
                    parts = _vision_loss(model, rollout, t, e)
                else:
                    parts = _memory_loss(model, rollout, t, e, z_all, tok_all)
                optimizer.zero_grad(set_to_none=True)
                parts["loss"].backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm * 20)
                optimizer.step()
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / len(chunks)
            for k, v in sums.items():
                if k != "loss":
                    writer.add_scalar(f"pretrain/{k}", v, epoch)
    finally:
        writer.close()
        envs.close()
    name = "pretrainedV" if stage == "vision" else "pretrainedVM"
    path = os.path.join(run.save_path, f"{name}_{env_name}.pt")
    payload = {"kind": name, "env_name": env_name, "model_config": asdict(model.cfg)}
    payload["vision"] = model.vision.state_dict()
    if stage == "memory":
        payload["memory"] = model.memory.state_dict()
        payload["reward_predictor"] = model.reward_predictor.state_dict()
    checkpoint.save(path, payload)
    tqdm.write(f"saved {path}")
    return path
