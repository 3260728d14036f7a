"""How many threads the compiled layers train on: all the run may use, or one, whichever is faster now.

A batch of a small recurrent model is split over threads by sequence, in one parallel region per
layer and direction. On an idle machine two threads beat one. Beside anything else that wants a
core (a browser, another job, a second sweep), one of the two threads waits for its core at every
region's end, and two threads lose to one by a factor of three or more. Which case holds changes
while a run trains, so the governor measures: it starts on one thread, times the steps in
windows, tries the other setting for a short window now and then (less often each time it
loses, at once again after a switch), and keeps the faster. From one thread it tries more only
when the machine left enough of its cores idle since the last decision (read from /proc/stat
where there is one): beside a CPU-bound neighbour every try of more threads would lose, and a
lost try, or a switch won on a lucky window, costs far more than the window it lasts. (A CPU
quota is not read: under one the idle cores may be ones the process cannot use, and the tries
decide, as without the reading.) The compiled layers compute every sequence on one thread
whatever the count (tested bit for bit), so switching changes no number;
with torch's own layers the count can change results, and the governor is not used.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterable, Iterator

import torch

from .cpu_rnn import set_threads

WINDOW_S = 0.1  # seconds of training per measurement of the chosen setting: dozens of scheduler slices
PROBE_S = 0.03  # seconds per try of the other setting (short: when it loses, it loses by a lot)
FIRST_PROBE = 1  # windows before the first try of the other setting
LAST_PROBE = 256  # the longest wait between tries while the choice keeps winning (about 25 s)
MARGIN = 1.05  # the other setting must be this much faster to take over
# From one thread, `most` threads are tried only if this share of the `most - 1` extra cores they
# need sat idle since the last decision: beside a busy core they straggle at every region's end.
IDLE_SHARE = 0.5
HELD_LONGEST = 8  # windows between readings while tries are held (a big host's /proc/stat is long)


def _per_core_lines(stat: str) -> Iterator[tuple[str, str]]:
    """(name, counters) of each of /proc/stat's per-core lines (cpu0, cpu1, ..., not the total)."""
    for line in stat.splitlines():
        name, _, counters = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit():
            yield name, counters


def idle_and_total_ticks(stat: str, cpus: set[str] | None) -> tuple[int, int, int] | None:
    """(idle ticks, all ticks, cores counted) summed over /proc/stat's per-core lines named in
    `cpus` (all of them if None). Idle counts idle and iowait; all counts user, nice, system,
    idle, iowait, irq, softirq and steal (a core the hypervisor takes is not idle; guest time is
    already in user and nice)."""
    idle = total = cores = 0
    for name, counters in _per_core_lines(stat):
        if cpus is not None and name not in cpus:
            continue
        ticks = [int(t) for t in counters.split()[:8]]
        if len(ticks) < 5:
            return None
        idle, total, cores = idle + ticks[3] + ticks[4], total + sum(ticks), cores + 1
    return (idle, total, cores) if cores else None


class IdleCores:
    """How many of the cores this process may run on sat idle between one call and the one before
    (the first call: since construction), averaged; None where that cannot be read."""

    def __init__(self, path: str = "/proc/stat", affinity: set[int] | None = None):
        self.path = path
        try:
            cores = affinity if affinity is not None else os.sched_getaffinity(0)
            self.cpus: set[str] | None = {f"cpu{i}" for i in cores}
        except (AttributeError, OSError):  # no affinity outside Linux: every core
            self.cpus = None
        stat = self._text()
        if self.cpus is not None and stat is not None and not self.cpus <= {n for n, _ in _per_core_lines(stat)}:
            # A container's /proc/stat (lxcfs) numbers its own cores from 0, whatever the host
            # calls them: the file lists those cores alone, so all of its lines are ours.
            self.cpus = None
        self.last = self._ticks(stat)

    def _text(self) -> str | None:
        try:
            with open(self.path) as f:
                return f.read()
        except OSError:
            return None

    def _ticks(self, stat: str | None) -> tuple[int, int, int] | None:
        try:
            return idle_and_total_ticks(stat, self.cpus) if stat is not None else None
        except ValueError:
            return None

    def __call__(self) -> float | None:
        now, last = self._ticks(self._text()), self.last
        self.last = now
        if now is None or last is None or now[1] <= last[1] or now[2] != last[2]:
            return None  # unreadable, no tick since, or the cores changed
        return now[2] * (now[0] - last[0]) / (now[1] - last[1])


class ThreadGovernor:
    """Chooses between `most` threads and one, window by window, for the batches it is given."""

    def __init__(self, most: int, idle_cores: Callable[[], float | None] | None = None):
        self.most = most
        # Cores left idle since its last call; None: unknown, and `most` is tried as scheduled.
        self.idle_cores = idle_cores or IdleCores()
        # One thread first: where the machine is shared that is the right choice, and where it
        # is idle the first try of `most` comes one window later.
        self.current = 1
        self.probing = False  # this window runs on the other setting
        self.until_probe = FIRST_PROBE
        self.interval = FIRST_PROBE
        self.rate: dict[int, float] = {}  # threads -> seconds per token, the latest window
        self.switches = 0
        self.windows = {most: 0, 1: 0}
        self.held = 0  # tries of `most` not made: too few idle cores
        self._use(1)

    def _use(self, threads: int) -> None:
        torch.set_num_threads(threads)
        set_threads(threads)

    def _window_done(self, seconds_per_token: float) -> None:
        threads = torch.get_num_threads()  # what this window trained on
        self.rate[threads] = seconds_per_token
        self.windows[threads] = self.windows.get(threads, 0) + 1
        if self.probing:  # the other setting's window: keep it if it was clearly faster
            self.probing = False
            if seconds_per_token * MARGIN < self.rate[self.current]:
                self.current, self.interval = threads, 2 * FIRST_PROBE
                self.switches += 1
            else:  # a clear loss is not worth trying again soon
                clear = seconds_per_token > 1.5 * self.rate[self.current]
                self.interval = min((4 if clear else 2) * self.interval, LAST_PROBE)
            self.until_probe = self.interval
            self._use(self.current)
            if self.current == 1:
                self.idle_cores()  # the next reading covers one-thread time only
            return
        self.until_probe -= 1
        if self.until_probe > 0:
            return
        if self.current == 1:
            idle = self.idle_cores()
            if idle is not None and idle < IDLE_SHARE * (self.most - 1):
                self.held += 1  # the cores `most` would need are busy: look again an interval later
                self.interval = max(self.interval, min(2 * self.interval, HELD_LONGEST))
                self.until_probe = self.interval
                return
        self.probing = True
        self._use(1 if self.current == self.most else self.most)

    def govern(self, batches: Iterable) -> Iterator:
        """The batches, unchanged; between them, the thread count is measured and chosen."""
        started, tokens = None, 0
        for batch in batches:
            now = time.perf_counter()
            if started is None:
                started = now
            elif now - started >= (PROBE_S if self.probing else WINDOW_S) and tokens:
                self._window_done((now - started) / tokens)
                started, tokens = time.perf_counter(), 0
            tokens += batch.ids.numel()
            yield batch
        # An epoch's last, partial window is not measured: evaluation follows, not training.
