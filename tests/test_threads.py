"""The thread governor: it picks the faster of all threads and one, and switching changes no number."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY
from rnnsweep import config, run
from rnnsweep.data.batches import Batch
from rnnsweep.fast import threads as governor_module
from rnnsweep.fast.threads import ThreadGovernor


def simulate(monkeypatch, step_seconds, batches: int = 4000) -> ThreadGovernor:
    """Feed the governor batches whose i-th step takes `step_seconds(i, threads)` on a fake clock."""
    clock = [0.0]
    monkeypatch.setattr(governor_module.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(governor_module, "set_threads", lambda n: n)
    before = torch.get_num_threads()
    governor = ThreadGovernor(2)
    batch = Batch(torch.zeros(16, 40, dtype=torch.long), torch.full((16,), 40), torch.zeros(16, dtype=torch.long))
    try:
        for i, _ in enumerate(governor.govern(batch for _ in range(batches))):
            clock[0] += step_seconds(i, torch.get_num_threads())
    finally:
        torch.set_num_threads(before)
    return governor


def test_beside_a_neighbour_it_settles_on_one_thread(monkeypatch):
    g = simulate(monkeypatch, lambda i, threads: {1: 0.001, 2: 0.003}[threads])  # two threads three times slower: a shared CPU
    assert g.current == 1 and g.windows[2] <= 6 and g.windows[1] > 10 * g.windows[2]


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
