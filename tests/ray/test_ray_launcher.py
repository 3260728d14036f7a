"""launcher=ray on a local Ray instance. Runs in its own environment: `make test-ray`."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="launcher=ray needs rnnsweep[ray]: make test-ray")

from conftest import TINY, run_cli  # noqa: E402


@pytest.mark.slow
def test_ray_launcher_runs_a_sweep_into_the_run_store(tmp_path):
    store, sweep = tmp_path / "store", tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith("runtime.threads")]  # the preset's num_cpus decides
    args = ["-m", "launcher=ray", "model=rnn,gru", "batching=padded,packed", *tiny, f"ledger.store={store}",
            f"hydra.sweep.dir={sweep}"]
    res = run_cli(args, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in store.glob("*/metrics.json")]
    assert len(records) == 4 and {r["status"] for r in records} == {"completed"}
    assert {r["env"]["threads"] for r in records} == {1}  # num_cpus, in each worker's first job too
    assert "4 completed (4 jobs)" in res.stdout
    again = run_cli(args, cwd=tmp_path, timeout=600)
    assert again.returncode == 0
    assert "4 skipped (4 jobs)" in again.stdout
