"""Compiling the CPU kernels: once after an install, visibly, and side by side.

numba compiles each loop at its first call and caches the machine code on disk, so only the first
run after an install pays (with numba's parallel loops, some 10-30 seconds on a laptop-class CPU).
That run says so before it waits, and compiles the kernel groups it needs in parallel processes
(one per group, as many at once as it has cores), each of which writes numba's cache; this
process then loads them. The first job of a sweep also compiles the groups its other jobs may
need. `python -m rnnsweep.fast.compile` does it for every group (`make venv` runs it, so the
first `make run` starts warm).

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
    "lstm": ((cpu_rnn._lstm_forward, cpu_rnn._lstm_backward, cpu_rnn._zero_rows), lambda: cpu_rnn.warm_up(torch.nn.LSTM)),
    "gru": ((cpu_rnn._gru_forward, cpu_rnn._gru_backward, cpu_rnn._zero_rows), lambda: cpu_rnn.warm_up(torch.nn.GRU)),
    "rnn": ((cpu_rnn._rnn_forward, cpu_rnn._rnn_backward, cpu_rnn._zero_rows), lambda: cpu_rnn.warm_up(torch.nn.RNN)),
    "adam": ((row_adam.adam_rows, row_adam._catch_up, row_adam._merge_rows), lambda: optimizers.warm_up(lazy=False)),
    "lazy_adam": ((row_adam._merge_rows,), lambda: optimizers.warm_up(lazy=True)),
}
LABELS = {"lstm": "LSTM layer", "gru": "GRU layer", "rnn": "RNN layer", "adam": "deferred Adam",
          "lazy_adam": "lazy Adam"}
# Seconds each group took to compile from a cold cache on a 2-core machine (benchmarks/README.md):
# what the first run announces.
HELPER_TIMEOUT_S = 600
COLD_SECONDS = {"lstm": 11, "gru": 8, "rnn": 5, "adam": 11, "lazy_adam": 3}


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


def _compile_elsewhere(shares: list[list[str]]) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-m", "rnnsweep.fast.compile", "--here", *share],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for share in shares if share]


def _shares(groups: list[str], workers: int) -> list[list[str]]:
    """`groups` dealt to `workers` processes, longest first to the least loaded, so they end together."""
    shares: list[list[str]] = [[] for _ in range(max(1, min(workers, len(groups))))]
    for group in sorted(groups, key=lambda g: -COLD_SECONDS[g]):
        min(shares, key=lambda share: sum(COLD_SECONDS[g] for g in share)).append(group)
    return shares


def prepare(groups: list[str], *, also: list[str] = ()) -> None:
    """Make `groups`' loops ready in this process: loaded from numba's cache, or compiled (and
    cached), the cold ones side by side in parallel processes, with a line before and after.
    `also`: groups to compile into the cache as well when they are cold (a sweep's first job
    compiles what its other jobs may need), not loaded here."""
    needed = list(dict.fromkeys(groups))
    cold = [g for g in dict.fromkeys([*needed, *also]) if not is_cached(g)]
    shares = _shares(cold, _jobs()) if cold else [[]]
    if cold:
        own = ", ".join(LABELS[g] for g in cold if g in needed)
        extra = ", ".join(LABELS[g] for g in cold if g not in needed)
        names = f"{own}; for the sweep's other jobs also {extra}" if own and extra else own or extra
        log.info("compiling the CPU kernels (%s), once after an install: about %d s; later runs load them from %s",
                 names, max(sum(COLD_SECONDS[g] for g in share) for share in shares), cache_dir())
    started = time.perf_counter()
    # This process compiles the first share; helper processes the others at the same time.
    helpers = _compile_elsewhere(shares[1:])
    try:
        for group in shares[0]:
            GROUPS[group][1]()
    finally:
        for proc in helpers:
            try:
                proc.wait(timeout=HELPER_TIMEOUT_S)
            except subprocess.TimeoutExpired:  # stuck: this process compiles its groups itself below
                proc.kill()
    for group in needed:  # loads what is cached (or compiles it here, had a helper failed)
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
    prepare([], also=argv or list(GROUPS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
