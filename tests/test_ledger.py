"""Run identity, the store's decisions, and exact resumption from an epoch checkpoint."""

from __future__ import annotations

import json

import pytest
from filelock import FileLock

from conftest import TINY
from rnnsweep import config, job, ledger
from rnnsweep.config import to_plain

TIMING = {"wall_s", "train/examples_per_s", "train/seconds"}


def identity(compose_cfg, overrides):
    s = config.validate(compose_cfg([*TINY, *overrides]))
    return ledger.run_identity(to_plain(s), job.data_fingerprint(s))


def test_identity_ignores_what_cannot_change_the_result(compose_cfg):
    base = identity(compose_cfg, [])
    for harmless in (["logger=wandb"], ["runtime.threads=2"], ["runtime.compiled_rnn=false"], ["runtime.progress=on"],
                     ["ledger.force=true"], ["ledger.store=/elsewhere"], ["logger.log_every=7"]):
        assert identity(compose_cfg, harmless) == base, harmless
    for meaningful in (["optimizer.lr=0.01"], ["model=gru"], ["data.seed=9"], ["data.variant=long_range"],
                       ["train.epochs=2"], ["batching=packed"]):
        assert identity(compose_cfg, meaningful)[0] != base[0], meaningful


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
    assert ledger.decide(status, force, checkpoint) == action


def test_a_running_entry_is_told_from_a_cut_one_by_its_lock(tmp_path):
    entry = ledger.Store(tmp_path).entry("abc")
    assert entry.status() == "new"
    entry.dir.mkdir()
    entry.record_path.write_text(json.dumps({"status": "running"}))
    assert entry.status() == "interrupted"  # nobody holds the lock: the process died
    with FileLock(entry.dir / ledger.LOCK):
        assert entry.status() == "running"
    entry.record_path.write_text("{ half a rec")
    assert entry.status() == "new"  # unreadable record: nothing to trust


@pytest.mark.parametrize("extra", [["model=lstm"], ["model=gru", "topology=deep", "batching=packed"]])
def test_resuming_from_an_epoch_checkpoint_gives_the_uninterrupted_metrics(compose_cfg, tmp_path, extra):
    # Dropout (topology=deep) makes the RNG state part of what must be restored.
    overrides = [*TINY, "runtime.device=cpu", "seed=2", *extra]
    full = job.run(config.validate(compose_cfg([*overrides, "train.epochs=3"])), job.RunContext(out_dir=tmp_path / "full"))

    cut = tmp_path / "cut"  # a run that stopped after epoch 1 leaves this checkpoint behind
    job.run(config.validate(compose_cfg([*overrides, "train.epochs=1"])), job.RunContext(out_dir=cut, keep_checkpoint=True))
    assert (cut / ledger.CHECKPOINT).is_file()
    resumed = job.run(config.validate(compose_cfg([*overrides, "train.epochs=3"])), job.RunContext(out_dir=cut, resume=True))

    assert resumed["resumed_from_epoch"] == 1
    strip = lambda m: {k: v for k, v in m.items() if k not in TIMING}  # noqa: E731
    assert strip(resumed["metrics"]) == strip(full["metrics"])
    assert [strip(h) for h in resumed["history"]] == [strip(h) for h in full["history"]]
    assert not (cut / ledger.CHECKPOINT).exists()  # removed once the run completed


def test_an_unreadable_checkpoint_means_training_from_scratch(compose_cfg, tmp_path):
    overrides = [*TINY, "runtime.device=cpu", "train.epochs=2"]
    fresh = job.run(config.validate(compose_cfg(overrides)), job.RunContext(out_dir=tmp_path / "a"))
    broken = tmp_path / "b"
    broken.mkdir()
    (broken / ledger.CHECKPOINT).write_bytes(b"not a checkpoint")
    rerun = job.run(config.validate(compose_cfg(overrides)), job.RunContext(out_dir=broken, resume=True))
    assert rerun["resumed_from_epoch"] is None
    assert rerun["metrics"]["test/acc"] == fresh["metrics"]["test/acc"]
    assert rerun["history"][-1]["train/loss"] == fresh["history"][-1]["train/loss"]


def test_the_lock_holder_sees_a_running_record_as_its_own_to_resume(tmp_path):
    entry = ledger.Store(tmp_path).entry("abc")
    entry.dir.mkdir()
    entry.record_path.write_text(json.dumps({"status": "running"}))
    with entry.lock():
        assert entry.status() == "running"
        assert entry.status(holding_lock=True) == "interrupted"
