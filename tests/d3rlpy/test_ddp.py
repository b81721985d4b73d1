"""SAM under d3rlpy's own DDP support: torchrun --nproc_per_node=2 with gloo on CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from d3rlpy_support import require_patched_d3rlpy

require_patched_d3rlpy()


@pytest.mark.slow
def test_sam_under_ddp_keeps_ranks_in_sync_and_logs_sharpness() -> None:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this build")
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(worker)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["world"] == 2
    # DDP all-reduces the gradients of both SAM passes: the networks stay identical.
    assert result["spread"] == {"policy": 0.0, "q_funcs": 0.0}
    assert math.isfinite(result["critic_sharpness"])
    assert math.isfinite(result["actor_sharpness"])
