"""TD-MPC2's non-DMC tasks and its env import on the stack they run on.

Two patches: importing ``envs`` (every train.py run does) prints none of old gym's "unmaintained"
notice where gym is installed (today's stack has it for d3rlpy), and ``lunarlander-continuous``
builds on gymnasium 1.x, which registers LunarLander-v3 only. Each task of ``envs/mujoco.py``
whose simulator is installed here is built, reset and stepped in a child process (TD-MPC2
imports its modules by top-level names, so each tree runs in its own process).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tdmpc2_support import child_env

pytestmark = pytest.mark.tdmpc2

# task -> the module its simulator needs
TASKS = {
    "mujoco-halfcheetah": "mujoco",
    "mujoco-walker": "mujoco",
    "bipedal-walker": "Box2D",
    "lunarlander-continuous": "Box2D",
}

STEP_ONE = """
import json, sys
import numpy as np
from omegaconf import OmegaConf
from envs.mujoco import make_env
cfg = OmegaConf.create({"task": sys.argv[1], "obs": "state", "seed": 1})
env = make_env(cfg)
obs = env.reset()
obs, reward, done, info = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
print(json.dumps({"obs": list(np.shape(obs)), "space": list(env.observation_space.shape),
                  "reward": float(reward), "env_id": env.unwrapped.spec.id}))
"""


def _in_tree(tree: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=tree,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )


def test_importing_envs_prints_no_old_gym_notice(tree: Path):
    if importlib.util.find_spec("gym") is None:
        pytest.skip("old gym is not installed in this environment, so it has no notice to mute")
    proc = _in_tree(tree, "-c", "import envs")
    assert proc.returncode == 0, proc.stderr
    assert "unmaintained" not in proc.stderr, proc.stderr
    assert "Gymnasium" not in proc.stderr, proc.stderr  # the notice's "Please upgrade" lines


@pytest.mark.parametrize("task", sorted(TASKS))
def test_classic_and_mujoco_tasks_build_and_step(tree: Path, task: str):
    needs = TASKS[task]
    if importlib.util.find_spec(needs) is None:
        pytest.skip(f"{task} needs {needs}, which is not installed in this environment")
    proc = _in_tree(tree, "-c", STEP_ONE, task)
    assert proc.returncode == 0, f"{task} did not build:\n{proc.stderr[-3000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["obs"] == result["space"]
    assert result["reward"] == result["reward"]  # not NaN
    if task == "lunarlander-continuous":
        import gymnasium

        expected = "LunarLander-v3" if "LunarLander-v3" in gymnasium.registry else "LunarLander-v2"
        assert result["env_id"] == expected
