"""The same sweep on Hydra's own launcher and sweeper plugins: joblib, submitit, Optuna."""

from __future__ import annotations

import json
import os
import signal

import pytest
import yaml

from pathlib import Path

from conftest import TINY, entries, run_cli
from test_sweeps import jobs, start, wait_for
from wandb_records import read_offline_run

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

FOUR = ["model=rnn,gru", "batching=padded,packed"]
SMALL = [o for o in TINY if not o.startswith(("logger=", "runtime.threads"))]
TESTS = str(Path(__file__).resolve().parent)


@pytest.mark.slow
def test_parallel_launcher_runs_jobs_in_workers_with_their_own_wandb_runs(tmp_path):
    sweep, store = tmp_path / "sweep", tmp_path / "store"
    probe = tmp_path / "parent_imports.json"
    res = run_cli(["-m", "launcher=parallel", *FOUR, *SMALL, "logger=wandb", f"ledger.store={store}",
                   f"hydra.sweep.dir={sweep}", "+hydra.callbacks.probe._target_=sweep_probe.ParentImports",
                   f"+hydra.callbacks.probe.out={probe}"], cwd=tmp_path, PYTHONPATH=TESTS)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Joblib.Parallel" in res.stdout  # Hydra's joblib launcher ran the jobs
    # The parent only launches, summarizes and reports: torch's import (seconds) is the workers' alone.
    assert json.loads(probe.read_text()) == []
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert [r["status"] for r in records] == ["completed"] * 4
    workers = min(4, os.cpu_count() or 1)
    assert {r["env"]["threads"] for r in records} == {max(1, (os.cpu_count() or 1) // workers)}
    ids = set()
    for r in records:
        (run_dir,) = Path(r["wandb"]["dir"]).glob("offline-run-*")
        run = read_offline_run(run_dir)
        assert run.run_id == r["wandb"]["id"] and run.summary["test/acc"] == pytest.approx(r["metrics"]["test/acc"])
        ids.add(run.run_id)
    assert len(ids) == 4
    assert (sweep / "report.md").is_file()
    assert "leaked semaphore" not in res.stderr  # its workers are killed at the end; they hold none


@pytest.mark.slow
def test_submitit_local_sweep_completes_and_an_interrupted_one_resumes(tmp_path):
    store, sweep = tmp_path / "store", tmp_path / "sweep"
    first = run_cli(["-m", "launcher=submitit_local", *FOUR, *SMALL, "logger=none", f"ledger.store={store}",
                     f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    records = [json.loads(p.read_text()) for p in store.glob("*/metrics.json")]
    assert len(records) == 4
    assert all(j["status"] == "completed" for j in jobs(sweep))
    assert {r["env"]["threads"] for r in records} == {1}  # cpus_per_task, though each job is a fresh process
    assert list(sweep.glob(".submitit/*/*_log.out"))  # the jobs ran as submitit jobs

    store2, sweep2 = tmp_path / "store2", tmp_path / "sweep2"
    args = ["-m", "launcher=submitit_local", *FOUR, "data.train_size=2000", "data.test_size=100", "train.epochs=4",
            "model.embed_dim=16", "model.hidden_dim=16", "runtime.progress=off", "logger=none",
            f"ledger.store={store2}", f"hydra.sweep.dir={sweep2}"]
    proc = start(args, tmp_path)
    wait_for(lambda: any(store2.glob("*/checkpoint.pt")), proc)
    os.killpg(proc.pid, signal.SIGKILL)  # submitit's local jobs are in the sweep's process group
    proc.wait()
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    outcomes = [j["outcome"] for j in jobs(sweep2)]
    assert "resumed" in outcomes and all(j["status"] == "completed" for j in jobs(sweep2))
    assert len(entries(store2)) == 4 and not list(store2.glob("*/checkpoint.pt"))


@pytest.mark.slow
def test_optuna_search_reports_its_best_trial_and_reuses_the_store(tmp_path):
    store, sweep = tmp_path / "store", tmp_path / "sweep"
    searched = [o for o in SMALL if not o.startswith("model.hidden_dim")]  # a fixed value would not be searched
    args = ["-m", "search=optuna", "hydra.sweeper.n_trials=8", "hydra.sweeper.n_jobs=2", *searched, "train.epochs=2",
            "logger=none", f"ledger.store={store}", f"hydra.sweep.dir={sweep}"]
    res = run_cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "setup plugin alembic" not in res.stdout + res.stderr  # optuna's database layer keeps quiet
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"optimizer.lr", "model.hidden_dim", "topology.num_layers", "topology.dropout"}
    records = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert len(records) == 8
    assert best["best_value"] == pytest.approx(max(r["metrics"]["val/acc"] for r in records))
    trained = len(entries(store))

    again = run_cli(args[:-1] + [f"hydra.sweep.dir={tmp_path / 'again'}"], cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {j["outcome"] for j in jobs(tmp_path / "again")} == {"skipped"}  # same seed, same trials
    assert len(entries(store)) == trained
    assert yaml.safe_load((tmp_path / "again" / "optimization_results.yaml").read_text())["best_value"] == best["best_value"]


TIMING = ("train/examples_per_s", "train/seconds", "wall_s")


def _results(store: Path) -> dict[str, dict]:
    """Per run id: status, metrics and history without the timing figures, and the thread count."""
    out = {}
    for path in store.glob("*/metrics.json"):
        r = json.loads(path.read_text())
        out[r["id"]] = {"status": r["status"], "threads": r["env"]["threads"],
                        "metrics": {k: v for k, v in r["metrics"].items() if k not in TIMING},
                        "history": [{k: v for k, v in h.items() if k not in TIMING} for h in r["history"]]}
    return out


@pytest.mark.slow
def test_every_launcher_trains_the_same_numbers_whatever_threads_each_job_gets(tmp_path):
    """The basic launcher gives a job every core, launcher=parallel one core per worker: each run
    of the grid has the same metrics and history, to the bit, under both."""
    grid = ["model=rnn,gru,lstm", "topology=uni,bi", *SMALL, "train.epochs=2", "data.train_size=400", "logger=none"]
    results = {}
    for launcher in ("basic", "parallel"):
        res = run_cli(["-m", f"launcher={launcher}", *grid, f"ledger.store={tmp_path / launcher}",
                       f"hydra.sweep.dir={tmp_path / ('sweep-' + launcher)}"], cwd=tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
        results[launcher] = _results(tmp_path / launcher)
    basic, parallel = results["basic"], results["parallel"]
    assert len(basic) == 6 and basic.keys() == parallel.keys()
    if (os.cpu_count() or 1) > 1:  # the point of the test: different thread counts per job
        assert {r["threads"] for r in basic.values()} != {r["threads"] for r in parallel.values()}
    for run_id in basic:
        assert basic[run_id]["status"] == parallel[run_id]["status"] == "completed"
        assert basic[run_id]["metrics"] == parallel[run_id]["metrics"], run_id
        assert basic[run_id]["history"] == parallel[run_id]["history"], run_id
