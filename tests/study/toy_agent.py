"""A toy training script for the study runner's tests and ``studies/smoke-command.yaml``.

It "trains" for --steps steps, writing ``metrics.csv`` (step, return, sharpness) and a
checkpoint after every step; ``--resume`` continues from the checkpoint. Every start appends a
line to ``invocations.log`` so tests can see what was launched and how.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quality", type=float, default=1.0, help="the arm's effect on the return")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--fail", action="store_true", help="exit 3 after printing an error")
    p.add_argument("--hang-at", type=int, default=None, help="block forever at this step")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "invocations.log").open("a") as f:
        f.write(json.dumps({"seed": args.seed, "resume": args.resume, "argv": sys.argv}) + "\n")
    if args.fail:
        print("toy_agent: diverged (loss is nan)", file=sys.stderr)
        return 3
    ckpt = args.out / "checkpoint.json"
    start = json.loads(ckpt.read_text())["step"] if args.resume and ckpt.exists() else 0
    metrics = args.out / "metrics.csv"
    if start == 0:
        metrics.write_text("step,return,sharpness\n")
    for step in range(start + 1, args.steps + 1):
        value = args.quality * step + 0.1 * args.seed
        with metrics.open("a", newline="") as f:
            csv.writer(f).writerow([step, value, 1.0 / (step * args.quality)])
        tmp = ckpt.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": step}))
        os.replace(tmp, ckpt)
        if args.hang_at is not None and step == args.hang_at and not args.resume:
            print("toy_agent: waiting to be interrupted", flush=True)
            while True:
                time.sleep(0.05)
    print(f"toy_agent: seed {args.seed} done at step {args.steps}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
