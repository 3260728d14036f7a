"""The Python API (rnnsweep.train / load / evaluate / runs): what a notebook calls, with the
command's identities, store and errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import rnnsweep
from conftest import CONF, TINY, clean_env, entries, run_cli
from rnnsweep import api, config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two runs trained through the API into one store: (gru record, rnn record, base directory)."""
    base = tmp_path_factory.mktemp("api")
    gru = rnnsweep.train(*TINY, "model=gru", f"ledger.store={base / 'store'}", base_dir=base)
    rnn = rnnsweep.train([*TINY, "model=rnn"], f"ledger.store={base / 'store'}", base_dir=base)
    return gru, rnn, base


def test_train_returns_the_completed_record_and_leaves_a_job_directory(trained):
    gru, rnn, base = trained
    assert gru["status"] == rnn["status"] == "completed" and gru["id"] != rnn["id"]
    assert gru["choices"]["model"] == "gru" and gru["config"]["model"]["arch"] == "gru"
    assert gru["name"] == "data.train_size=120,data.test_size=40,train.epochs=1,train.batch_size=32," \
                          "model.embed_dim=8,model.hidden_dim=8,model=gru"  # as the command names it
    jobs = [json.loads(p.read_text()) for p in (base / "outputs" / "run").rglob("job.json")]
    assert sorted(j["id"] for j in jobs) == sorted([gru["id"], rnn["id"]])
    assert all(j["outcome"] == "trained" for j in jobs)
    assert len(entries(base / "store")) == 2
    assert (Path(gru["model"]["dir"]) / "weights.npz").is_file()


def test_the_same_overrides_again_are_skipped_as_in_the_store(trained, tmp_path):
    gru, _, base = trained
    again = rnnsweep.train(*TINY, "model=gru", f"ledger.store={base / 'store'}", base_dir=base, dir=tmp_path / "job")
    assert again["id"] == gru["id"] and again["metrics"] == gru["metrics"]
    assert json.loads((tmp_path / "job" / "job.json").read_text())["outcome"] == "skipped"


@pytest.mark.slow
def test_the_command_with_the_same_overrides_finds_the_apis_run_in_the_store(trained):
    gru, _, base = trained
    res = run_cli([*TINY, "model=gru", f"ledger.store={base / 'store'}", "hydra.run.dir=outputs/cli"], cwd=base)
    assert res.returncode == 0, res.stderr
    job = json.loads((base / "outputs" / "cli" / "job.json").read_text())
    assert job["outcome"] == "skipped" and job["id"] == gru["id"]
    assert len(entries(base / "store")) == 2


def test_the_api_and_the_command_compose_the_same_identity(trained, compose_cfg):
    """The command's path, in-process: conftest's compose (the way the CLI composes) -> identity."""
    from rnnsweep import builders, run, store
    from rnnsweep.config import to_plain
    from rnnsweep.data import data_fingerprint

    gru, _, base = trained
    settings = config.validate(compose_cfg([*TINY, "model=gru", f"ledger.store={base / 'store'}"]))
    run.resolve_runtime(settings)  # as every job does: runtime.device=auto -> the device found here
    source = builders.data_source(settings.data, base, builders.cache_dir(settings.runtime, base))
    identity = store.run_identity(to_plain(settings), data_fingerprint(source, builders.split_options(settings.data)))
    assert identity.run_id == gru["id"] and identity.group_id == gru["group_id"]


def test_load_and_evaluate_a_trained_run(trained, tmp_path):
    gru, _, base = trained
    clf = rnnsweep.load(gru["id"], store=base / "store")
    assert clf.predict(["election playoff", "not election playoff"])[0] in clf.classes
    ev = rnnsweep.evaluate(gru["id"], store=base / "store", out=tmp_path, base_dir=base)
    assert ev["metrics"]["acc"] == gru["metrics"]["test/acc"] and ev["data"]["same_as_run"]
    assert (tmp_path / "evaluation.json").is_file()


def test_runs_has_a_row_per_record_with_choices_config_and_metrics(trained, tmp_path):
    gru, rnn, base = trained
    df = rnnsweep.runs(base / "store")
    assert sorted(df["id"]) == sorted([gru["id"], rnn["id"]])
    for column in ("id", "status", "model", "batching", "config.model.arch", "config.train.epochs", "test/acc",
                   "val/acc", "started_at"):
        assert column in df.columns, column
    row = df.set_index("id").loc[gru["id"]]
    assert row["model"] == "gru" and row["config.model.arch"] == "gru" and row["test/acc"] == gru["metrics"]["test/acc"]
    # The job directories' copies and the store's originals: each run once.
    assert len(rnnsweep.runs(base)) == 2
    assert rnnsweep.runs(tmp_path).empty
    with pytest.raises(FileNotFoundError):
        rnnsweep.runs(tmp_path / "missing")


@pytest.mark.parametrize("override, expected", [
    ("topology.num_layers=0", "topology.num_layers=0: must be at least 1"),
    ("model=transformer", "unknown option 'transformer' for config group 'model'"),
    ("batching.batch_size=64", "did you mean train.batch_size"),
])
def test_config_errors_raise_config_error_and_leave_nothing_behind(tmp_path, override, expected):
    with pytest.raises(config.ConfigError) as ex:
        rnnsweep.train(*TINY, override, base_dir=tmp_path)
    assert expected in str(ex.value) and "\n" not in str(ex.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_data_raises_one_line_and_removes_the_job_directory(tmp_path):
    from rnnsweep.data import DataError

    with pytest.raises(DataError, match="no such file"):
        rnnsweep.train(*TINY[2:], "data=csv", "data.train=missing.csv", base_dir=tmp_path)
    assert not (tmp_path / "outputs" / "run").exists()


def test_composing_leaves_hydras_global_state_as_it_was(tmp_path):
    assert not GlobalHydra.instance().is_initialized()
    api.compose(["model=gru"])
    assert not GlobalHydra.instance().is_initialized()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = api.compose(["model=rnn"])
        assert GlobalHydra.instance().is_initialized()
        assert str(compose(config_name="config", overrides=["model=bow"]).model.arch) == "bow"  # the caller's still works
    assert str(cfg.model.arch) == "rnn"


def test_rnnsweep_train_is_the_api_function_after_training_code_is_imported():
    import rnnsweep.run  # noqa: F401 - the training code, imported as a run does
    from rnnsweep import api

    assert rnnsweep.train is api.train and rnnsweep.load is api.load


def test_importing_rnnsweep_loads_neither_torch_nor_hydra():
    res = subprocess.run([sys.executable, "-c", "import sys, rnnsweep; "
                          "print(sorted(m for m in ('torch', 'hydra', 'pandas') if m in sys.modules))"],
                         env=clean_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stderr


@pytest.mark.parametrize("override", ["-m", "seed=0,1", "seed=range(2)"])
def test_train_refuses_a_sweep_and_says_how_to_run_one(tmp_path, override):
    with pytest.raises(config.ConfigError, match="rnnsweep.train runs one job") as err:
        rnnsweep.train(*TINY, override, base_dir=tmp_path)
    assert "rnnsweep -m" in str(err.value) and not any(tmp_path.iterdir())
