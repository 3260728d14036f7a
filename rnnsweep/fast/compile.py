"""Compiling the CPU kernels: once after an install, visibly, and side by side.

numba compiles each loop at its first call and caches the machine code on disk, so only the first
run after an install pays (with numba's parallel loops, some 10-30 seconds on a laptop-class CPU).
That run says so before it waits, and compiles the kernel groups it needs in parallel processes
(one per group, as many at once as it has cores), each of which writes numba's cache; this
process then loads them. `python -m rnnsweep.fast.compile` does it for every group (`make venv`
runs it, so the first `make run` starts warm).

RNNSWEEP_COMPILE_JOBS=1 compiles in this process alone, one group after the other.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from typing import Callable

import torch

from . import cpu_rnn, optimizers, row_adam

log = logging.getLogger(__name__)

# Each group's loops, and what calls each once on tiny tensors (the signatures a run uses).
GROUPS: dict[str, tuple[tuple, Callable[[], None]]] = {
    "lstm": ((cpu_rnn._lstm_forward, cpu_rnn._lstm_backward), lambda: cpu_rnn.warm_up(torch.nn.LSTM)),
    "gru": ((cpu_rnn._gru_forward, cpu_rnn._gru_backward), lambda: cpu_rnn.warm_up(torch.nn.GRU)),
    "rnn": ((cpu_rnn._rnn_forward, cpu_rnn._rnn_backward), lambda: cpu_rnn.warm_up(torch.nn.RNN)),
    "adam": ((row_adam.adam_rows, row_adam.catch_up, row_adam.catch_up_all, row_adam._merge_rows),
             lambda: optimizers.warm_up(lazy=False)),
    "lazy_adam": ((row_adam._merge_rows,), lambda: optimizers.warm_up(lazy=True)),
}
LABELS = {"lstm": "LSTM layer", "gru": "GRU layer", "rnn": "RNN layer", "adam": "deferred Adam",
          "lazy_adam": "lazy Adam"}
# Seconds each group took to compile from a cold cache on a 2-core machine (benchmarks/README.md):
# what the first run announces.
HELPER_TIMEOUT_S = 600
COLD_SECONDS = {"lstm": 12, "gru": 7, "rnn": 3, "adam": 5, "lazy_adam": 1}


def is_cached(group: str) -> bool:
    """Whether numba's disk cache holds every loop of `group` (for this source and numba version).
    Asks numba's cache index; where that cannot be read, the answer is yes (nothing announced)."""
    try:
        return all(len(f._cache._cache_file._load_index()) > 0 for f in GROUPS[group][0])
    except Exception:  # noqa: BLE001 (numba's private cache API changed: say nothing, compile as usual)
        return True


def cache_dir() -> str:
    try:
        return str(GROUPS["lstm"][0][0]._cache._cache_path)
    except Exception:  # noqa: BLE001
        return "numba's cache"


def _jobs() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, int(os.environ.get("RNNSWEEP_COMPILE_JOBS", cores)))


def _compile_elsewhere(groups: list[str]) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-m", "rnnsweep.fast.compile", "--here", group],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for group in groups]


def prepare(groups: list[str]) -> None:
    """Make `groups`' loops ready in this process: loaded from numba's cache, or compiled (and
    cached), the cold ones side by side in parallel processes, with a line before and after."""
    cold = [g for g in dict.fromkeys(groups) if not is_cached(g)]
    if cold:
        names = ", ".join(LABELS[g] for g in cold)
        log.info("compiling the CPU kernels (%s), once after an install: about %d s; later runs load them from %s",
                 names, max(COLD_SECONDS[g] for g in cold) if _jobs() > 1 else sum(COLD_SECONDS[g] for g in cold),
                 cache_dir())
    started = time.perf_counter()
    # Up to jobs - 1 cold groups compile in processes of their own while this one does the rest.
    elsewhere = cold[1:_jobs()]
    helpers = _compile_elsewhere(elsewhere)
    try:
        for group in dict.fromkeys(groups):
            if group not in elsewhere:
                GROUPS[group][1]()
    finally:
        for proc in helpers:
            try:
                proc.wait(timeout=HELPER_TIMEOUT_S)
            except subprocess.TimeoutExpired:  # stuck: this process compiles that group itself below
                proc.kill()
    for group in elsewhere:  # loads what the helpers cached (or compiles it here, had one failed)
        GROUPS[group][1]()
    if cold:
        log.info("compiled the CPU kernels in %.0f s", time.perf_counter() - started)


def main(argv: list[str]) -> int:
    """`python -m rnnsweep.fast.compile [GROUP ...]`: compile (every) group into numba's cache."""
    if argv[:1] == ["--here"]:  # one group, in this process (what prepare's helper processes run)
        for group in argv[1:]:
            GROUPS[group][1]()
        return 0
    unknown = [g for g in argv if g not in GROUPS]
    if unknown:
        print(f"rnnsweep.fast.compile: unknown group {', '.join(unknown)} (choose from {', '.join(GROUPS)})",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepare(argv or list(GROUPS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
