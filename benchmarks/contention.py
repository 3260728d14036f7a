"""Training speed when the CPU is shared: the default thread count against one thread.

The lesson's LSTM (embed 64, hidden 32, batch 16, exact Adam; experiment=seed_notebook lesson=lstm)
trains one epoch of generated texts, at `runtime.threads=0` (the default) and at
`runtime.threads=1`, alternating, each run in a fresh process with a run store of its own (a
store skip would copy an older run's examples/s). Three conditions, each neighbour started and
stopped by this script:

- idle: nothing else runs;
- cpu-bound: one `while True: pass` process;
- training: a second rnnsweep run training the same model (its default thread count).

The last column sums, over the default's runs, the thread governor's record (`env.thread_governor`):
its measuring windows on all threads (tries and time after a switch) out of all, its switches,
and the tries of all threads it held back because the cores they need were busy.

    python benchmarks/contention.py [--repeats 3] [--rows 20000] [--neighbours idle,cpu-bound,training]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = [sys.executable, "-m", "rnnsweep", "experiment=seed_notebook", "lesson=lstm", "logger=none",
       "runtime.progress=off", "runtime.device=cpu"]


KINDS = ("idle", "cpu-bound", "training")


def train(work: Path, rows: int, threads: int, tag: str) -> tuple[float, dict]:
    """(examples/s, what the thread governor did: {} without one) of one fresh run."""
    out = Path(tempfile.mkdtemp(dir=work, prefix=f"{tag}-"))
    res = subprocess.run([*RUN, f"data.train_size={rows}", f"runtime.threads={threads}", f"ledger.store={out / 'store'}",
                          f"hydra.run.dir={out / 'run'}"], capture_output=True, text=True,
                         env={**os.environ, "RNNSWEEP_CACHE_DIR": str(work / "cache")})
    if res.returncode != 0:
        sys.exit(f"the run failed:\n{res.stderr[-2000:]}")
    record = json.loads((out / "run" / "metrics.json").read_text())
    return record["metrics"]["train/examples_per_s"], record["env"].get("thread_governor") or {}


def neighbour(kind: str, work: Path, rows: int) -> subprocess.Popen | None:
    if kind == "idle":
        return None
    if kind == "cpu-bound":
        command = [sys.executable, "-c", "while True: pass"]
    else:  # a second training run, long enough to outlast the measurements
        out = Path(tempfile.mkdtemp(dir=work, prefix="neighbour-"))
        command = [*RUN, f"data.train_size={rows}", "train.epochs=1000", f"ledger.store={out / 'store'}",
                   f"hydra.run.dir={out / 'run'}"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "RNNSWEEP_CACHE_DIR": str(work / "cache")})
    time.sleep(3.0 if kind == "training" else 0.5)  # the second run past its start-up, into training
    return proc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="alternating pairs per condition (default 3)")
    p.add_argument("--rows", type=int, default=20000, help="training rows of the generated data (default 20000)")
    p.add_argument("--neighbours", default=",".join(KINDS),
                   help=f"comma-separated subset of {','.join(KINDS)} (default: all three)")
    args = p.parse_args()
    if args.repeats < 1 or args.rows < 100:
        p.error("--repeats must be at least 1 and --rows at least 100")
    kinds = args.neighbours.split(",")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        p.error(f"--neighbours: unknown {', '.join(map(repr, unknown))} (choose from: {','.join(KINDS)})")
    work = Path(tempfile.mkdtemp(prefix="rnnsweep-bench-contention-"))
    train(work, args.rows, 1, "warm")  # builds the data cache and numba's, outside the timings
    print(f"Lesson LSTM, one epoch of {args.rows:,} generated texts, {os.cpu_count()} cores; median of "
          f"{args.repeats} alternating pairs, each run its own process and store.\n")
    print("| neighbour | default (threads=0) ex/s | 1 thread ex/s | default / 1 thread | default's windows "
          "on all threads: tried / all (switches, tries held) |")
    print("|---|---|---|---|---|")
    for kind in kinds:
        proc = neighbour(kind, work, args.rows)
        default, single, ratios, governed = [], [], [], []
        try:
            for r in range(args.repeats):
                order = (0, 1) if r % 2 == 0 else (1, 0)
                got = {threads: train(work, args.rows, threads, f"{kind}-{threads}") for threads in order}
                default.append(got[0][0])
                single.append(got[1][0])
                ratios.append(got[0][0] / got[1][0])
                governed.append(got[0][1])
        finally:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        windows = [sum(g.get("windows", {}).values()) for g in governed]
        most = [sum(n for t, n in g.get("windows", {}).items() if t != "1") for g in governed]
        print(f"| {kind} | {statistics.median(default):,.0f} | {statistics.median(single):,.0f} | "
              f"{statistics.median(ratios):.2f}x | {sum(most)} / {sum(windows)} "
              f"({sum(g.get('switches', 0) for g in governed)}, {sum(g.get('held', 0) for g in governed)}) |",
              flush=True)


if __name__ == "__main__":
    main()
