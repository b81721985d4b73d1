"""Bad settings fail with one clear message, before any environment or model is built."""

from __future__ import annotations

import types

import pytest
from tdmpc2_support import QUICK, run_train

torch = pytest.importorskip("torch", reason="flatrl.tdmpc2 needs torch")
optimizers = pytest.importorskip("flatrl.tdmpc2.optimizers", reason="flatrl is not installed")
config = pytest.importorskip("flatrl.tdmpc2.config", reason="flatrl is not installed")
runtime = pytest.importorskip("flatrl.tdmpc2.runtime", reason="flatrl is not installed")


def _cfg(**kw):
    base = dict(optimizer="Adam", sam_rho=0.05, sam_adaptive=False, sam_every=1)
    base.update(sam_scope="world_model", multitask=False, task="cartpole-swingup")
    base.update(kw)
    return types.SimpleNamespace(**base)


@pytest.mark.parametrize("name", ["adam", "SAM", "Muon", "sAm"])
def test_optimizer_names_are_case_insensitive(name):
    assert optimizers.optimizer_settings(_cfg(optimizer=name)).name == name.lower()


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"optimizer": "Foo"}, ["optimizer=Foo", "Adam, SAM, Muon"]),
        ({"sam_rho": -1}, ["sam_rho", ">= 0"]),
        ({"sam_rho": "big"}, ["sam_rho", "finite number"]),
        ({"sam_adaptive": "yes"}, ["sam_adaptive", "true or false"]),
        ({"sam_every": 0}, ["sam_every", ">= 1"]),
        ({"sam_scope": "heads"}, ["sam_scope=heads", "encoder_dynamics"]),
    ],
)
def test_bad_optimizer_settings_name_the_problem(kw, words):
    with pytest.raises(ValueError) as err:
        config.validate_cfg(_cfg(**{"optimizer": "SAM", **kw}))
    for word in words:
        assert word in str(err.value)


def test_sam_settings_are_validated_by_the_core_sam_config():
    from flatrl.optim import SAMConfigError

    with pytest.raises(SAMConfigError, match="sam_every"):
        optimizers.optimizer_settings(_cfg(sam_every=0))
    # rho = 0 is a zero-radius SAM step (the rho -> 0 law), not an error.
    settings = optimizers.optimizer_settings(_cfg(optimizer="SAM", sam_rho=0))
    assert settings.rho == 0.0
    assert settings.sam_config(clip_grad_norm=20).clip_grad_norm == 20.0


def test_default_sam_scope_is_encoder_dynamics(tree):
    cfg = _cfg(optimizer="SAM")
    del cfg.sam_scope
    assert optimizers.optimizer_settings(cfg).scope == "encoder_dynamics"
    from omegaconf import OmegaConf

    assert OmegaConf.load(tree / "config.yaml").sam_scope == "encoder_dynamics"


@pytest.mark.parametrize("freq", [-1, 1.5, "often"])
def test_bad_checkpoint_freq_names_the_key(freq):
    with pytest.raises(ValueError, match="checkpoint_freq must be an integer >= 0"):
        config.validate_cfg(_cfg(checkpoint_freq=freq))


def test_default_writes_no_checkpoint(tree):
    from omegaconf import OmegaConf

    assert OmegaConf.load(tree / "config.yaml").checkpoint_freq == 0


def test_multitask_without_dataset_names_data_dir(tmp_path):
    with pytest.raises(ValueError, match="data_dir"):
        config.validate_cfg(_cfg(multitask=True, task="mt30", data_dir="???"))
    with pytest.raises(ValueError, match=f"data_dir={tmp_path}"):
        config.validate_cfg(_cfg(multitask=True, task="mt30", data_dir=str(tmp_path)))
    (tmp_path / "chunk_0.pt").write_bytes(b"")
    config.validate_cfg(_cfg(multitask=True, task="mt30", data_dir=str(tmp_path)))


def test_seed_steps_default_and_bounds():
    cfg = types.SimpleNamespace(seed_steps="???")
    assert runtime.default_seed_steps(cfg, 500) == 2500  # upstream's max(1000, 5 * length)
    assert runtime.default_seed_steps(types.SimpleNamespace(seed_steps=600), 500) == 600
    with pytest.raises(ValueError, match="seed_steps"):
        runtime.default_seed_steps(types.SimpleNamespace(seed_steps=100), 500)


def test_cpu_turns_compile_off_and_unset_wandb_off():
    cfg = types.SimpleNamespace(device="cpu", compile=True, enable_wandb=True)
    cfg.wandb_project, cfg.wandb_entity = "???", "???"
    with pytest.warns(UserWarning, match="compile"):
        runtime.configure_runtime(cfg)
    assert (cfg.device, cfg.compile, cfg.enable_wandb) == ("cpu", False, False)
    with pytest.raises(ValueError, match="device"):
        runtime.resolve_device("tpu")


def test_compile_cpu_keeps_compile_on_cpu_and_modes():
    cfg = types.SimpleNamespace(device="cpu", compile=True, compile_cpu=True, enable_wandb=False)
    runtime.configure_runtime(cfg)
    assert cfg.compile is True
    assert runtime.compile_mode(torch.device("cpu")) is None
    assert runtime.compile_mode(torch.device("cuda:0")) == "reduce-overhead"  # upstream's


def test_runtime_delegates_to_the_core():
    import flatrl.runtime

    assert runtime.resolve_device is flatrl.runtime.resolve_device


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("optimizer=Foo",), "optimizer=Foo is not supported"),
        (("task=mt30", "model_size=317", "optimizer=SAM", "sam_rho=0.02"), "set data_dir="),
    ],
)
def test_train_py_rejects_bad_config_before_training(tree, tmp_path, args, message):
    quick = [a for a in QUICK if a.split("=")[0] not in {a2.split("=")[0] for a2 in args}]
    proc = run_train(tree, tmp_path, *quick, *args, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert message in out
    # Nothing was built: no work dir announced, no environment, no model.
    assert "Work dir" not in out and "Architecture" not in out
    assert not (tmp_path / "logs").exists()
