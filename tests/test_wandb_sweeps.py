"""W&B across sweeps, as a user meets it offline: the comparison report's run set, syncing, pushing,
run names and tags, two stores; and the Hydra edges around a sweep."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import run_cli
from wandb_records import read_offline_run

SMALL = ["data.train_size=200", "data.test_size=40", "train.epochs=1", "model.embed_dim=8", "model.hidden_dim=8",
         "runtime.progress=off", "runtime.device=cpu"]


def records(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.rglob("metrics.json"))]


def report_cli(args: list[str], cwd: Path, **env: str):
    return run_cli(args, cwd=cwd, exe=[__import__("sys").executable, "-m", "rnnsweep.report.cli"], **env)


@pytest.mark.slow
def test_a_sweep_that_reuses_runs_gets_them_all_in_its_wandb_report_and_sync(tmp_path):
    store = tmp_path / "store"
    first = run_cli(["-m", "model=rnn,gru", *SMALL, "logger=wandb", "logger.mode=offline", f"ledger.store={store}",
                     f"hydra.sweep.dir={tmp_path / 'first'}"], cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    second = run_cli(["-m", "model=rnn,gru", "seed=0,1", *SMALL, "logger=wandb",
                      "logger.mode=offline", f"ledger.store={store}", f"hydra.sweep.dir={tmp_path / 'second'}"],
                     cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    sweep = tmp_path / "second"
    assert "[HYDRA] W&B report spec" not in second.stdout and "[rnnsweep][INFO] - W&B report spec" in second.stdout

    # The spec's run set is the table's runs, the two the first sweep trained included.
    spec = json.loads((sweep / "wandb_report.json").read_text())
    table = (sweep / "runs.csv").read_text().splitlines()
    assert len(table) == 1 + 4
    wandb_ids = sorted(r["wandb"]["id"] for r in records(sweep))
    assert spec["runset"]["filters"] == "ID in [" + ", ".join(repr(i) for i in wandb_ids) + "]"
    assert spec["runset"]["groupby"] == ["Group"] and {b["groupby"] for b in spec["bar_charts"]} == {"Group"}
    assert spec["entity"] is None
    reused = [r for r in records(sweep) if r["config"]["seed"] == 0]
    assert len(reused) == 2
    assert {read_offline_run(next(Path(r["wandb"]["dir"]).glob("offline-run-*"))).job_type for r in reused} == {"first"}

    # One command lists (and would upload) every offline run of the sweep, reused ones included.
    dry = report_cli([str(sweep), "--sync-wandb", "--dry-run"], tmp_path)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0] == "4 offline run(s) of the sweep's jobs:"
    assert sorted(line.strip().rsplit("-", 0)[0] for line in lines[1:5]) == sorted(
        str(p) for r in records(sweep) for p in Path(r["wandb"]["dir"]).glob("offline-run-*"))
    assert "1 comparison run(s) of the sweep:" in dry.stdout and "(dry run: nothing synced)" in dry.stdout

    # Pushing without a login, or with a key but no way to W&B: one line, at once, saying to sync first.
    for env in ({}, {"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}):
        started = time.monotonic()
        push = report_cli([str(sweep), "--push-wandb"], tmp_path, **env)
        assert time.monotonic() - started < 5
        assert push.returncode == 2
        (line,) = push.stderr.strip().splitlines()
        assert line.startswith("rnnsweep-report: error: ") and f"rnnsweep-report {sweep} --sync-wandb" in line
        assert ("not logged in" if not env else "cannot reach W&B at http://127.0.0.1:9") in line

    # Names say what was swept, tags the choices that matter, runtime.threads the threads used.
    run = read_offline_run(next(Path(records(sweep)[-1]["wandb"]["dir"]).glob("offline-run-*")))
    assert "logger" not in run.name and "ledger" not in run.name and "hydra" not in run.name
    assert not any(t.startswith(("launcher:", "logger:")) for t in run.tags)
    assert {t.split(":")[0] for t in run.tags} >= {"model", "batching", "topology", "optimizer", "data"}
    assert run.config["runtime"]["threads"] >= 1


@pytest.mark.slow
def test_two_stores_that_train_the_same_config_log_two_wandb_runs(tmp_path):
    ids = []
    for name in ("machine_a", "machine_b"):
        res = run_cli([*SMALL, "logger=wandb", "logger.mode=offline", f"ledger.store={tmp_path / name}",
                       f"hydra.run.dir={tmp_path / (name + '_run')}"], cwd=tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
        (record,) = [json.loads(p.read_text()) for p in (tmp_path / name).glob("*/metrics.json")]
        ids.append((record["id"], record["wandb"]["id"]))
    (run_a, wandb_a), (run_b, wandb_b) = ids
    assert run_a == run_b and wandb_a != wandb_b  # one config, two W&B runs
    assert wandb_a.startswith(run_a + "-") and wandb_b.startswith(run_b + "-")


@pytest.mark.slow
def test_hydra_edges(tmp_path):
    # Hydra's own spelling of the launcher is what the record says.
    res = run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=1", *SMALL, "logger=none",
                   f"hydra.sweep.dir={tmp_path / 'joblib'}"], cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert [r["choices"]["launcher"] for r in records(tmp_path / "joblib")] == ["joblib"]

    # A nested sweep subdir keeps its summary and report, and ${model.arch} reads as the value.
    nested = run_cli(["-m", "model=rnn,gru", "hydra.sweep.subdir=${model.arch}/s${seed}", *SMALL, "logger=none",
                      f"hydra.sweep.dir={tmp_path / 'nested'}"], cwd=tmp_path, MPLCONFIGDIR=str(tmp_path / "mpl"))
    assert nested.returncode == 0, nested.stdout + nested.stderr
    assert sorted(p.parent.relative_to(tmp_path / "nested").as_posix() for p in (tmp_path / "nested").rglob("job.json")) \
        == ["gru/s0", "rnn/s0"]
    assert (tmp_path / "nested" / "summary.txt").is_file() and (tmp_path / "nested" / "report.md").is_file()
    assert "2 completed (2 jobs)" in nested.stdout
    # A fresh matplotlib cache builds its fonts without a word.
    assert "fontManager" not in nested.stdout + nested.stderr

    # An experiment that defines a grid, without -m: said, not silently one job.
    grid = run_cli(["experiment=paper_grid", "ledger.plan=true", *SMALL, f"hydra.run.dir={tmp_path / 'grid'}"],
                   cwd=tmp_path)
    assert grid.returncode == 0, grid.stderr
    assert "rnnsweep: warning: experiment=paper_grid defines a sweep; without -m this trains one job" in grid.stderr


def test_the_version_is_rnnsweeps_and_a_composition_error_keeps_its_reason(tmp_path):
    from rnnsweep import __version__

    version = run_cli(["--version"], cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith(f"rnnsweep {__version__}")
    clash = run_cli(["launcher=parallel", "hydra/launcher=basic"], cwd=tmp_path)
    assert clash.returncode == 2
    (line,) = clash.stderr.strip().splitlines()
    assert "Key 'n_jobs' not in 'BasicLauncherConf'" in line and "leave out hydra/launcher" in line
