"""Worker for test_ddp.py, run by torchrun: SAC with SAM under d3rlpy's DDP (gloo on CPU).

Each rank trains on its own data; DDP averages the gradients of both passes, so the networks
must stay identical across ranks. Rank 0 prints one JSON line with what the test checks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, __file__.rsplit("/", 1)[0])

import d3rlpy  # noqa: E402
from d3rlpy.logging import NoopAdapterFactory  # noqa: E402
from d3rlpy_support import _small_config, make_dataset, with_sam  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    rank = d3rlpy.distributed.init_process_group("gloo")
    world = dist.get_world_size()
    dataset = make_dataset(discrete=False, seed=rank)
    d3rlpy.seed(0)
    config = with_sam(_small_config(d3rlpy.algos.SACConfig()), rho=0.05)
    algo = config.create(device="cpu:0", enable_ddp=True)
    results = algo.fit(
        dataset,
        n_steps=4,
        n_steps_per_epoch=4,
        logger_adapter=NoopAdapterFactory(),
        show_progress=False,
    )
    spread = {}
    modules = algo.impl.modules
    for field in dataclasses.fields(modules):
        module = getattr(modules, field.name)
        if field.name in ("policy", "q_funcs"):
            flat = torch.cat([p.detach().flatten() for p in module.parameters()])
            gathered = [torch.zeros_like(flat) for _ in range(world)]
            dist.all_gather(gathered, flat)
            spread[field.name] = max(float((g - gathered[0]).abs().max()) for g in gathered)
    if rank == 0:
        metrics = results[-1][1]
        print(
            "RESULT "
            + json.dumps(
                {
                    "world": world,
                    "spread": spread,
                    "critic_sharpness": metrics.get("critic_sharpness"),
                    "actor_sharpness": metrics.get("actor_sharpness"),
                }
            ),
            flush=True,
        )
    # both ranks leave together: a rank that tears gloo down while its peer is still printing
    # can abort at exit ("terminate called without an active exception", seen once in CI
    # under load after the RESULT line was already out)
    dist.barrier()
    d3rlpy.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
    # Leave without running C++ static destructors: gloo's can still abort at interpreter exit
    # after a clean destroy_process_group ("terminate called without an active exception",
    # SIGABRT, seen twice in CI under load, after the barrier above), failing a finished run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
