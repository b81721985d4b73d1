"""Helpers for the study tests: a study dict around tests/study/toy_agent.py."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

from flatrl.study.spec import Study, parse_study

TOY = Path(__file__).with_name("toy_agent.py")


def toy_raw(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "toy",
        "entry_point": {
            "type": "command",
            "command": f"{{python}} {TOY} --seed {{seed}} --steps {{budget}} --out {{run_dir}}",
            "resume_flag": "--resume",
        },
        "seeds": [0, 1],
        "budget": 5,
        "metric": "return",
        "extra_metrics": ["sharpness"],
        "baseline": "base",
        "arms": {"base": {}, "better": {"overrides": {"--quality": 2.0}}},
        "report": {"reps": 500},
    }
    raw.update(copy.deepcopy(changes))
    return raw


def make_study(**changes: Any) -> Study:
    return parse_study(toy_raw(**changes), "toy.yaml")


def invocations(run_dir: Path) -> list[dict[str, Any]]:
    import json

    path = run_dir / "invocations.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


PYTHON = sys.executable
