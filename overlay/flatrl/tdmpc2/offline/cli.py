"""Command line of the offline world-model study.

``python -m flatrl.tdmpc2.offline train run_dir=DIR task=cartpole-swingup seed=0 steps=600
optimizer=SAM sam_scope=dynamics sam_rho=0.05 [any TD-MPC2 key=value] [resume=true]``

``python -m flatrl.tdmpc2.offline collect task=cartpole-swingup [data_* / heldout_* keys]``
collects (or finds) the cached datasets only, e.g. once before a study starts its workers.

Values are read as YAML scalars (``true``, ``0.05``, ``SAM``), as Hydra does. Keys of
:class:`~flatrl.tdmpc2.offline.train.OfflineSettings` are the run's own; every other key must
be a key of the patched tree's ``config.yaml`` and is passed to TD-MPC2 unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any


def parse_overrides(argv: Sequence[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (YAML scalars); bad items fail clearly."""
    import yaml

    out: dict[str, Any] = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{item!r} is not key=value (e.g. sam_rho=0.05).")
        out[key.strip()] = yaml.safe_load(value) if value != "" else ""
    return out


def _summary_text(summary: dict[str, Any]) -> str:
    final = ", ".join(f"{k} {v:.4g}" for k, v in summary["final"].items())
    return (
        f"\nDone: {summary['updates']} updates in {summary['cpu_s']:.0f} CPU-s.\n"
        f"Final (held-out, then train windows, then measured sharpness): {final}\n"
        f"Metrics:    {summary['metrics_csv']} (one row per log step; held-out columns "
        "every eval_every updates)\n"
        f"Checkpoint: {summary['checkpoint']} (continue with resume=true and more steps)\n"
        f"Datasets:   {summary['train_dataset']}\n            {summary['heldout_dataset']}\n"
        "View: python -c \"import pandas as p; print(p.read_csv('"
        + summary["metrics_csv"]
        + "').dropna(subset=['heldout_consistency']))\", or run a study and "
        "`python -m flatrl.study report`."
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    command = argv.pop(0) if argv and "=" not in argv[0] else "train"
    if command not in ("train", "collect"):
        print(f"unknown command {command!r}; use train or collect (see --help)", file=sys.stderr)
        return 2
    from flatrl.tdmpc2.offline.train import OfflineSettings, _datasets, train

    try:
        overrides = parse_overrides(argv)
        if command == "collect":
            overrides.setdefault("run_dir", ".")
            s = OfflineSettings.from_overrides(overrides)
            (*_,) = _datasets(s)
            return 0
        s = OfflineSettings.from_overrides(overrides)
        summary = train(s)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(_summary_text(summary))
    return 0
