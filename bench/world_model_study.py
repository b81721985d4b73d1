"""Run a study like ``python -m flatrl.study run``, but launch its runs seed by seed.

``flatrl.study.runner.plan`` orders runs arm by arm (every seed of the first arm, then the next
arm), so a study stopped part-way has all seeds of one arm and none of another. This script
changes only that order: the first seed of every arm, then the second seed of every arm, ...,
so partial results stay balanced across arms. Run directories, skipping of finished runs and
resuming are the runner's own, so ``python -m flatrl.study run`` continues where this stopped.

    OMP_NUM_THREADS=1 python bench/world_model_study.py studies/world-model-cartpole.yaml \
        --workers 1
"""

from __future__ import annotations

import sys
from pathlib import Path

from flatrl.study import cli, runner
from flatrl.study.spec import Study


def plan_by_seed(study: Study, runs_root: str | Path) -> list[runner.Run]:
    """The runner's plan, reordered seed-major (seed order, then arm order, as in the file)."""
    seed_rank = {seed: i for i, seed in enumerate(study.seeds)}
    arm_rank = {arm: i for i, arm in enumerate(study.arms)}
    runs = runner.plan(study, runs_root)
    return sorted(runs, key=lambda run: (seed_rank[run.seed], arm_rank[run.arm]))


def main(argv: list[str]) -> int:
    cli.plan = plan_by_seed  # the only change: cmd_run looks `plan` up in the cli module
    return cli.main(["run", *argv])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
