"""Wall time of one grid sweep with Hydra's basic launcher versus launcher=parallel (joblib).

    python benchmarks/parallel_sweep.py              # the 12-job grid, one epoch each
    python benchmarks/parallel_sweep.py --epochs 3   # more work per job
    python benchmarks/parallel_sweep.py --repeats 1  # one sweep per launcher

Each sweep is a fresh `rnnsweep -m` process with an empty run store (nothing is skipped), timed
from start to exit: start-up, the jobs, the summary and the report. `--logger wandb` (the
default, as a user's sweep runs) logs every run to W&B offline; `--logger none` measures
training and bookkeeping alone. The two launchers alternate `--repeats` times and each keeps its
best, since a neighbour on a shared machine can slow any single sweep. Before them, the machine itself is measured: how much more
work two single-threaded processes get done side by side than one after the other. That is the
ceiling for any launcher on this machine, whatever the number of cores it reports. After them, the
ceiling for this grid: what the best basic sweep spent where only one process can work (start-up,
one warm-up, the end) bounds any parallel launcher's speed-up, by Amdahl's law.

That ceiling lets each of launcher=parallel's one-thread jobs train as fast as the basic
launcher's job does on every core. A third sweep, the basic launcher with `runtime.threads=1`,
measures the jobs at the speed a parallel launcher actually gives each of them: Amdahl's ceiling
with that work shared by the machine's two processes is what the machine allows a launcher of
one-thread jobs (`--no-one-thread` skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


def sweep(launcher: str, epochs: int, work: Path, logger: str, threads: int = 0) -> dict[str, float]:
    """One sweep's wall time and its phases, read off the files the jobs leave: start-up (to the
    first job's directory), jobs (to the last job's job.json), end (summary, report, exit).
    `threads`: runtime.threads (0: the default)."""
    out = work / f"{launcher}-{time.monotonic_ns()}"
    args = [sys.executable, "-m", "rnnsweep", "-m", *GRID, f"train.epochs={epochs}", f"logger={logger}",
            "runtime.progress=off", f"launcher={launcher}", f"ledger.store={out / 'store'}",
            f"hydra.sweep.dir={out / 'sweep'}", f"runtime.threads={threads}"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}  # never online from a benchmark
    started = time.time()
    res = subprocess.run(args, capture_output=True, text=True, cwd=work, env=env)
    ended = time.time()
    if res.returncode != 0:
        sys.exit(f"launcher={launcher} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    jobs = sorted((d for d in (out / "sweep").iterdir() if (d / "job.json").is_file()),
                  key=lambda d: (d / ".hydra").stat().st_mtime)
    began = [(d / ".hydra").stat().st_mtime for d in jobs]
    finished = [(d / "job.json").stat().st_mtime for d in jobs]
    training = [json.loads((d / "metrics.json").read_text())["metrics"]["train/seconds"] for d in jobs]
    # Beyond training, a job costs its process a little; the first job of a process also pays the
    # warm-up (torch, the first optimizer, the compiled kernels), which is what exceeds the others.
    beyond = [end - begin - train for begin, end, train in zip(began, finished, training)]
    warm_up = max(0.0, beyond[0] - statistics.median(beyond[1:])) if len(beyond) > 1 else 0.0
    t = {"total": ended - started, "start": began[0] - started, "jobs": max(finished) - began[0],
         "end": ended - max(finished), "train": sum(training), "warm_up": warm_up,
         "busy": sum(end - begin for begin, end in zip(began, finished))}
    label = f"{launcher}, 1 thread" if threads == 1 else launcher
    print(f"launcher={label:<17} {len(jobs)} runs  {t['total']:6.1f} s  (start-up {t['start']:.1f} s, "
          f"jobs {t['jobs']:.1f} s, summary+report+exit {t['end']:.1f} s; training itself {t['train']:.1f} s "
          "summed over jobs)", flush=True)
    return t


def ceiling(basic: dict[str, float], capacity: float) -> float:
    """The most any parallel launcher can gain over `basic` (Amdahl): start-up, end and one
    worker's warm-up stay serial, the rest of the basic sweep runs `capacity` times faster.
    Generous: it lets each job on one thread train as fast as the basic launcher's on all."""
    serial = basic["start"] + basic["end"] + basic["warm_up"]
    return basic["total"] / (serial + (basic["total"] - serial) / capacity)


def one_thread_ceiling(basic: dict[str, float], one_thread: dict[str, float], capacity: float) -> float:
    """Amdahl's ceiling for a launcher of one-thread jobs: the basic sweep's start-up and end and
    one warm-up stay serial; the jobs, as long as they take on one thread each (the basic launcher
    with runtime.threads=1), share the machine's `capacity`."""
    serial = basic["start"] + basic["end"] + one_thread["warm_up"]
    return basic["total"] / (serial + (one_thread["jobs"] - one_thread["warm_up"]) / capacity)


def packing_ceiling(basic: dict[str, float], parallel: dict[str, float], capacity: float) -> float:
    """The most launcher=parallel could gain with its jobs as they ran (one thread each, their
    measured durations, first-job warm-ups included) packed onto the workers without a gap or a
    lone last job: what the scheduling leaves on the table, where `ceiling` also credits each
    one-thread job with the speed of the basic launcher's job on every core."""
    return basic["total"] / (parallel["start"] + parallel["end"] + parallel["busy"] / capacity)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="alternating sweeps per launcher (best kept)")
    p.add_argument("--logger", choices=("wandb", "none"), default="wandb",
                   help="wandb: every run logged to W&B offline, as by default (default); none: no tracker")
    p.add_argument("--no-one-thread", action="store_true",
                   help="skip the basic sweep on one thread (and the ceiling it gives)")
    args = p.parse_args()
    if args.epochs < 1 or args.repeats < 1:
        p.error("--epochs and --repeats take whole numbers from 1")
    print(f"{' '.join(GRID)}: 12 jobs, {args.epochs} epoch(s) each, logger={args.logger}, "
          f"{os.cpu_count()} cores reported")
    capacity = parallel_capacity()
    print(f"this machine: two single-threaded processes side by side do {capacity:.2f}x the work "
          "of one (2.00 = two free cores)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        basic, parallel, one_thread = [], [], []
        for _ in range(args.repeats):
            basic.append(sweep("basic", args.epochs, Path(tmp), args.logger))
            parallel.append(sweep("parallel", args.epochs, Path(tmp), args.logger))
            if not args.no_one_thread:
                one_thread.append(sweep("basic", args.epochs, Path(tmp), args.logger, threads=1))
    b, q = (min(runs, key=lambda t: t["total"]) for runs in (basic, parallel))
    print(f"best of {args.repeats}: basic {b['total']:.1f} s, parallel {q['total']:.1f} s; "
          f"speed-up of launcher=parallel over the basic launcher: {b['total'] / q['total']:.2f}x "
          f"(jobs phase alone: {b['jobs'] / q['jobs']:.2f}x)")
    print(f"ceiling for any parallel launcher, from the best basic sweep's serial part (start-up "
          f"{b['start']:.1f} s + one warm-up {b['warm_up']:.1f} s + end {b['end']:.1f} s of {b['total']:.1f} s): "
          f"{ceiling(b, capacity):.2f}x at this machine's {capacity:.2f}x, {ceiling(b, 2.0):.2f}x with two free cores")
    speed_up, packed = b["total"] / q["total"], packing_ceiling(b, q, capacity)
    print(f"launcher=parallel reaches {speed_up / ceiling(b, capacity):.0%} of that ceiling; of the packing "
          f"ceiling (its own jobs, {q['busy']:.1f} s summed on one thread each, packed onto the workers "
          f"without gaps): {packed:.2f}x, reached {speed_up / packed:.0%}")
    if one_thread:
        o = min(one_thread, key=lambda t: t["total"])
        limit = one_thread_ceiling(b, o, capacity)
        print(f"ceiling for a launcher of one-thread jobs (Amdahl, the jobs as long as on the basic launcher at "
              f"runtime.threads=1: {o['jobs']:.1f} s against {b['jobs']:.1f} s on all cores, shared by this "
              f"machine's {capacity:.2f}x): {limit:.2f}x, reached {speed_up / limit:.0%}")


if __name__ == "__main__":
    main()
