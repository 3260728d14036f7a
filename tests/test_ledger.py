"""Run identity, the store's decisions, and exact resumption from an epoch checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from filelock import FileLock

from conftest import TINY
from rnnsweep import builders, config, run, store
from rnnsweep.data import data_fingerprint
from rnnsweep.config import to_plain

TIMING = {"wall_s", "train/examples_per_s", "train/seconds"}


def identity(compose_cfg, overrides):
    s = config.validate(compose_cfg([*TINY, *overrides]))
    source = builders.data_source(s.data, Path.cwd(), builders.cache_dir(s.runtime, Path.cwd()))
    identity = store.run_identity(to_plain(s), data_fingerprint(source, builders.split_options(s.data)))
    return identity.run_id, identity.group_id


def test_identity_ignores_what_cannot_change_the_result(compose_cfg):
    base = identity(compose_cfg, [])
    for harmless in (["logger=wandb"], ["runtime.threads=2"], ["runtime.progress=on"],
                     ["ledger.force=true"], ["ledger.store=/elsewhere"], ["logger.log_every=7"]):
        assert identity(compose_cfg, harmless) == base, harmless
    for meaningful in (["optimizer.lr=0.01"], ["model=gru"], ["data.seed=9"], ["data.variant=long_range"],
                       ["train.epochs=2"], ["batching=packed"], ["runtime.compiled_rnn=false"]):
        assert identity(compose_cfg, meaningful)[0] != base[0], meaningful
    # torch's own layers round differently on another number of threads: then the count counts,
    # and so it does where torch code beside the compiled layers goes parallel.
    for torch_code in (["runtime.compiled_rnn=false"], ["model.pooling=attention"],
                       ["batching=packed", "batching.native_packing=true"]):
        assert identity(compose_cfg, [*torch_code, "runtime.threads=2"]) != identity(compose_cfg, torch_code), torch_code
    assert identity(compose_cfg, ["batching=packed", "runtime.threads=2"]) == identity(compose_cfg, ["batching=packed"])


def untimed(record: dict) -> str:
    """The record's metrics and history, byte for byte, without the clock's figures."""
    metrics = {k: v for k, v in record["metrics"].items() if k not in TIMING}
    history = [{k: v for k, v in h.items() if k not in TIMING} for h in record["history"]]
    return json.dumps([metrics, history])


# Every key the identity leaves out, with two values, and the models to try it on.
EXCLUDED = [
    ("runtime.threads", "1", "2", ("lstm", "gru", "rnn", "bow")),
    ("logger", "none", "wandb", ("lstm",)),
    ("logger.log_every", "50", "1", ("lstm",)),
    ("runtime.progress", "off", "on", ("lstm",)),
    ("runtime.cache_dir", "cache_a", "cache_b", ("lstm",)),
    ("ledger.keep_checkpoint", "false", "true", ("gru",)),
    ("ledger.force", "false", "true", ("gru",)),
    ("ledger.store", "store_a", "store_b", ("gru",)),
    ("ledger.fail_on_error", "true", "false", ("gru",)),
    ("ledger.busy_wait", "3600", "0", ("gru",)),
]


def test_every_key_the_identity_leaves_out_is_one():
    """A key added to NON_RESULT_KEYS without a byte-for-byte check below fails here."""
    checked = {key for key, *_ in EXCLUDED}
    for prefix in store.NON_RESULT_KEYS:
        assert prefix in checked or prefix == "ledger", prefix
    assert {f"ledger.{k}" for k in ("keep_checkpoint", "force", "store", "fail_on_error", "busy_wait")} <= checked


@pytest.mark.parametrize("key,first,second,models", EXCLUDED, ids=[e[0] for e in EXCLUDED])
def test_a_key_the_identity_leaves_out_changes_no_metric(compose_cfg, tmp_path, no_wandb_account, key, first,
                                                          second, models):
    for model in models:
        records = []
        for value in (first, second):
            if key in ("runtime.cache_dir", "ledger.store"):
                value = str(tmp_path / model / value)
            overrides = [*TINY, f"model={model}", "train.epochs=2", "runtime.device=cpu",
                         f"{key}={value}" if key != "logger" else f"logger={value}"]
            if model == "bow":
                overrides.append("model.pooling=mean")
            settings = config.validate(compose_cfg(overrides))
            records.append(run.train(settings, None, tmp_path / model / f"{key}={value}".replace("/", "_")))
        assert [r["status"] for r in records] == ["completed", "completed"]
        assert untimed(records[0]) == untimed(records[1]), (key, model)


def test_group_id_is_shared_by_seed_repeats_only(compose_cfg):
    a, b, c = (identity(compose_cfg, [f"seed={s}"]) for s in (0, 1, 2))
    assert len({a[0], b[0], c[0]}) == 3
    assert a[1] == b[1] == c[1]
    assert identity(compose_cfg, ["seed=1", "model=gru"])[1] != a[1]


@pytest.mark.parametrize(
    "status,force,checkpoint,action",
    [
        ("new", False, False, "train"),
        ("completed", False, False, "skip"),
        ("completed", True, False, "train"),
        ("diverged", False, False, "skip"),
        ("failed", False, False, "train"),
        ("failed", False, True, "resume"),
        ("interrupted", False, True, "resume"),
        ("interrupted", False, False, "train"),
        ("interrupted", True, True, "train"),
        ("running", True, True, "busy"),
    ],
)
def test_decisions(status, force, checkpoint, action):
    assert store.decide(status, force, checkpoint) == action


def test_a_running_entry_is_told_from_a_cut_one_by_its_lock(tmp_path):
    entry = store.Entry(tmp_path / "abc")
    assert entry.status() == "new"
    entry.dir.mkdir()
    entry.record_path.write_text(json.dumps({"status": "running", "config": {}, "metrics": {}}))
    assert entry.status() == "interrupted"  # nobody holds the lock: the process died
    with FileLock(entry.dir / store.LOCK):
        assert entry.status() == "running"
    entry.record_path.write_text("{ half a rec")
    assert entry.status() == "new"  # unreadable record: nothing to trust


@pytest.mark.parametrize("damage", ["[]", '{"status": "bogus", "config": {}, "metrics": {}}', '{"status": "completed"}',
                                    '{"status": "completed", "config": {}, "metrics": {"test/acc": "high"}}', "null"])
def test_a_record_of_the_wrong_shape_is_damaged_and_its_run_trained_again(tmp_path, caplog, damage):
    entry = store.Entry(tmp_path / "abc")
    entry.dir.mkdir()
    entry.record_path.write_text(damage)
    assert entry.status() == "new"
    assert store.decide(entry.status(), force=False, has_checkpoint=False) == "train"
    assert "is damaged" in caplog.text and "trained again" in caplog.text


@pytest.mark.parametrize("extra", [["model=lstm"], ["model=gru", "topology=deep", "batching=packed"]])
def test_resuming_from_an_epoch_checkpoint_gives_the_uninterrupted_metrics(compose_cfg, tmp_path, extra):
    # Dropout (topology=deep) makes the RNG state part of what must be restored.
    overrides = [*TINY, "runtime.device=cpu", "seed=2", *extra]
    full = run.train(config.validate(compose_cfg([*overrides, "train.epochs=3"])), None, tmp_path / "full")

    cut = tmp_path / "cut"  # a run that stopped after epoch 1 leaves this checkpoint behind
    run.train(config.validate(compose_cfg([*overrides, "train.epochs=1", "ledger.keep_checkpoint=true"])), None, cut)
    assert (cut / store.CHECKPOINT).is_file()
    resumed = run.train(config.validate(compose_cfg([*overrides, "train.epochs=3"])), None, cut, resume=True)

    assert resumed["resumed_from_epoch"] == 1
    strip = lambda m: {k: v for k, v in m.items() if k not in TIMING}  # noqa: E731
    assert strip(resumed["metrics"]) == strip(full["metrics"])
    assert [strip(h) for h in resumed["history"]] == [strip(h) for h in full["history"]]
    assert not (cut / store.CHECKPOINT).exists()  # removed once the run completed


def test_an_unreadable_checkpoint_means_training_from_scratch(compose_cfg, tmp_path):
    overrides = [*TINY, "runtime.device=cpu", "train.epochs=2"]
    fresh = run.train(config.validate(compose_cfg(overrides)), None, tmp_path / "a")
    broken = tmp_path / "b"
    broken.mkdir()
    (broken / store.CHECKPOINT).write_bytes(b"not a checkpoint")
    rerun = run.train(config.validate(compose_cfg(overrides)), None, broken, resume=True)
    assert rerun["resumed_from_epoch"] is None
    assert rerun["metrics"]["test/acc"] == fresh["metrics"]["test/acc"]
    assert rerun["history"][-1]["train/loss"] == fresh["history"][-1]["train/loss"]


def test_the_lock_holder_sees_a_running_record_as_its_own_to_resume(tmp_path):
    entry = store.Entry(tmp_path / "abc")
    entry.dir.mkdir()
    entry.record_path.write_text(json.dumps({"status": "running", "config": {}, "metrics": {}}))
    with entry.lock():
        assert entry.status() == "running"
        assert entry.status(holding_lock=True) == "interrupted"


def test_the_store_never_hands_one_implementations_result_to_another(compose_cfg, tmp_path):
    """compiled_rnn=true then false on one store: the second trains, it does not copy the first."""
    results = []
    for overrides in (["runtime.compiled_rnn=true"], ["runtime.compiled_rnn=false"],
                      ["runtime.compiled_rnn=false", "runtime.threads=2"], ["runtime.compiled_rnn=true", "runtime.threads=2"]):
        settings = config.validate(compose_cfg([*TINY, "model=lstm", "runtime.device=cpu", *overrides]))
        job = run.Job(dir=tmp_path / "jobs" / str(len(results)))
        results.append(run.run_job(settings, job, tmp_path / "store", raise_on_failure=True).job)
    assert [r["outcome"] for r in results] == ["trained", "trained", "trained", "skipped"]
    assert len({r["id"] for r in results[:3]}) == 3 and results[3]["id"] == results[0]["id"]


def test_device_auto_is_named_by_the_device_it_resolves_to(compose_cfg, tmp_path):
    """runtime.device=auto on this CPU machine is the run runtime.device=cpu is: one id, one
    training; on a machine with a GPU, auto would be cuda's run, not the CPU's stored record."""
    results = []
    for device in ("auto", "cpu"):
        settings = config.validate(compose_cfg([*TINY, "model=gru", f"runtime.device={device}"]))
        job = run.Job(dir=tmp_path / "jobs" / device)
        results.append(run.run_job(settings, job, tmp_path / "store", raise_on_failure=True).job)
    assert [r["outcome"] for r in results] == ["trained", "skipped"] and results[0]["id"] == results[1]["id"]
    record = json.loads((tmp_path / "store" / results[0]["id"] / "metrics.json").read_text())
    assert record["config"]["runtime"]["device"] == "cpu"


def test_a_thread_count_that_changes_results_is_fixed_for_the_run(compose_cfg, tmp_path):
    """With attention pooling (torch's products beside the compiled layers) the default
    runtime.threads=0 trains on one fixed count, named in the identity: no governor switches it."""
    settings = config.validate(compose_cfg([*TINY, "model=gru", "model.pooling=attention", "runtime.device=cpu",
                                            "runtime.threads=0"]))
    assert store.threads_change_results(to_plain(settings))
    job = run.Job(dir=tmp_path / "job", threads=2)  # runtime.threads=0 stands for the job's two cores
    record = json.loads((tmp_path / "store" / run.run_job(settings, job, tmp_path / "store",
                                                            raise_on_failure=True).job["id"] / "metrics.json").read_text())
    assert "thread_governor" not in record["env"] and record["config"]["runtime"]["threads"] == 2


def test_a_run_trained_again_after_its_record_was_damaged_gets_a_new_wandb_run(compose_cfg, tmp_path,
                                                                                  no_wandb_account):
    settings = config.validate(compose_cfg([*TINY, "logger=wandb", "logger.mode=offline"]))
    first = run.run_job(settings, run.Job(dir=tmp_path / "a"), tmp_path / "store", raise_on_failure=True)
    entry = tmp_path / "store" / first.job["id"]
    (entry / "metrics.json").write_text("[]")  # damaged: the run trains again
    again = run.run_job(settings, run.Job(dir=tmp_path / "b"), tmp_path / "store", raise_on_failure=True)
    assert again.job["outcome"] == "trained" and again.record["attempt"] == 2
    assert again.record["wandb"]["id"] == first.record["wandb"]["id"] + "-2"
    assert store.wandb_runs(entry) == {first.record["wandb"]["id"], again.record["wandb"]["id"]}


def test_the_identity_names_the_torch_and_numba_that_compute_the_numbers(compose_cfg, monkeypatch):
    """A store shared by two installs must not hand one torch's numbers to another."""
    base = identity(compose_cfg, [])
    assert set(store.numeric_versions()) == {"torch", "numba"}
    monkeypatch.setattr(store, "numeric_versions", lambda: {"torch": "0.0.1", "numba": "0.0.1"})
    assert identity(compose_cfg, [])[0] != base[0]
