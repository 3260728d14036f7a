"""Wall time of one grid sweep with Hydra's basic launcher versus launcher=parallel (joblib).

    python benchmarks/parallel_sweep.py            # the 12-job grid, one epoch each
    python benchmarks/parallel_sweep.py --epochs 2

Both sweeps run in this invocation, one after the other, each with an empty run store (so
nothing is skipped) and logger=none; the ratio is what to read on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = ["model=rnn,lstm,gru", "batching=padded,packed", "topology=uni,bi"]


def sweep(launcher: str, epochs: int, work: Path) -> float:
    args = [sys.executable, "-m", "rnnsweep", "-m", *GRID, f"train.epochs={epochs}", "logger=none",
            "runtime.progress=off", f"launcher={launcher}", f"ledger.store={work / launcher / 'store'}",
            f"hydra.sweep.dir={work / launcher / 'sweep'}"]
    started = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True, cwd=work)
    seconds = time.perf_counter() - started
    if res.returncode != 0:
        sys.exit(f"launcher={launcher} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    done = sum(1 for _ in (work / launcher / "sweep").glob("*/metrics.json"))
    print(f"launcher={launcher:<9} {done} runs  {seconds:7.1f} s", flush=True)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args()
    print(f"{len(GRID)}-key grid ({' '.join(GRID)}), {args.epochs} epoch(s), {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        basic = sweep("basic", args.epochs, Path(tmp))
        parallel = sweep("parallel", args.epochs, Path(tmp))
    print(f"speed-up of launcher=parallel over the basic launcher: {basic / parallel:.2f}x")


if __name__ == "__main__":
    main()
