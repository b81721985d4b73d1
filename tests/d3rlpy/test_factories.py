"""SAMFactory / MuonFactory: registration, JSON and checkpoint round-trips, resume, bad input."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from d3rlpy_support import (
    build,
    make_dataset,
    optimizers_of,
    params_of,
    require_patched_d3rlpy,
    sample_batch,
)

d3rlpy = require_patched_d3rlpy()

from d3rlpy.optimizers import (  # noqa: E402
    AdamFactory,
    AdamWFactory,
    CosineAnnealingLRFactory,
    MuonFactory,
    SAMFactory,
)
from flatrl.optim import SAM, CompositeOptimizer, SAMConfigError  # noqa: E402


def _sac_config(**factories: Any) -> Any:
    from d3rlpy.models import VectorEncoderFactory

    encoder = VectorEncoderFactory(hidden_units=[16, 16])
    return d3rlpy.algos.SACConfig(
        batch_size=8, actor_encoder_factory=encoder, critic_encoder_factory=encoder, **factories
    )


def test_factories_round_trip_through_json() -> None:
    sam = SAMFactory(
        base=MuonFactory(weight_decay=0.1, fallback="adamw", muon_lr=0.02),
        rho=0.1,
        adaptive=True,
        every_k=3,
        clip_grad_norm=2.0,
        lr_scheduler_factory=CosineAnnealingLRFactory(T_max=7),
    )
    config = _sac_config(actor_optim_factory=sam, critic_optim_factory=MuonFactory())
    restored = d3rlpy.algos.SACConfig.deserialize(config.serialize())
    assert restored.actor_optim_factory == sam
    assert restored.critic_optim_factory == MuonFactory()
    assert isinstance(restored.actor_optim_factory.base.betas, tuple)


def test_fit_logs_sharpness_and_params_json_round_trips(tmp_path: Path) -> None:
    from d3rlpy.logging import FileAdapterFactory

    sam = SAMFactory(base=AdamWFactory(weight_decay=0.01), rho=0.07)
    algo = _sac_config(actor_optim_factory=sam, critic_optim_factory=sam).create(device="cpu:0")
    dataset = make_dataset(discrete=False)
    results = algo.fit(
        dataset,
        n_steps=4,
        n_steps_per_epoch=2,
        logger_adapter=FileAdapterFactory(root_dir=str(tmp_path)),
        experiment_name="sam",
        with_timestamp=False,
        show_progress=False,
    )
    epoch_metrics = results[-1][1]
    assert math.isfinite(epoch_metrics["critic_sharpness"])
    assert math.isfinite(epoch_metrics["actor_sharpness"])
    log_dir = tmp_path / "sam"
    assert (log_dir / "critic_sharpness.csv").read_text().count("\n") == 2  # one row per epoch
    loaded = d3rlpy.algos.SAC.from_json(str(log_dir / "params.json"))
    assert loaded.config.actor_optim_factory == sam
    assert loaded.config.critic_optim_factory == sam


def test_save_and_load_learnable_keep_the_sam_optimizer_and_its_state(tmp_path: Path) -> None:
    sam = SAMFactory(base=MuonFactory(), rho=0.05, every_k=2)
    algo = _sac_config(actor_optim_factory=sam, critic_optim_factory=sam).create(device="cpu:0")
    dataset = make_dataset(discrete=False)
    algo.build_with_dataset(dataset)
    for _ in range(3):
        algo.update(dataset.sample_transition_batch(8))
    algo.save(str(tmp_path / "sac.d3"))
    loaded = d3rlpy.load_learnable(str(tmp_path / "sac.d3"), device="cpu:0")
    assert loaded.config.critic_optim_factory == sam
    optim = loaded.impl.modules.critic_optim.optim
    assert isinstance(optim, SAM)
    assert isinstance(optim.base_optimizer, CompositeOptimizer)
    assert optim.state_dict()["sam"]["step_calls"] == 3
    for a, b in zip(params_of(algo), params_of(loaded), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("every_k", [1, 2])
def test_resumed_sam_optimizer_takes_the_same_next_steps(tmp_path: Path, every_k: int) -> None:
    sam = {"rho": 0.05, "every_k": every_k}
    first, dataset = build("SAC", sam=sam)
    torch.manual_seed(0)
    batches = [sample_batch("SAC", dataset) for _ in range(5)]
    for batch in batches[:3]:
        first.update(batch)
    first.save_model(str(tmp_path / "model.pt"))

    resumed, _ = build("SAC", sam=sam, seed=1)  # different initial weights, then loaded
    resumed.load_model(str(tmp_path / "model.pt"))
    for batch in batches[3:]:
        torch.manual_seed(99)
        expected = first.update(batch)
        torch.manual_seed(99)
        got = resumed.update(batch)
        assert set(got) == set(expected)
        for key in expected:
            assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
    for a, b in zip(params_of(first), params_of(resumed), strict=True):
        torch.testing.assert_close(b, a)


def test_muon_factory_splits_each_network() -> None:
    algo = _sac_config(critic_optim_factory=MuonFactory()).create(device="cpu:0")
    algo.build_with_dataset(make_dataset(discrete=False))
    optim = algo.impl.modules.critic_optim.optim
    assert isinstance(optim, CompositeOptimizer)
    kind_of = {id(p): g["optimizer_kind"] for g in optim.param_groups for p in g["params"]}
    for q_func in algo.impl.modules.q_funcs:  # each ensemble member on its own
        linears = [m for m in q_func.modules() if isinstance(m, torch.nn.Linear)]
        assert kind_of[id(linears[0].weight)] == "adam"  # input layer
        assert kind_of[id(linears[-1].weight)] == "adam"  # output head
        assert all(kind_of[id(m.weight)] == "muon" for m in linears[1:-1])
        assert all(kind_of[id(m.bias)] == "adam" for m in linears)
    algo.update(make_dataset(discrete=False).sample_transition_batch(8))


def test_sam_with_compile_graph_fails_at_create_time() -> None:
    module = torch.nn.Linear(3, 3)
    with pytest.raises(ValueError, match="compile_graph=False"):
        SAMFactory().create(module.named_modules(), lr=1e-3, compiled=True)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rho": -0.1}, SAMConfigError, "SAMFactory rho must be >= 0"),
        ({"rho": float("nan")}, SAMConfigError, "SAMFactory rho must be a finite number >= 0"),
        ({"rho": "0.05"}, SAMConfigError, "SAMFactory rho must be a finite number >= 0"),
        ({"every_k": 0}, SAMConfigError, "SAMFactory every_k must be an integer >= 1"),
        ({"every_k": 1.5}, SAMConfigError, "SAMFactory every_k must be an integer >= 1"),
        ({"adaptive": "yes"}, SAMConfigError, "SAMFactory adaptive must be true or false"),
        ({"clip_grad_norm": -1.0}, SAMConfigError, "SAMFactory clip_grad_norm must be None"),
        ({"base": torch.optim.Adam}, TypeError, "must be a d3rlpy optimizer factory"),
        ({"base": SAMFactory()}, TypeError, "cannot wrap another SAMFactory"),
        (
            {"base": AdamFactory(clip_grad_norm=1.0), "clip_grad_norm": 2.0},
            ValueError,
            "clip_grad_norm is set on both",
        ),
    ],
)
def test_bad_sam_factory_arguments_raise_one_clear_error(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        SAMFactory(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fallback": "sgd"}, "fallback must be 'adam' or 'adamw'"),
        ({"momentum": 1.0}, "momentum must be in"),
        ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
        ({"muon_lr": 0.0}, "muon_lr must be None"),
    ],
)
def test_bad_muon_factory_arguments_raise_one_clear_error(
    kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        MuonFactory(**kwargs)


def test_sam_wraps_the_algorithm_default_factory_with_its_clipping() -> None:
    # Decision Transformer-style factories carry clip_grad_norm; SAM takes it over.
    factory = SAMFactory(base=AdamFactory(clip_grad_norm=0.25))
    algo = dataclasses.replace(_sac_config(), critic_optim_factory=factory).create(device="cpu:0")
    algo.build_with_dataset(make_dataset(discrete=False))
    assert optimizers_of(algo)["critic_optim"].optim.clip_grad_norm == 0.25


def test_rho_zero_is_a_zero_radius_sam_step() -> None:
    # rho = 0 means the same everywhere (flatrl.optim.SAMConfig): two passes, sharpness 0.
    algo, dataset = build("BC", sam={"rho": 0.0})
    assert algo.impl.modules.optim.optim.rho == 0.0
    metrics = [algo.update(sample_batch("BC", dataset)) for _ in range(2)]
    assert [m["loss_sharpness"] for m in metrics] == [0.0, 0.0]


def test_muon_factory_keeps_scalar_temperature_and_alpha_on_the_fallback() -> None:
    # log_temp / log_alpha are 1x1 matrices: Newton-Schulz would make their step a fixed-size
    # sign step whatever the gradient, so they belong to Adam.
    muon = MuonFactory()
    config = d3rlpy.algos.CQLConfig(
        batch_size=8,
        actor_encoder_factory=d3rlpy.models.VectorEncoderFactory(hidden_units=[16, 16]),
        critic_encoder_factory=d3rlpy.models.VectorEncoderFactory(hidden_units=[16, 16]),
        temp_optim_factory=muon,
        alpha_optim_factory=SAMFactory(base=muon),
    )
    algo = config.create(device="cpu:0")
    with pytest.warns(UserWarning, match="no hidden 2-D weight"):
        algo.build_with_dataset(make_dataset(discrete=False))
    for field in ("temp_optim", "alpha_optim"):
        optim = getattr(algo.impl.modules, field).optim
        groups = (optim.base_optimizer if isinstance(optim, SAM) else optim).param_groups
        kinds = {g["optimizer_kind"] for g in groups for _ in g["params"]}
        assert kinds == {"adam"}, field
