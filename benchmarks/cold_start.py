"""Time to the first training step: cold (nothing compiled, nothing cached) and warm.

    python benchmarks/cold_start.py               # single runs and a 3-job sweep, 2 repeats
    python benchmarks/cold_start.py --repeats 3

Each measurement is a fresh `rnnsweep` process whose jobs train one step (train.epoch_size = one
batch) and evaluate a few rows, so its wall time is the time to the first step plus well under a
second. `cold`: an empty numba cache (NUMBA_CACHE_DIR) and an empty data cache, as the first run
after an install; `warm`: both filled by the run before. Cold runs go both ways, alternating:
compiling the kernel groups one after the other in the run's own process
(RNNSWEEP_COMPILE_JOBS=1, what every release before this one did) and side by side in parallel
processes (the default). The sweep is `model=rnn,lstm,gru` (three kernel groups, plus deferred
Adam's) with the basic launcher; per job is its wall time over three.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ONE_STEP = ["data.train_size=4000", "data.test_size=64", "train.epochs=1", "train.batch_size=32",
            "train.epoch_size=32", "train.eval_batch_size=64", "logger=none", "runtime.progress=off"]


def timed(args: list[str], work: Path, numba_cache: Path, data_cache: Path, compile_jobs: str | None) -> float:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_cache), "RNNSWEEP_CACHE_DIR": str(data_cache)}
    env.pop("RNNSWEEP_COMPILE_JOBS", None)
    if compile_jobs is not None:
        env["RNNSWEEP_COMPILE_JOBS"] = compile_jobs
    store = work / f"store-{time.monotonic_ns()}"  # a fresh store: nothing is skipped
    started = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "rnnsweep", *args, *ONE_STEP, f"ledger.store={store}",
                          f"hydra.run.dir={store}/run", f"hydra.sweep.dir={store}/sweep"],
                         cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if res.returncode != 0:
        sys.exit(f"rnnsweep {' '.join(args)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    cases = {"single run (model=lstm)": (["model=lstm"], 1), "sweep, per job (model=rnn,lstm,gru)":
             (["-m", "model=rnn,lstm,gru"], 3)}
    print(f"{os.cpu_count()} cores reported; median of {args.repeats} alternating repeats; seconds to the "
          "first training step (the whole one-step run)\n")
    print("| case | cold, serial compile (before) | cold, parallel compile (now) | warm |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for label, (run_args, jobs) in cases.items():
            times: dict[str, list[float]] = {"serial": [], "parallel": [], "warm": []}
            for k in range(args.repeats):
                for way, jobs_env in (("serial", "1"), ("parallel", None)):
                    cache = work / f"{way}-{k}-{len(run_args)}"
                    times[way].append(timed(run_args, work, cache / "numba", cache / "data", jobs_env) / jobs)
                times["warm"].append(timed(run_args, work, cache / "numba", cache / "data", None) / jobs)
            med = {way: statistics.median(ts) for way, ts in times.items()}
            print(f"| {label} | {med['serial']:.1f} s | {med['parallel']:.1f} s "
                  f"({med['serial'] / med['parallel']:.2f}x) | {med['warm']:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
