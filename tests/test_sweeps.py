"""Sweeps that survive: SIGKILL mid-training, failing and diverging jobs, relaunching a finished sweep.

Real processes, real signals: the sweep runs as `python -m rnnsweep -m ...` in its own process
group, and the whole group is killed while a job is inside its training loop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import clean_env, entries, run_cli, wandb_id
from wandb_records import read_offline_run

TIMING = {"wall_s", "train/examples_per_s", "train/seconds"}
GRID = ["model=rnn,lstm,gru", "batching=padded,packed"]
SMALL = ["data.train_size=2000", "data.test_size=100", "train.epochs=3", "model.embed_dim=16", "model.hidden_dim=16",
         "runtime.progress=off", "runtime.threads=1", "runtime.device=cpu"]


def results(store: Path) -> dict[str, dict]:
    out = {}
    for path in store.glob("*/metrics.json"):
        rec = json.loads(path.read_text())
        out[rec["id"]] = {
            "status": rec["status"],
            "metrics": {k: v for k, v in rec["metrics"].items() if k not in TIMING},
            "history": [{k: v for k, v in h.items() if k not in TIMING} for h in rec["history"]],
        }
    return out


def jobs(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/job.json"))]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rnnsweep", *args], cwd=cwd, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"sweep ended before the kill point:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError("kill point not reached in time")
        time.sleep(0.01)


@pytest.mark.slow
def test_a_killed_sweep_resumes_and_ends_with_the_uninterrupted_results(tmp_path):
    reference = run_cli(["-m", *GRID, *SMALL, "logger=none", f"ledger.store={tmp_path / 'ref_store'}",
                         f"hydra.sweep.dir={tmp_path / 'ref_sweep'}"], cwd=tmp_path)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    expected = results(tmp_path / "ref_store")
    assert len(expected) == 6 and {r["status"] for r in expected.values()} == {"completed"}

    store, sweep = tmp_path / "store", tmp_path / "sweep"
    args = ["-m", *GRID, *SMALL, "logger=none", f"ledger.store={store}", f"hydra.sweep.dir={sweep}"]
    proc = start(args, tmp_path)
    # Kill once two jobs are done and the third has written its epoch-1 checkpoint: it is then
    # inside epoch 2's training loop.
    wait_for(lambda: len(jobs(sweep)) >= 2 and any(store.glob("*/checkpoint.pt")), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (cut,) = [p.parent for p in store.glob("*/checkpoint.pt")]
    assert json.loads((cut / "metrics.json").read_text())["status"] == "running"

    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    outcomes = sorted(j["outcome"] for j in jobs(sweep))
    assert outcomes == ["resumed", "skipped", "skipped", "trained", "trained", "trained"]
    resumed = json.loads((cut / "metrics.json").read_text())
    assert resumed["resumed_from_epoch"] == 1
    assert results(store) == expected  # same ids, same metrics: none lost, none duplicated
    assert len(entries(store)) == 6
    assert not list(store.glob("*/checkpoint.pt"))

    # A finished sweep launched again trains nothing and leaves the records untouched.
    before = {p: p.read_bytes() for p in store.glob("*/metrics.json")}
    third = run_cli(args, cwd=tmp_path)
    assert third.returncode == 0
    assert [j["outcome"] for j in jobs(sweep)] == ["skipped"] * 6
    assert {p: p.read_bytes() for p in store.glob("*/metrics.json")} == before
    assert "6 skipped (6 jobs)" in third.stdout


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="runtime.device=cuda must be invalid here")
def test_failing_and_diverging_jobs_do_not_stop_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    good = tmp_path / "good.csv"
    good.write_text("text,label\n" + "".join(f"{'alpha' if i % 2 else 'beta'} words {i},{i % 2}\n" for i in range(240)))
    missing = tmp_path / "missing.csv"
    res = run_cli(["-m", "data=csv", f"data.train={good},{missing}", "optimizer.lr=0.1,1e10", "model=bow",
                   "optimizer=sgd", "train.grad_clip=null", "logger.log_every=1", "train.epochs=1", "logger=none",
                   "runtime.progress=off", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert res.returncode == 1
    by_status = {}
    for j in jobs(sweep):
        by_status.setdefault(j["status"], []).append(j)
    assert sorted(by_status) == ["completed", "diverged", "failed"]
    (completed,) = by_status["completed"]
    assert f"data.train={good}" in completed["overrides"] and "optimizer.lr=0.1" in completed["overrides"]
    assert len(by_status["failed"]) == 2 and len(by_status["diverged"]) == 1
    assert all(f"{missing}: no such file" in j["error"] for j in by_status["failed"])
    assert "1 completed, 1 diverged, 2 failed (4 jobs)" in res.stdout
    assert "2 job(s) failed" in res.stderr
    assert (sweep / "report.md").is_file()

    # A device this machine lacks is an invalid combination, reported with its reason, not a failure.
    ok = run_cli(["-m", "runtime.device=cpu,cuda", "model=bow", "data.train_size=200", "data.test_size=40",
                  "train.epochs=1", "logger=none", f"hydra.sweep.dir={tmp_path / 's2'}"], cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert sorted(j["outcome"] for j in jobs(tmp_path / "s2")) == ["invalid", "trained"]
    assert "no CUDA device is visible" in ok.stdout


@pytest.mark.slow
def test_a_resumed_run_continues_its_offline_wandb_run(tmp_path):
    store = tmp_path / "store"
    args = [*SMALL, "train.epochs=4", "data.train_size=3000", "logger=wandb", f"ledger.store={store}"]
    proc = start(args, tmp_path)
    wait_for(lambda: any(store.glob("*/checkpoint.pt")), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    (entry,) = entries(store)
    record = json.loads((entry / "metrics.json").read_text())
    assert record["status"] == "completed" and record["resumed_from_epoch"] >= 1
    dirs = sorted((entry / "wandb").glob("offline-run-*"))
    assert len(dirs) == 2  # the cut attempt and its continuation ...
    assert {wandb_id(d) for d in dirs} == {record["wandb"]["id"]}  # ... one W&B run ...
    assert record["wandb"]["id"].startswith(record["id"] + "-")  # ... named after the run and its store
    runs = [read_offline_run(d) for d in dirs]
    assert runs[-1].run_id == record["wandb"]["id"]
    assert runs[-1].summary["test/acc"] == pytest.approx(record["metrics"]["test/acc"])
    epochs = [h["epoch"] for h in runs[-1].history if "val/acc" in h]
    assert epochs == list(range(record["resumed_from_epoch"] + 1, 5))


@pytest.mark.slow
def test_a_sweep_dir_used_again_reports_only_the_new_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    small = ["data.train_size=120", "data.test_size=40", "train.epochs=1", "logger=none", "runtime.progress=off",
             f"hydra.sweep.dir={sweep}"]
    assert run_cli(["-m", "model=rnn,gru,lstm", *small], cwd=tmp_path).returncode == 0
    second = run_cli(["-m", "model=bow", *small], cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 completed (1 jobs)" in second.stdout  # jobs 1 and 2 of the first sweep are not this sweep's
    assert (sweep / "runs.csv").read_text().count("\n") == 2  # header + the one run


@pytest.mark.slow
def test_a_run_cut_before_its_first_checkpoint_starts_over_in_the_same_wandb_run(tmp_path):
    store = tmp_path / "store"
    args = [*SMALL, "train.epochs=2", "data.train_size=3000", "logger=wandb", f"ledger.store={store}"]
    proc = start(args, tmp_path)

    def training_without_checkpoint() -> bool:
        records = list(store.glob("*/metrics.json"))
        return bool(records) and '"running"' in records[0].read_text() and not any(store.glob("*/checkpoint.pt"))

    wait_for(training_without_checkpoint, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not any(store.glob("*/checkpoint.pt"))
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    (entry,) = entries(store)
    record = json.loads((entry / "metrics.json").read_text())
    assert record["status"] == "completed" and record["attempt"] == 1 and record["resumed_from_epoch"] is None
    ids = {wandb_id(d) for d in (entry / "wandb").glob("offline-run-*")}
    assert ids == {record["wandb"]["id"]} and record["wandb"]["id"].count("-") == 1  # one W&B run, no <id>-2


@pytest.mark.slow
def test_an_exception_anywhere_in_a_job_fails_that_job_and_the_sweep_still_reports(tmp_path):
    store = tmp_path / "store"
    common = ["-m", "model=rnn,gru", "data.train_size=200", "data.test_size=40", "train.epochs=1", "logger=none",
              "runtime.progress=off", f"ledger.store={store}"]
    plan = run_cli([*common, "ledger.plan=true", f"hydra.sweep.dir={tmp_path / 'plan'}"], cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    first_id = jobs(tmp_path / "plan")[0]["id"]
    store.mkdir()
    (store / first_id).write_text("a file where the run's directory goes")  # the job fails while it sets up
    res = run_cli([*common, f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert res.returncode == 1
    outcome = {j["overrides"][0]: j for j in jobs(tmp_path / "sweep")}
    assert outcome["model=rnn"]["outcome"] == "failed" and "Error" in outcome["model=rnn"]["error"]
    assert outcome["model=gru"]["outcome"] == "trained"
    assert "1 completed, 1 failed (2 jobs)" in res.stdout
    assert (tmp_path / "sweep" / "summary.txt").is_file() and (tmp_path / "sweep" / "report.md").is_file()
    assert "Traceback" not in res.stderr.split("Sweep summary")[-1]


@pytest.mark.slow
def test_two_identical_sweeps_on_one_store_train_each_run_once_and_both_report_every_run(tmp_path):
    store = tmp_path / "store"
    # Runs long enough (seconds) that the second sweep starts while the first is training.
    common = ["-m", "model=rnn,gru", *SMALL, "data.train_size=20000", "train.epochs=4", "model.hidden_dim=48",
              "logger=none", f"ledger.store={store}"]
    first = start([*common, f"hydra.sweep.dir={tmp_path / 'a'}"], tmp_path)
    wait_for(lambda: any('"running"' in p.read_text() for p in store.glob("*/metrics.json")), first)
    second = run_cli([*common, f"hydra.sweep.dir={tmp_path / 'b'}"], cwd=tmp_path)
    first_output = first.communicate(timeout=300)[0]
    assert first.returncode == 0, first_output
    assert second.returncode == 0, second.stdout + second.stderr
    b = jobs(tmp_path / "b")
    # The second sweep meets the first's running job, or (the first job done by the time it
    # starts) claims the next one itself, and the first meets that one running: one of them waits.
    assert {j["status"] for j in b} == {"completed"}
    assert "waiting for it" in second.stdout + second.stderr + first_output
    assert sorted(j["outcome"] for j in b) in (["skipped", "skipped"], ["skipped", "trained"])
    trained = [j for sweep in ("a", "b") for j in jobs(tmp_path / sweep) if j["outcome"] == "trained"]
    assert len(trained) == 2  # each run trained once, by one of the two sweeps
    for sweep in ("a", "b"):
        assert (tmp_path / sweep / "runs.csv").read_text().count("\n") == 3  # header + both runs
