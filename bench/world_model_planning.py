"""Why does planning during training hurt the world-model agent on CartPole? A measurement.

For each seed, two runs with the study's settings (improved controller + A2C, horizon 5,
plan weight 0.3): the planner in the behaviour policy from epoch 0, and the planner only at
evaluation. Each run is trained in stages (exact resume) and after every stage the model is
probed on the states its own behaviour policy visits:

* how often the planner's action, and the policy's most likely action, agree with a reference
  CartPole controller (push towards the side the pole falls: theta + 0.5 theta_dot > 0, which
  balances the pole for 500 steps) - a planner worth following beats the policy here;
* how far apart the planner's scores for the two actions are, against the spread of V;
* the share of behaviour actions that the planner decided (its action differed from the one
  the policy alone would most likely take, and the sampled action is the planner's).

At the end both runs are evaluated greedily with and without the planner (plan weight set to 0
for the second), which separates "the policy learned worse" from "the planner overrides it".

    OMP_NUM_THREADS=1 python bench/world_model_planning.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time

import gymnasium as gym
import numpy as np
import torch

ARGS = [
    "--env-name",
    "CartPole-v1",
    "--learning-rate",
    "3e-4",
    "--n-steps",
    "128",
    "--use-improved-controller",
    "--use-a2c",
    "--planning-horizon",
    "5",
    "--device",
    "cpu",
    "--no-progress",
]
MODES = {"plan-train-from-epoch0": 0, "plan-eval-only": 1_000_000}


def reference_action(obs: np.ndarray) -> np.ndarray:
    """Push the cart under the falling pole: 1 (right) when theta + 0.5 theta_dot > 0."""
    return (obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(np.int64)


def reference_return(episodes: int = 10, seed: int = 0) -> float:
    env = gym.make("CartPole-v1")
    total = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        ret, done = 0.0, False
        while not done:
            obs, r, term, trunc, _ = env.step(int(reference_action(obs[None])[0]))
            ret, done = ret + r, term or trunc
        total.append(ret)
    return float(np.mean(total))


@torch.no_grad()
def probe(model, plan_in_behaviour: bool, steps: int = 300, num_envs: int = 8, seed: int = 0):
    """Statistics of the planner and the policy on the states the behaviour policy visits."""
    from flatrl.agents.world_model.controllers import plan_discrete

    ctrl = model.controller
    envs = [gym.make("CartPole-v1") for _ in range(num_envs)]
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)])
    device = torch.device("cpu")
    ctx = model.new_context(num_envs, device)
    prev = model.zero_action_input(num_envs, device)
    hist = torch.zeros(num_envs, dtype=torch.long)
    rows = {k: [] for k in ("plan_ref", "pol_ref", "plan_pol", "gap", "vstd", "decided", "p1")}
    window = model.cfg.memory_window - 1
    for _ in range(steps):
        ctx.lengths = hist.clone()
        x = model.obs_tensor(obs, device)
        z = model.vision(x, with_loss=False).z
        token = model.memory.token(z, prev)
        h = model.memory.hidden(ctx.tokens, token, ctx.lengths)
        ctx.push(token)
        logits = ctrl.logits(z, h)
        scores = plan_discrete(
            z, h, ctrl.n_actions, model.planning_model(), ctrl.value, ctrl.logits
        )
        plan = scores.argmax(-1)
        pol = logits.argmax(-1)
        ref = torch.as_tensor(reference_action(obs))
        rows["plan_ref"].append((plan == ref).float())
        rows["pol_ref"].append((pol == ref).float())
        rows["plan_pol"].append((plan == pol).float())
        rows["gap"].append((scores[:, 1] - scores[:, 0]).abs())
        rows["vstd"].append(ctrl.value(z, h))
        rows["p1"].append(plan.float())
        probs = ctrl.probs(
            logits, plan[:, None].float() if plan_in_behaviour else -torch.ones(num_envs, 1)
        )
        action = torch.multinomial(probs, 1).squeeze(-1)
        rows["decided"].append(((plan != pol) & (action == plan)).float() * plan_in_behaviour)
        for i, e in enumerate(envs):
            o, _, term, trunc, _ = e.step(int(action[i]))
            if term or trunc:
                o, _ = e.reset()
                hist[i] = 0
                prev[i] = 0.0
            else:
                hist[i] = min(int(hist[i]) + 1, window)
                prev[i] = ctrl.action_input(action[i : i + 1])[0]
            obs[i] = o
    cat = {k: torch.cat(v) for k, v in rows.items()}
    return {
        "planner_agrees_with_reference": float(cat["plan_ref"].mean()),
        "policy_agrees_with_reference": float(cat["pol_ref"].mean()),
        "planner_agrees_with_policy": float(cat["plan_pol"].mean()),
        "planner_picks_right": float(cat["p1"].mean()),
        "median_score_gap": float(cat["gap"].median()),
        "value_std": float(cat["vstd"].std()),
        "behaviour_actions_decided_by_planner": float(cat["decided"].mean()),
    }


@torch.no_grad()
def plan_rolled_context(model, z, h, ctx, first: int) -> torch.Tensor:
    """plan_discrete's score for one first action, with h recomputed at every imagined step
    from the acting context (which already holds the real step's token) plus imagined tokens."""
    ctrl, cfg = model.controller, model.cfg
    tokens, lengths = ctx.tokens.clone(), ctx.lengths.clone()
    act = torch.full((z.shape[0],), first)
    ret = torch.zeros(z.shape[0])
    for t in range(cfg.planning_horizon):
        if t > 0:
            act = ctrl.logits(z, h).argmax(-1)
        a_in = ctrl.action_input(act)
        ret = ret + cfg.gamma**t * model.reward_predictor(z, h, a_in)
        z = model.memory.predict_next(z, a_in, h)
        token = model.memory.token(z, a_in)
        h = model.memory.hidden(tokens, token, lengths)
        tokens = torch.cat([tokens[:, 1:], token.unsqueeze(1)], 1)
        lengths = (lengths + 1).clamp(max=tokens.shape[1])
    return ret + cfg.gamma**cfg.planning_horizon * ctrl.value(z, h)


@torch.no_grad()
def analyse(path: str, steps: int = 200, num_envs: int = 8) -> dict:
    """What the learned model says one step ahead, against CartPole's true one-step effect.

    Pushing right (action 1) raises the cart's velocity and lowers the pole's angular velocity
    (positions are unchanged after one Euler step). For the states the policy visits, decode
    predict_next(z, a, h) for both actions and check the sign of the predicted difference; also
    split the planner's score gap into its first-step reward term and the rest.
    """
    from flatrl.agents.world_model import checkpoint
    from flatrl.agents.world_model.cli import parse_config
    from flatrl.agents.world_model.controllers import plan_discrete
    from flatrl.agents.world_model.world_model import WorldModel

    saved = checkpoint.load(path, torch.device("cpu"))
    cfg = parse_config([*ARGS, "--max-epoch", "1"])
    model = WorldModel(cfg.spec, checkpoint.model_config_from(saved))
    model.load_state_dict(saved["model"])
    model.eval()
    ctrl, device = model.controller, torch.device("cpu")
    envs = [gym.make("CartPole-v1") for _ in range(num_envs)]
    obs = np.stack([e.reset(seed=500 + i)[0] for i, e in enumerate(envs)])
    ctx = model.new_context(num_envs, device)
    prev = model.zero_action_input(num_envs, device)
    hist = torch.zeros(num_envs, dtype=torch.long)
    one_hot = [ctrl.action_input(torch.full((num_envs,), a)) for a in (0, 1)]
    horizons = (1, 2, 3, 5)
    rows: dict[str, list] = {"xdot": [], "thdot": [], "reward_share": [], "plan_ref": []}
    rows |= {f"plan_ref_h{k}": [] for k in horizons} | {
        "true_next_ref": [],
        "repeat": [],
        "rolled_ref": [],
        "pol_ref": [],
    }
    for _ in range(steps):
        ctx.lengths = hist.clone()
        z = model.vision(model.obs_tensor(obs, device), with_loss=False).z
        token = model.memory.token(z, prev)
        h = model.memory.hidden(ctx.tokens, token, ctx.lengths)
        ctx.push(token)
        pred = [model.vision.decoder(model.memory.predict_next(z, a, h)) for a in one_hot]
        d = (pred[1] - pred[0]).numpy()
        rows["xdot"].append(d[:, 1] > 0)  # truth: always > 0
        rows["thdot"].append(d[:, 3] < 0)  # truth: always < 0
        scores = plan_discrete(
            z, h, ctrl.n_actions, model.planning_model(), ctrl.value, ctrl.logits
        )
        r_gap = model.reward_predictor(z, h, one_hot[1]) - model.reward_predictor(z, h, one_hot[0])
        gap = scores[:, 1] - scores[:, 0]
        rows["reward_share"].append((r_gap.abs() / gap.abs().clamp_min(1e-12)).numpy())
        rows["plan_ref"].append(scores.argmax(-1).numpy() == reference_action(obs))
        for k in horizons:  # the same planner with a shorter imagined horizon
            pm = model.planning_model()
            pm.horizon = k
            s_k = plan_discrete(z, h, ctrl.n_actions, pm, ctrl.value, ctrl.logits)
            rows[f"plan_ref_h{k}"].append(s_k.argmax(-1).numpy() == reference_action(obs))
        # the imagined continuation (t >= 1, greedy policy on (z_hat_t, h_t held fixed)): how
        # often it repeats the policy's greedy action at the real state, i.e. does not react
        pol = ctrl.logits(z, h).argmax(-1)
        rows["pol_ref"].append(pol.numpy() == reference_action(obs))
        for a in range(ctrl.n_actions):
            zz = z
            act = torch.full((num_envs,), a)
            for _t in range(1, model.cfg.planning_horizon):
                zz = model.memory.predict_next(zz, ctrl.action_input(act), h)
                act = ctrl.logits(zz, h).argmax(-1)
                rows["repeat"].append((act == pol).numpy())
        # the same planner, but with the memory context advanced through the imagined steps
        # (token(z_hat, a) appended, h recomputed) instead of h_t held fixed
        rolled = torch.stack(
            [plan_rolled_context(model, z, h, ctx, a) for a in range(ctrl.n_actions)], -1
        )
        rows["rolled_ref"].append(rolled.argmax(-1).numpy() == reference_action(obs))
        # horizon 1 with CartPole's true next state instead of the model's: V(z(o'_a), h)
        true_next = np.stack(
            [np.stack([copy.deepcopy(e).step(a)[0] for e in envs]) for a in range(ctrl.n_actions)]
        )
        v_true = torch.stack(
            [ctrl.value(model.vision(torch.as_tensor(o), with_loss=False).z, h) for o in true_next]
        )
        rows["true_next_ref"].append(v_true.argmax(0).numpy() == reference_action(obs))
        action = ctrl.probs(ctrl.logits(z, h), -torch.ones(num_envs, 1)).multinomial(1)[:, 0]
        for i, e in enumerate(envs):
            o, _, term, trunc, _ = e.step(int(action[i]))
            if term or trunc:
                o, _ = e.reset()
                hist[i], prev[i] = 0, 0.0
            else:
                hist[i] = min(int(hist[i]) + 1, model.cfg.memory_window - 1)
                prev[i] = one_hot[int(action[i])][0]
            obs[i] = o
    cat = {k: np.concatenate(v) for k, v in rows.items()}
    return {
        "predicted_push_right_raises_cart_velocity": float(cat["xdot"].mean()),
        "predicted_push_right_lowers_pole_velocity": float(cat["thdot"].mean()),
        "median_reward_term_share_of_score_gap": float(np.median(cat["reward_share"])),
        "planner_agrees_with_reference": float(cat["plan_ref"].mean()),
        "policy_agrees_with_reference": float(cat["pol_ref"].mean()),
        "planner_with_advancing_context_agrees_with_reference": float(cat["rolled_ref"].mean()),
        "imagined_steps_repeating_the_policy_action": float(cat["repeat"].mean()),
        "value_of_true_next_state_agrees_with_reference": float(cat["true_next_ref"].mean()),
    } | {
        f"horizon_{k}_agrees_with_reference": float(cat[f"plan_ref_h{k}"].mean()) for k in horizons
    }


def run(seed: int, mode: str, stages: list[int], out: str) -> dict:
    from flatrl.agents.world_model import checkpoint
    from flatrl.agents.world_model.cli import parse_config
    from flatrl.agents.world_model.evaluate import evaluate
    from flatrl.agents.world_model.train import model_config, train
    from flatrl.agents.world_model.world_model import WorldModel

    save = os.path.join(out, f"{mode}_s{seed}") + "/"
    base = [*ARGS, "--planning-start-epoch", str(MODES[mode]), "--seed", str(seed)]
    base += ["--save-path", save, "--log-dir", os.path.join(out, "tb")]
    record: dict = {"seed": seed, "mode": mode, "stages": [], "train_curve": []}
    for i, epochs in enumerate(stages):
        argv = [*base, "--max-epoch", str(epochs), "--save-every", "1000"]
        if i > 0:
            argv.append("--resume")
        cfg = parse_config(argv)
        result = train(cfg)
        record["train_curve"] += [h["mean_episode_reward"] for h in result.history]
        model = WorldModel(cfg.spec, model_config(cfg))
        model.load_state_dict(checkpoint.load(result.last_checkpoint, torch.device("cpu"))["model"])
        model.eval()
        stats = probe(model, plan_in_behaviour=MODES[mode] <= epochs, seed=1000 + seed)
        record["stages"].append({"epoch": epochs, **stats})
        print(
            f"  seed {seed} {mode:22s} epoch {epochs:3d}: "
            + ", ".join(f"{k} {v:.3f}" for k, v in stats.items()),
            flush=True,
        )
    dev = torch.device("cpu")
    record["eval_with_planner"] = float(np.mean(evaluate(model, 20, seed + 10_000, dev)))
    model.controller.plan_weight = 0.0
    record["eval_without_planner"] = float(np.mean(evaluate(model, 20, seed + 10_000, dev)))
    print(
        f"  seed {seed} {mode:22s} eval (20 episodes): with planner "
        f"{record['eval_with_planner']:.1f}, without {record['eval_without_planner']:.1f}",
        flush=True,
    )
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--stages", type=int, nargs="+", default=[0, 12, 24, 48])
    p.add_argument("--out", default=None)
    p.add_argument("--analyse", nargs="+", default=None, help="checkpoints: one-step model check")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.analyse:
        for path in args.analyse:
            stats = analyse(path)
            print(path, json.dumps({k: round(v, 3) for k, v in stats.items()}), flush=True)
        return
    out = args.out or tempfile.mkdtemp(prefix="wm_planning_")
    print(f"reference controller: {reference_return():.1f} mean return over 10 episodes")
    start, records = time.time(), []
    for seed in args.seeds:
        for mode in MODES:
            records.append(run(seed, mode, args.stages, out))
            with open(os.path.join(out, "planning.json"), "w") as fh:
                json.dump(records, fh, indent=1)
    print(f"{time.time() - start:.0f} s; records in {out}/planning.json")


if __name__ == "__main__":
    main()
