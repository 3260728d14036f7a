"""The `rnnsweep` command as users run it: a subprocess, from a directory of their own."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO, TINY, run_cli
from rnnsweep.store import CHOICE_ORDER
from wandb_records import read_offline_run


@pytest.mark.parametrize(
    "args,expected",
    [
        (["model=lstm", "model.hidden_dim=abc"], "model.hidden_dim=abc"),
        (["model=transformer"], "unknown option 'transformer' for config group 'model' (choose from: bow, gru, lstm, rnn)"),
        (["topology.num_layers=0"], "topology.num_layers=0: must be at least 1"),
        (["train.epochs=-1"], "train.epochs=-1: must be at least 1"),
        (["batching.batch_size=8"], "did you mean train.batch_size? (batching has: mode, native_packing"),
        (["-m", "topology.layers=1,2"], "did you mean topology.num_layers?"),
        (["lr=0.1"], "did you mean optimizer.lr?"),
        (["optimizer.lr=nan"], "optimizer.lr=nan: must be a positive number"),
        (["optimizer.lr=inf"], "optimizer.lr=inf: must be a positive number"),
        (["optimizer.eps=-1e-8"], "optimizer.eps=-1e-08: must be a positive number"),
        (["optimizer=adamw", "optimizer.weight_decay=inf"], "optimizer.weight_decay=inf: must be a number >= 0"),
        (["runtime.threads=100000"], "runtime.threads=100000: must be 0 (the launcher's share of the cores) to 1024"),
        (["seed=99999999999"], "seed=99999999999: must be in [0, 4294967295]"),
        (["ledger.store="], "ledger.store='': must name a directory"),
        (["data.train_size=100000000"], "data.train_size=100000000: must be in [10, 2,000,000]"),
        (["runtime.device=cuda"], "runtime.device=cuda: no CUDA device is visible"),
        (["runtime.amp=true"], "runtime.amp=true: mixed precision needs a CUDA device"),
    ],
)
def test_bad_input_fails_before_training_with_one_line(tmp_path, args, expected):
    if "runtime.device=cuda" in args or "runtime.amp=true" in args:
        pytest.importorskip("torch").cuda.is_available() and pytest.skip("this machine has CUDA")
    res = run_cli(args, cwd=tmp_path, RNNSWEEP_CACHE_DIR=str(tmp_path / "cache"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnsweep: error: "), res.stderr
    assert expected in lines[0]
    # Nothing written: no outputs/run/<time>/ with a .hydra/ and an empty log, no store, no cache.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["ledger.store", "runtime.cache_dir", "RNNSWEEP_CACHE_DIR"])
def test_a_store_or_cache_that_cannot_be_a_directory_is_one_line_naming_its_setting(tmp_path, where):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    settings = {"ledger.store": tmp_path / "store", "runtime.cache_dir": None}
    env = {}
    if where == "RNNSWEEP_CACHE_DIR":
        env[where] = str(blocker / "cache")
        expected = f"RNNSWEEP_CACHE_DIR={blocker / 'cache'}: cannot create the directory {blocker / 'cache'}: "
    else:
        settings[where] = blocker
        expected = f"{where}={blocker}: {blocker} is a file, not a directory"
    args = [*TINY, *(f"{k}={v}" for k, v in settings.items() if v is not None), f"hydra.run.dir={tmp_path / 'run'}"]
    res = run_cli(args, cwd=tmp_path, **env)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rnnsweep: error: {expected}"), res.stderr
    assert not list(tmp_path.rglob("metrics.json"))


@pytest.mark.parametrize("setting", ["hydra.run.dir", "hydra.sweep.dir"])
def test_an_output_directory_that_cannot_be_created_is_one_line(tmp_path, setting):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    args = ([] if setting == "hydra.run.dir" else ["-m"]) + [*TINY, f"ledger.store={tmp_path / 'store'}"]
    res = run_cli([*args, f"{setting}={blocker}"], cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"rnnsweep: error: {blocker}: a file, not a directory"], res.stderr
    under = run_cli([*args, f"{setting}={blocker / 'sub'}"], cwd=tmp_path)
    assert under.returncode == 2
    assert under.stderr.strip().splitlines() == [f"rnnsweep: error: {blocker / 'sub'}: Not a directory"], under.stderr


def test_a_sweep_whose_store_cannot_be_written_records_why_for_every_job(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    res = run_cli(["-m", "model=rnn,gru", *TINY, f"ledger.store={blocker}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                  cwd=tmp_path)
    assert res.returncode == 1
    jobs = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/job.json"))]
    assert [j["outcome"] for j in jobs] == ["failed", "failed"]
    assert {j["error"] for j in jobs} == {f"DirectoryError: ledger.store={blocker}: {blocker} is a file, not a directory"}


def test_a_plan_creates_no_store(tmp_path):
    res = run_cli([*TINY, "ledger.plan=true", f"ledger.store={tmp_path / 'store'}", f"hydra.run.dir={tmp_path / 'run'}"],
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "store").exists()


def test_help_lists_the_config_groups(tmp_path):
    res = run_cli(["--help"], cwd=tmp_path)
    assert res.returncode == 0
    for line in ("model: bow, gru, lstm, rnn", "batching: packed, padded", "topology: bi, deep, deep_bi, uni",
                 "optimizer: adam, adamw, sgd", "data: ag_news, csv, hf, synthetic",
                     "tokenizer: basic_english, bpe, wordpiece", "logger: none, wandb", "experiment: paper_grid, seed_notebook"):
        assert line in res.stdout
    assert "rnnsweep -m model=rnn,lstm,gru" in res.stdout
    # Keys whose values come from a fixed set, with the set, straight from the schemas.
    assert "model.pooling: last, mean, max, attention, seed_mean, seed_hlast" in res.stdout
    assert "optimizer.embedding_grad: auto, dense, scattered, deferred" in res.stdout


def test_cfg_job_prints_the_composed_config_and_trains_nothing(tmp_path):
    res = run_cli(["--cfg", "job", "model=gru", "topology=bi"], cwd=tmp_path)
    assert res.returncode == 0
    assert "arch: gru" in res.stdout and "bidirectional: true" in res.stdout
    assert not (tmp_path / "outputs").exists()


def test_single_run_writes_its_record_under_outputs(tmp_path):
    res = run_cli([*TINY, "model=gru"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    (record,) = tmp_path.glob("outputs/run/*/metrics.json")
    data = json.loads(record.read_text())
    assert data["status"] == "completed" and data["choices"]["model"] == "gru"
    assert data["overrides"][-1] == "model=gru"
    assert str(record) in res.stdout  # the log line says where the result is


@pytest.mark.slow
def test_multirun_of_six_jobs_leaves_six_completed_records(tmp_path):
    sweep = tmp_path / "sweep"
    res = run_cli(["-m", "model=rnn,lstm,gru", "batching=padded,packed", "train.epochs=1", *TINY[:1], *TINY[4:],
                   f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(records) == 6
    assert {r["status"] for r in records} == {"completed"}
    combos = {(r["choices"]["model"], r["choices"]["batching"]) for r in records}
    assert combos == {(m, b) for m in ("rnn", "lstm", "gru") for b in ("padded", "packed")}
    assert len({r["group_id"] for r in records}) == 6  # no seed repeats here: six groups
    # W&B groups read like the report's rows: the choices in the report's column order, then the id.
    assert all(r["group"] == "-".join([*(r["choices"][k] for k in CHOICE_ORDER if r["choices"].get(k)),
                                       r["group_id"][:8]]) for r in records)
    assert all(f"-{r['choices']['model']}-{r['choices']['batching']}-" in r["group"] for r in records)
    assert "6 completed (6 jobs)" in res.stdout


@pytest.mark.slow
def test_each_job_of_a_multirun_gets_its_own_offline_wandb_run(tmp_path):
    sweep = tmp_path / "sweep"
    res = run_cli(["-m", "model=rnn,gru", *[o for o in TINY if o != "logger=none"], f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "W&B: no API key configured, logging offline" in res.stdout
    runs = {}
    for record_path in sorted(sweep.glob("*/metrics.json")):
        record = json.loads(record_path.read_text())
        (run_dir,) = Path(record["wandb"]["dir"]).glob("offline-run-*")  # in the run store's entry
        run = read_offline_run(run_dir)
        assert run.run_id == record["wandb"]["id"] and run.run_id.startswith(record["id"] + "-")
        assert run.summary["test/acc"] == pytest.approx(record["metrics"]["test/acc"])
        assert run.group == record["group"] and run.job_type == "sweep"
        runs[run.run_id] = run.name
    # Named by what the overrides say about the run: not logger, progress or thread settings.
    named = [o for o in TINY if not o.startswith(("logger", "runtime.progress", "runtime.threads"))]
    assert sorted(runs.values()) == sorted(f"model={m},{','.join(named)}" for m in ("rnn", "gru"))


@pytest.mark.slow
def test_experiment_seed_notebook_runs_the_lessons_three_classifiers(tmp_path):
    sweep = tmp_path / "sweep"
    res = run_cli(["-m", "experiment=seed_notebook", "logger=none", "data.train_size=200", "data.test_size=40",
                   "runtime.progress=off", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lessons = sorted(json.loads(p.read_text())["choices"]["lesson"] for p in sweep.glob("*/metrics.json"))
    assert lessons == ["lstm", "packed_lstm", "rnn"]


@pytest.mark.slow
def test_console_script_from_a_built_wheel_in_a_fresh_venv(tmp_path):
    """Hydra finds conf/ differently for an installed console script: check the real thing."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("rnnsweep-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # torch & co. come from this environment (a .pth path entry), rnnsweep only from the wheel.
    Path(site, "deps-from-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([py, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True, timeout=300)
    where = subprocess.run([py, "-c", "import rnnsweep.cli as c; print(c.__file__); print(c.config_dir())"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout.split()
    assert all(p.startswith(str(venv)) for p in where), where
    exe = [str(venv / "bin" / "rnnsweep")]
    work = tmp_path / "elsewhere"
    work.mkdir()
    assert "model: bow, gru, lstm, rnn" in run_cli(["--help"], cwd=work, exe=exe).stdout
    res = run_cli([*TINY, "model=rnn"], cwd=work, exe=exe)
    assert res.returncode == 0, res.stderr
    (record,) = work.glob("outputs/run/*/metrics.json")
    assert json.loads(record.read_text())["status"] == "completed"
    res = run_cli(["-m", "model=rnn,gru", *TINY], cwd=work, exe=exe)
    assert res.returncode == 0, res.stderr
    assert len(list(work.glob("outputs/multirun/*/*/metrics.json"))) == 2
    assert run_cli(["model=transformer"], cwd=work, exe=exe).returncode == 2


def test_bad_data_is_one_line_naming_the_file_and_leaves_nothing_behind(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("text,label\n" + "".join(f"row {i},{i % 2 + 1}\n" for i in range(40)) + "odd,1.5\n")
    res = run_cli(["data=csv", f"data.train={data / 'train.csv'}", "logger=none", "data.label_column=label"],
                  cwd=tmp_path, RNNSWEEP_CACHE_DIR=str(tmp_path / "cache"))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"rnnsweep: error: {data / 'train.csv'}:42: label '1.5' is not an integer, unlike 40 of the 41 labels; "
        "correct it (labels are integers or names, not both)"], res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no outputs/, no store, no cache, no .lock


def test_a_prebuilt_cache_that_cannot_be_written_is_used_as_it_is(compose_cfg, tmp_path, monkeypatch):
    """Shared datasets on a cluster: a read-only cache whose entry exists loads; nothing is written."""
    import os

    from rnnsweep import config, run

    def settings(seed: int):
        return config.validate(compose_cfg([*TINY, f"seed={seed}", f"runtime.cache_dir={tmp_path / 'cache'}"]))

    built = run.run_job(settings(0), run.Job(dir=tmp_path / "a", base_dir=tmp_path), tmp_path / "store",
                        raise_on_failure=True)
    assert built.job["outcome"] == "trained"
    writable, cache = os.access, tmp_path / "cache"
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path).is_relative_to(cache)
                        and mode & os.W_OK else writable(path, mode, **kw))
    reused = run.run_job(settings(1), run.Job(dir=tmp_path / "b", base_dir=tmp_path), tmp_path / "store",
                         raise_on_failure=True)
    assert reused.job["outcome"] == "trained" and reused.record["data"]["cache"] == built.record["data"]["cache"]


def test_a_flag_after_the_overrides_means_what_it_means_before_them(tmp_path):
    """`rnnsweep model=gru -m ...`: argparse alone would print a screen of usage and stop."""
    res = run_cli([*TINY, "ledger.plan=true", "-m", "model=rnn,gru", f"ledger.store={tmp_path / 'store'}"],
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 train (2 jobs)" in res.stdout
