"""Checks of a parsed TD-MPC2 config that must fail before any environment or model is built."""

from __future__ import annotations

import glob
import os
from typing import Any

from flatrl.tdmpc2.checkpoint import check_checkpointing
from flatrl.tdmpc2.optimizers import optimizer_settings
from flatrl.tdmpc2.runtime import is_unset


def check_offline_data(cfg: Any) -> None:
    """Multi-task runs (mt30/mt80) train offline: without the dataset, say so and name data_dir.

    Upstream would first build every task's environment and then fail on an assert.
    """
    if not getattr(cfg, "multitask", False):
        return
    data_dir = getattr(cfg, "data_dir", None)
    if is_unset(data_dir):
        raise ValueError(
            f"task={cfg.task} trains offline on the TD-MPC2 multi-task dataset: set "
            "data_dir=<folder holding its *.pt files> (the dataset is not downloaded for you)."
        )
    pattern = os.path.join(str(data_dir), "*.pt")
    if not glob.glob(pattern):
        raise ValueError(
            f"data_dir={data_dir} holds no *.pt files for task={cfg.task}; point data_dir at "
            "the folder of the downloaded TD-MPC2 multi-task dataset."
        )


def validate_cfg(cfg: Any) -> Any:
    """Validate optimizer settings, offline dataset and checkpointing; returns ``cfg`` unchanged."""
    optimizer_settings(cfg)
    check_offline_data(cfg)
    check_checkpointing(cfg)
    return cfg
