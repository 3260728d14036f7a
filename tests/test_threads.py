"""The thread governor: it picks the faster of all threads and one, and switching changes no number."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from conftest import TINY
from rnnsweep import config, run
from rnnsweep.data.batches import Batch
from rnnsweep.fast import threads as governor_module
from rnnsweep.fast.threads import IdleCores, ThreadGovernor, idle_and_total_ticks


def simulate(monkeypatch, step_seconds, batches: int = 4000, idle=lambda i: 1.0) -> ThreadGovernor:
    """Feed the governor batches whose i-th step takes `step_seconds(i, threads)` on a fake clock,
    the machine leaving `idle(i)` cores idle around step i (default: one, an idle 2-core machine)."""
    clock = [0.0]
    monkeypatch.setattr(governor_module.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(governor_module, "set_threads", lambda n: n)
    before = torch.get_num_threads()
    step = [0]
    governor = ThreadGovernor(2, idle_cores=lambda: idle(step[0]))
    batch = Batch(torch.zeros(16, 40, dtype=torch.long), torch.full((16,), 40), torch.zeros(16, dtype=torch.long))
    try:
        for i, _ in enumerate(governor.govern(batch for _ in range(batches))):
            step[0] = i
            clock[0] += step_seconds(i, torch.get_num_threads())
    finally:
        torch.set_num_threads(before)
    return governor


def test_beside_a_neighbour_it_settles_on_one_thread(monkeypatch):
    g = simulate(monkeypatch, lambda i, threads: {1: 0.001, 2: 0.003}[threads])  # two threads three times slower: a shared CPU
    assert g.current == 1 and g.windows[2] <= 6 and g.windows[1] > 10 * g.windows[2]


def test_with_no_idle_core_it_never_tries_more_threads(monkeypatch):
    """Beside a CPU-bound neighbour no try of two threads is made, not even one a lucky window would win."""
    readings = []
    g = simulate(monkeypatch, lambda i, threads: {1: 0.001, 2: 0.0005}[threads], idle=lambda i: readings.append(i) or 0.1)
    assert g.current == 1 and g.windows[2] == 0 and g.switches == 0 and g.held == len(readings) >= 4
    # held tries back off to one reading every HELD_LONGEST windows (/proc/stat costs on a big host)
    assert len(readings) <= g.windows[1] // governor_module.HELD_LONGEST + 4


def test_unknown_idle_cores_leave_the_tries_as_scheduled(monkeypatch):
    g = simulate(monkeypatch, lambda i, threads: {1: 0.0013, 2: 0.001}[threads], idle=lambda i: None)
    assert g.current == 2 and g.held == 0


def test_a_core_freed_midway_is_tried_and_taken(monkeypatch):
    g = simulate(monkeypatch, lambda i, threads: {1: 0.0013, 2: 0.001}[threads], batches=20000,
                 idle=lambda i: 0.0 if i < 5000 else 0.9)
    assert g.current == 2 and g.held > 0 and g.switches == 1


def test_its_own_tries_of_more_threads_do_not_count_as_a_busy_machine(monkeypatch):
    """During a try of two threads this process keeps every core busy itself; the reading that
    decides the next try covers one-thread time only, so on an idle machine no try is held back."""
    tried = {"seen": 0}
    governor: list[ThreadGovernor] = []

    def idle(i):  # a meter that sees the cores busy whenever a try ran since its last reading
        probes = governor[0].windows[2] if governor else 0
        busy, tried["seen"] = probes > tried["seen"], probes
        return 0.0 if busy else 1.0

    original_init = ThreadGovernor.__init__

    def keep(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        governor.append(self)

    monkeypatch.setattr(ThreadGovernor, "__init__", keep)
    g = simulate(monkeypatch, lambda i, threads: {1: 0.001, 2: 0.002 if i < 3000 else 0.0005}[threads],
                 batches=30000, idle=idle)
    assert g.windows[2] >= 3 and g.held == 0 and g.current == 2


def test_on_an_idle_machine_it_settles_on_all_threads(monkeypatch):
    g = simulate(monkeypatch, lambda i, threads: {1: 0.0013, 2: 0.001}[threads])
    assert g.current == 2 and g.switches == 1 and g.windows[2] > 5 * g.windows[1]  # probes of 1 thread: short, rarer


def test_a_machine_that_gets_busy_midway_is_followed(monkeypatch):
    idle, busy = {1: 0.0013, 2: 0.001}, {1: 0.0013, 2: 0.004}
    g = simulate(monkeypatch, lambda i, threads: (busy if i > 20000 else idle)[threads], batches=60000)
    assert g.current == 1 and g.switches == 2


def test_switching_threads_mid_run_changes_no_number(compose_cfg, tmp_path, monkeypatch):
    """Switching at every step between two threads and one, the run's metrics are those of a run on
    one thread, byte for byte."""
    def alternate(self, seconds_per_token):
        self.current = 1 if torch.get_num_threads() == self.most else self.most
        self.switches += 1
        self._use(self.current)

    monkeypatch.setattr(governor_module, "WINDOW_S", 0.0)
    monkeypatch.setattr(ThreadGovernor, "_window_done", alternate)
    overrides = [*TINY, "model=lstm", "data.train_size=600", "train.epochs=2", "runtime.device=cpu"]
    fixed = config.validate(compose_cfg([*overrides, "runtime.threads=1"]))
    governed = config.validate(compose_cfg([*overrides, "runtime.threads=0"]))
    one = run.run_job(fixed, run.Job(dir=tmp_path / "one"), tmp_path / "store_one", raise_on_failure=True)
    job = run.Job(dir=tmp_path / "gov", threads=2)
    gov = run.run_job(governed, job, tmp_path / "store_gov", raise_on_failure=True)
    assert gov.record["env"]["thread_governor"]["switches"] >= 20
    untimed = [{k: v for k, v in r.record["metrics"].items() if k not in ("wall_s", "train/seconds",
                                                                            "train/examples_per_s")}
               for r in (one, gov)]
    assert json.dumps(untimed[0]) == json.dumps(untimed[1])
    assert one.job["id"] == gov.job["id"]  # one identity: the thread count is not part of it here


@pytest.mark.parametrize("compiled", [False])
def test_no_governor_for_torchs_own_layers(compose_cfg, tmp_path, compiled):
    settings = config.validate(compose_cfg([*TINY, "model=gru", "runtime.threads=0", "runtime.device=cpu",
                                            f"runtime.compiled_rnn={str(compiled).lower()}"]))
    result = run.run_job(settings, run.Job(dir=tmp_path / "j", threads=2), tmp_path / "store", raise_on_failure=True)
    assert "thread_governor" not in result.record["env"]  # there the thread count changes results


STAT = """cpu  100 0 50 800 50 0 0 0 0 0
cpu0 40 0 20 420 20 0 0 5 7 3
cpu1 60 0 30 380 30 0 0 0 0 0
intr 1 2 3
"""


def test_idle_ticks_are_read_per_core_and_only_for_the_cores_given():
    # idle + iowait over user..steal; guest and guest_nice are already inside user and nice
    assert idle_and_total_ticks(STAT, None) == (850, 1005, 2)
    assert idle_and_total_ticks(STAT, {"cpu1"}) == (410, 500, 1)
    assert idle_and_total_ticks(STAT, {"cpu7"}) is None
    assert idle_and_total_ticks("cpu0 1 2\n", None) is None


def _stat(path, *cores: tuple[int, int]) -> None:
    """A /proc/stat whose per-core lines have `busy` user ticks and `idle` idle ticks each."""
    path.write_text("cpu  0 0 0 0 0 0 0 0 0 0\n" + "".join(
        f"cpu{i} {busy} 0 0 {idle} 0 0 0 0 0 0\n" for i, (busy, idle) in enumerate(cores)))


def test_idle_cores_are_counted_in_cores_between_two_readings(tmp_path):
    stat = tmp_path / "stat"
    _stat(stat, (0, 0), (0, 0))
    meter = IdleCores(str(stat), affinity={0, 1})
    _stat(stat, (100, 0), (50, 50))  # one core busy, the other half idle
    assert meter() == pytest.approx(0.5)
    _stat(stat, (200, 0), (50, 150))  # since the last reading: one core busy, the other idle
    assert meter() == pytest.approx(1.0)
    assert meter() is None  # no tick since
    _stat(stat, (300, 0), (250, 150), (0, 100))  # a core more, not this process's: not counted
    assert meter() == pytest.approx(0.0)


def test_idle_cores_read_only_this_processs_cores_or_all_where_the_file_numbers_its_own(tmp_path):
    stat = tmp_path / "stat"
    _stat(stat, (0, 0), (0, 0))
    mine, renumbered = IdleCores(str(stat), affinity={1}), IdleCores(str(stat), affinity={4, 5})
    _stat(stat, (100, 0), (0, 100))
    assert mine() == pytest.approx(1.0)  # cpu1 alone, idle
    assert renumbered() == pytest.approx(1.0)  # cpu4 and cpu5 not listed (lxcfs): both lines, one core idle
    _stat(stat, (200, 0), (0, 200), (0, 100))  # a core more (hot-plugged): no reading across the change
    assert renumbered() is None
    _stat(stat, (300, 0), (0, 300), (0, 200))
    assert renumbered() == pytest.approx(2.0)
    missing = IdleCores(str(tmp_path / "absent"))
    assert missing() is None


def _cpu_quota() -> float | None:
    """Cores' worth of CPU time cgroup v2 grants this process, or None (no quota, or unknown)."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


@pytest.mark.skipif(not os.path.exists("/proc/stat") or not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_idle_cores_fall_when_spinning_processes_keep_every_core_busy():
    """On the real /proc/stat: with every core this process may use kept busy by a spinning
    process pinned to it, the reading is near zero."""
    cores = sorted(os.sched_getaffinity(0))
    quota = _cpu_quota()
    if quota is not None and quota < len(cores):
        pytest.skip(f"a CPU quota of {quota:g} cores leaves part of the {len(cores)} cores idle whatever spins")
    spin = "import os, sys\nos.sched_setaffinity(0, {%d})\nprint('pinned', flush=True)\nwhile True: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin % c], stdout=subprocess.PIPE, text=True) for c in cores]
    try:
        for s in spinners:
            assert s.stdout.readline().strip() == "pinned"
        time.sleep(0.2)
        meter = IdleCores()  # from here on every core spins
        time.sleep(0.5)
        busy = meter()
    finally:
        for s in spinners:
            s.kill()
            s.wait()
            s.stdout.close()
    assert busy is not None and 0.0 <= busy < 0.35 * len(cores)
