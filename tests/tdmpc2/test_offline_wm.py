"""The offline world-model study's pieces: datasets, held-out errors, exact resume, settings.

Runs in-process on the patched tree (``flatrl.tdmpc2.offline.tree`` puts it on ``sys.path``),
with tiny models and synthetic datasets; dataset collection uses the real DMC environment.
"""

from __future__ import annotations

import csv

import pytest
import torch
from offline_support import TINY, synthetic
from tdmpc2_support import SKIP_REASON

pytestmark = pytest.mark.skipif(bool(SKIP_REASON), reason=SKIP_REASON or "")
torch.set_num_threads(1)


def run(tmp, steps: int, **extra) -> dict:
    from flatrl.tdmpc2.offline.train import OfflineSettings, train

    overrides = {"run_dir": tmp, "steps": steps, "log_every": 2, "eval_every": 4}
    overrides.update(checkpoint_every=4, eval_horizon=4, sharpness_batch=8, seed=3, **TINY)
    overrides.update(extra)
    data = (synthetic(3, 20, 0), synthetic(2, 20, 1))
    return train(OfflineSettings.from_overrides(overrides), data=data)


def rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k != "cpu_s"} for r in csv.DictReader(f)]


def model_state(run_dir) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["agent"]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """Import the tree and run once: the first run pays torch's and torchrl's warm-up."""
    run(tmp_path_factory.mktemp("warm"), 1)


SAM = {"optimizer": "SAM", "sam_scope": "dynamics", "sam_rho": 0.05}


def test_n_plus_n_equals_2n(tmp_path, warm):
    run(tmp_path / "straight", 8, **SAM)
    run(tmp_path / "resumed", 4, **SAM)
    run(tmp_path / "resumed", 8, resume=True, **SAM)
    a, b = (model_state(tmp_path / d) for d in ("straight", "resumed"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert str(a["optim"]) == str(b["optim"])  # Adam moments and SAM state alike
    straight = rows(tmp_path / "straight/metrics.csv")
    assert straight == rows(tmp_path / "resumed/metrics.csv")  # rows after step 4 not doubled
    assert [r["step"] for r in straight] == ["0", "2", "4", "6", "8"]
    evaluated = [r for r in straight if r["heldout_consistency"]]
    assert [r["step"] for r in evaluated] == ["0", "4", "8"]
    assert all(float(r["measured_sharpness"]) > 0 for r in evaluated)
    assert all(r["sharpness"] for r in straight[1:])  # SAM's own, per log step


def test_evaluation_leaves_training_alone(tmp_path, warm):
    """Held-out evaluation and the sharpness measurement restore weights, gradients and every
    random state: evaluating after every update trains the very same weights."""
    run(tmp_path / "rare", 4, eval_every=4, **SAM)
    run(tmp_path / "often", 4, eval_every=1, **SAM)
    a, b = (model_state(tmp_path / d)["model"] for d in ("rare", "often"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_summary_names_every_optimizer_setting(tmp_path, warm):
    variant = {**SAM, "sam_variant": "looksam", "sam_every": 2, "sam_looksam_alpha": 0.5}
    summary = run(tmp_path, 2, **variant)
    assert summary["optimizer"] == variant
    assert run(tmp_path / "adam", 2, optimizer="Adam")["optimizer"] == {"optimizer": "Adam"}


def test_resume_with_other_settings_fails(tmp_path, warm):
    run(tmp_path, 2)
    with pytest.raises(ValueError, match="other settings .*sam_rho"):
        run(tmp_path, 4, resume=True, sam_rho=0.5)


def test_tdmpc2_overrides_pass_through_and_unknown_keys_fail(tmp_path):
    from flatrl.tdmpc2.offline.cli import parse_overrides
    from flatrl.tdmpc2.offline.train import OfflineSettings
    from flatrl.tdmpc2.offline.tree import make_cfg

    o = parse_overrides(["run_dir=x", "steps=7", "sam_every=2", "rho=0.7", "optimizer=SAM"])
    s = OfflineSettings.from_overrides(o)
    assert s.steps == 7 and "steps" not in s.tdmpc2 and s.tdmpc2["sam_every"] == 2
    cfg = make_cfg(s.tdmpc2, synthetic(1, 5, 0)["facts"])
    assert (cfg.sam_every, cfg.rho, cfg.optimizer, cfg.batch_size) == (2, 0.7, "SAM", 64)
    with pytest.raises(
        ValueError, match="unknown TD-MPC2 setting.*sam_rh0 \\(did you mean sam_rho"
    ):
        make_cfg({"sam_rh0": 0.1}, {})
    with pytest.raises(ValueError, match="is not key=value"):
        parse_overrides(["steps"])


def test_heldout_errors_match_a_hand_computation():
    from flatrl.tdmpc2.offline.heldout import heldout_errors, windows

    class Linear:  # latent = observation; d(z, a) = z + a; R = z; Q = 2 z; target value = z
        def encode(self, o):
            return o

        def next(self, z, a):
            return z + a

        def reward(self, z, a):
            return z

        def q(self, z, a):
            return 2 * z

        def target_value(self, z):
            return z

    nan = float("nan")
    data = {
        "obs": torch.tensor([[[0.0], [1.0], [3.0]]]),
        "action": torch.tensor([[[nan], [1.0], [1.0]]]),
        "reward": torch.tensor([[nan, 1.0, 2.0]]),
    }
    w = windows(data, horizon=2)
    out = heldout_errors(Linear(), w, discount=0.5)
    # rollout z: 0 -> 1 -> 2 vs encodings 1, 3: squared errors 0, 1
    assert out["heldout_consistency"] == pytest.approx(0.5)
    assert out["heldout_consistency_last"] == pytest.approx(1.0)
    # reward predictions 0, 1 (the rolled-out z) vs rewards 1, 2
    assert out["heldout_reward_mae"] == pytest.approx(1.0)
    # Q = 2 * (0, 1) vs TD targets (1 + 0.5 * 1, 2 + 0.5 * 3) = (1.5, 3.5)
    assert out["heldout_value_td_mae"] == pytest.approx(1.5)
    # windows: stride 1 over a 4-step episode gives 3 windows, action[t+1] after obs[t]
    long = {k: torch.arange(5.0).reshape(1, 5, 1) for k in ("obs", "action")}
    long["reward"] = torch.arange(5.0).reshape(1, 5)
    w = windows(long, horizon=2, stride=1)
    assert w.obs[:, :, 0].T.tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]
    assert w.action[:, :, 0].T.tolist() == [[1, 2], [2, 3], [3, 4]]
    with pytest.raises(ValueError, match="eval_horizon must be in 1..4"):
        windows(long, horizon=5)


def test_dataset_collection_is_deterministic_and_cached(tmp_path, monkeypatch):
    from flatrl.tdmpc2.offline import data

    spec = data.DatasetSpec("cartpole-swingup", (("random", 1), ("scripted", 1)), 0.3, seed=0)
    first, path = data.load_or_collect(spec, root=tmp_path)
    assert path.parent == tmp_path and path.name.startswith("cartpole-swingup-")
    assert first["obs"].shape == (2, 501, 5) and first["policy"] == ["random", "scripted"]
    assert (
        torch.isnan(first["action"][:, 0]).all() and not torch.isnan(first["action"][:, 1:]).any()
    )
    assert first["returns"][1] > first["returns"][0]  # the scripted controller swings up

    def no_collect(*args, **kwargs):
        raise AssertionError("a cached dataset was collected again")

    real_collect = data.collect
    monkeypatch.setattr(data, "collect", no_collect)
    cached, same = data.load_or_collect(spec, root=tmp_path)
    assert same == path and torch.equal(cached["obs"], first["obs"])
    monkeypatch.setattr(data, "collect", real_collect)
    again = data.collect(data.DatasetSpec("cartpole-swingup", (("random", 1),), 0.3, seed=0))
    assert torch.equal(again["obs"][0], first["obs"][0])  # same seed, same episode
    assert torch.equal(again["action"][0, 1:], first["action"][0, 1:])
    # held-out data: another policy and other seeds, hence another cache key
    assert data.heldout_spec("cartpole-swingup").key() != data.train_spec("cartpole-swingup").key()
