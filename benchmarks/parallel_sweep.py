"""Wall time of one grid sweep with Hydra's basic launcher versus launcher=parallel (joblib).

    python benchmarks/parallel_sweep.py              # the 12-job grid, one epoch each
    python benchmarks/parallel_sweep.py --epochs 3   # more work per job
    python benchmarks/parallel_sweep.py --repeats 1  # one sweep per launcher

Each sweep is a fresh `rnnsweep -m` process with an empty run store (nothing is skipped) and
logger=none, timed from start to exit: start-up, the jobs, the summary and the report. The two
launchers alternate `--repeats` times and each keeps its best, since a neighbour on a shared
machine can slow any single sweep. Before them, the machine itself is measured: how much more
work two single-threaded processes get done side by side than one after the other. That is the
ceiling for any launcher on this machine, whatever the number of cores it reports.
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

# A fixed single-threaded workload: the recurrent layer's forward and backward at the lesson's sizes.
PROBE = """
import time, torch
torch.set_num_threads(1)
lstm = torch.nn.LSTM(64, 32, batch_first=True)
x = torch.randn(16, 50, 64)
lstm(x)[0].sum().backward()
t = time.perf_counter()
for _ in range(400):
    lstm(x)[0].sum().backward()
print(time.perf_counter() - t)
"""


def parallel_capacity() -> float:
    """Throughput of two probe processes side by side over one alone (2.0 = two free cores)."""
    def run(n: int) -> float:
        started = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", PROBE], stdout=subprocess.DEVNULL) for _ in range(n)]
        for proc in procs:
            proc.wait()
        return time.perf_counter() - started
    best = [min(run(1) for _ in range(2)), min(run(2) for _ in range(2))]
    return 2 * best[0] / best[1]


def sweep(launcher: str, epochs: int, work: Path) -> float:
    out = work / f"{launcher}-{time.monotonic_ns()}"
    args = [sys.executable, "-m", "rnnsweep", "-m", *GRID, f"train.epochs={epochs}", "logger=none",
            "runtime.progress=off", f"launcher={launcher}", f"ledger.store={out / 'store'}",
            f"hydra.sweep.dir={out / 'sweep'}"]
    started = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True, cwd=work)
    seconds = time.perf_counter() - started
    if res.returncode != 0:
        sys.exit(f"launcher={launcher} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    done = sum(1 for _ in (out / "sweep").glob("*/metrics.json"))
    print(f"launcher={launcher:<9} {done} runs  {seconds:7.1f} s", flush=True)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="alternating sweeps per launcher (best kept)")
    args = p.parse_args()
    print(f"{' '.join(GRID)}: 12 jobs, {args.epochs} epoch(s) each, {os.cpu_count()} cores reported")
    print(f"this machine: two single-threaded processes side by side do {parallel_capacity():.2f}x the work "
          "of one (2.00 = two free cores)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        basic, parallel = [], []
        for _ in range(args.repeats):
            basic.append(sweep("basic", args.epochs, Path(tmp)))
            parallel.append(sweep("parallel", args.epochs, Path(tmp)))
    print(f"best of {args.repeats}: basic {min(basic):.1f} s, parallel {min(parallel):.1f} s; "
          f"speed-up of launcher=parallel over the basic launcher: {min(basic) / min(parallel):.2f}x")


if __name__ == "__main__":
    main()
