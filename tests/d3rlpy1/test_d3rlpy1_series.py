"""The d3rlpy 1.1.1 series: a SAM closure at every optimizer step, the sharpness it reports.

Covers patches/d3rlpy1/: every optimizer step of the algorithm implementations goes through
``flatrl.d3rlpy1.closures.step`` (counted against the list in the patch header), every algorithm
reports one ``<name>_sharpness`` per SAM-stepped optimizer, the figures reach 1.x's CSV and
TensorBoard logs, and SAM is configured through 1.x's OptimizerFactory with parameters that
round-trip params.json and saved models.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from d3rlpy.models.optimizers import AdamFactory, OptimizerFactory, SAMFactory
from d3rlpy1_support import (
    adam,
    algorithm_names,
    batches,
    built,
    is_discrete,
    make_dataset,
    sam,
)
from flatrl.optim import SAM, SAMConfigError

REPO = Path(__file__).resolve().parents[2]
TREE = REPO / "build" / "d3rlpy1" / "d3rlpy"
CLOSURE_PATCH = next((REPO / "patches" / "d3rlpy1").glob("*-pass-a-sam-closure-at-every-*.patch"))

AC = {"actor_sharpness", "critic_sharpness"}
# One key per SAM-stepped optimizer that a few updates reach (warm-ups shortened to 2 updates).
EXPECTED = {
    "AWAC": AC,
    "BC": {"loss_sharpness"},
    "BCQ": AC | {"imitator_sharpness"},
    "BEAR": AC | {"temp_sharpness", "alpha_sharpness", "imitator_sharpness"},
    "COMBO": AC | {"temp_sharpness"},
    "CQL": AC | {"temp_sharpness", "alpha_sharpness"},
    "CRR": AC,
    "DDPG": AC,
    "DQN": {"loss_sharpness"},
    "DiscreteBC": {"loss_sharpness"},
    "DiscreteBCQ": {"loss_sharpness"},
    "DiscreteCQL": {"loss_sharpness"},
    "DiscreteSAC": AC | {"temp_sharpness"},
    "DoubleDQN": {"loss_sharpness"},
    "IQL": AC,
    "MOPO": AC | {"temp_sharpness"},
    "NFQ": {"loss_sharpness"},
    "PLAS": AC | {"imitator_sharpness"},
    "PLASWithPerturbation": AC | {"imitator_sharpness"},
    "SAC": AC | {"temp_sharpness"},
    "TD3": AC,
    "TD3PlusBC": AC,
}


def test_the_table_names_every_algorithm() -> None:
    assert sorted(EXPECTED) == algorithm_names() and len(EXPECTED) == 22


def test_every_optimizer_step_of_the_implementations_is_a_closure_step() -> None:
    """The patch header lists each step; the tree has exactly those, and no bare .step()."""
    header = CLOSURE_PATCH.read_text().split("\n---\n")[0]
    listed: dict[str, int] = {}
    current = None
    for line in header.splitlines():
        match = re.match(r"  (\S+\.py):? ", line)
        current = match.group(1) if match else current
        if current and (match or line.startswith("    ")):
            listed[current] = listed.get(current, 0) + len(re.findall(r"\w+ \[\w+\]", line))
    found = {}
    for path in sorted(TREE.rglob("*.py")):
        text = path.read_text()
        assert not re.search(r"self\._\w*optim\.step\(\)", text), f"bare optimizer step in {path}"
        if "_flatrl.step(" in text:
            found[path.name] = text.count("_flatrl.step(")
    assert {Path(k).name: v for k, v in listed.items()} == found
    in_algos = sum(p.read_text().count("_flatrl.step(") for p in (TREE / "algos/torch").glob("*"))
    assert in_algos == 16 and sum(found.values()) == 18
    assert "all 20 concrete implementations of the 22 algorithms" in header


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sam_reports_one_sharpness_per_optimizer_and_adam_none(name: str) -> None:
    data = batches(make_dataset(is_discrete(name)), 4)
    with_sam, with_adam = built(name, sam(0.05)), built(name, adam)
    reported: set[str] = set()
    for batch in data:
        metrics = with_sam.update(batch)
        sharpness = {k: v for k, v in metrics.items() if k.endswith("_sharpness")}
        assert all(isinstance(v, float) and v == v for v in sharpness.values())
        reported |= set(sharpness)
        assert not [k for k in with_adam.update(batch) if k.endswith("_sharpness")]
    assert reported == EXPECTED[name]


def test_every_k_reports_sharpness_on_sam_steps_only() -> None:
    algo = built("DQN", sam(0.05, every_k=2))
    seen = ["loss_sharpness" in algo.update(b) for b in batches(make_dataset(True), 4)]
    assert seen == [True, False, True, False]


def test_sharpness_reaches_the_csv_and_tensorboard_logs(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    algo = built("SAC", sam(0.05))
    algo.fit(
        make_dataset(False),
        n_steps=4,
        n_steps_per_epoch=2,
        logdir=str(tmp_path / "logs"),
        tensorboard_dir=str(tmp_path / "tb"),
        experiment_name="sam",
        with_timestamp=False,
        verbose=False,
        show_progress=False,
    )
    rows = (tmp_path / "logs" / "sam" / "critic_sharpness.csv").read_text().splitlines()
    assert len(rows) == 2 and all(len(row.split(",")) == 3 for row in rows)
    events = EventAccumulator(str(next((tmp_path / "tb").rglob("events.*")).parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {f"metrics/{k}" for k in EXPECTED["SAC"]} <= tags
    assert len(events.Scalars("metrics/temp_sharpness")) == 2


def test_sam_factory_round_trips_params_json_and_saved_models(tmp_path: Path) -> None:
    factory = SAMFactory(AdamFactory(weight_decay=1e-4), rho=0.1, every_k=2, adaptive=True)
    algo = built("CQL", lambda: factory)
    algo.fit(
        make_dataset(False),
        n_steps=2,
        n_steps_per_epoch=2,
        logdir=str(tmp_path),
        experiment_name="cql",
        with_timestamp=False,
        verbose=False,
        show_progress=False,
    )  # writes params.json (1.x's serialisation) and model_2.pt
    saved = json.loads((tmp_path / "cql" / "params.json").read_text())
    assert saved["critic_optim_factory"] == {
        "optim_cls": "SAM",
        "base": "Adam",
        "base_params": {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-4, "amsgrad": False},
        "rho": 0.1,
        "adaptive": True,
        "every_k": 2,
        "clip_grad_norm": None,
    }

    from d3rlpy.algos import CQL

    loaded = CQL.from_json(str(tmp_path / "cql" / "params.json"))
    assert isinstance(loaded.get_params()["critic_optim_factory"], OptimizerFactory)
    loaded.load_model(str(tmp_path / "cql" / "model_2.pt"))
    optim = loaded.impl._critic_optim
    assert isinstance(optim, SAM) and optim.rho == 0.1 and optim.every_k == 2 and optim.adaptive
    assert optim.base_optimizer.param_groups[0]["weight_decay"] == 1e-4
    moments = [optim.base_optimizer.state_dict()["state"][i]["exp_avg"] for i in (0, 1)]
    original = algo.impl._critic_optim.base_optimizer.state_dict()["state"]
    assert all(torch.equal(m, original[i]["exp_avg"]) for i, m in enumerate(moments))
    same = [
        torch.equal(a, b)
        for a, b in zip(
            algo.impl._q_func.parameters(), loaded.impl._q_func.parameters(), strict=True
        )
    ]
    assert all(same)
    batch = batches(make_dataset(False), 1)[0]
    assert "critic_sharpness" in loaded.update(batch)


def test_bad_sam_factory_arguments_name_the_problem() -> None:
    with pytest.raises(SAMConfigError, match="SAMFactory rho must be >= 0"):
        SAMFactory(rho=-1.0)
    with pytest.raises(ValueError, match="unknown optimizer 'Adamm'"):
        SAMFactory("Adamm")
    with pytest.raises(TypeError, match="cannot wrap another SAM"):
        SAMFactory(SAMFactory())
    with pytest.raises(ValueError, match="either in its factory or in base_params"):
        SAMFactory(AdamFactory(), base_params={"eps": 1e-6})


def test_import_prints_no_old_gym_notice():
    """Patch 0005: d3rlpy 1.1.1 still gets its gym, without gym's "unmaintained" notice."""
    import subprocess
    import sys

    code = "import sys, d3rlpy; print('gym' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"
    assert "unmaintained" not in proc.stderr, proc.stderr
