"""W&B: the real offline run files hold what the result record holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import wandb

from conftest import TINY
from rnnsweep import config, run, store, tracking
from wandb_records import read_offline_run


def offline_runs(out_dir: Path):
    return sorted((out_dir / "wandb").glob("offline-run-*"))


def test_offline_run_holds_config_history_and_summary(compose_cfg, tmp_path, no_wandb_account):
    cfg = compose_cfg([*TINY, "logger=wandb", "train.epochs=2", "logger.log_every=2", "seed=5", "logger.log_model=true"])
    job = run.Job(dir=tmp_path, name="model=lstm,seed=5", sweep="sweep", choices={"model": "lstm", "batching": "padded"})
    identity = store.Identity(run_id="0123456789abcdef", group_id="fedcba9876543210")
    record = run.train(config.validate(cfg), job, tmp_path, identity=identity)

    (run_dir,) = offline_runs(tmp_path)
    offline = read_offline_run(run_dir)
    assert record["wandb"]["id"] == offline.run_id == identity.run_id and record["wandb"]["mode"] == "offline"
    assert (offline.name, offline.group, offline.job_type) == ("model=lstm,seed=5", "lstm-padded-fedcba98", "sweep")
    assert {"model:lstm", "batching:padded"} <= set(offline.tags)
    assert offline.config["seed"] == 5 and offline.config["model"]["arch"] == "lstm"
    assert offline.config["optimizer"] == record["config"]["optimizer"]
    for key in ("test/acc", "test/macro_f1", "val/acc", "train/loss", "params"):
        assert offline.summary[key] == pytest.approx(record["metrics"][key]), key
    assert offline.summary["status"] == "completed" and offline.exit_code == 0
    epochs = [h for h in offline.history if "val/acc" in h]
    assert [h["epoch"] for h in epochs] == [1, 2]
    assert epochs[-1]["val/acc"] == pytest.approx(record["history"][-1]["val/acc"])
    assert any("train/loss" in h and "val/acc" not in h for h in offline.history)  # step-level logs
    # The environment's packages, for W&B's Files tab, listed once per process and uploaded at the end.
    assert "requirements.txt" in offline.files
    # logger.log_model=true: the exported model goes up as an artifact of type model.
    assert offline.artifacts == [(f"model-{identity.run_id}", "model")]
    packages = (run_dir / "files" / "requirements.txt").read_text().splitlines()
    assert f"torch=={torch.__version__}" in packages and f"wandb=={wandb.__version__}" in packages


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA to fail")
def test_a_failed_run_still_closes_its_wandb_run_as_failed(compose_cfg, tmp_path, no_wandb_account):
    # The failure happens before the tracker opens: the record says failed and no W&B run dangles.
    cfg = compose_cfg([*TINY, "logger=wandb", "runtime.device=cuda"])
    with pytest.raises(run.RunFailed):
        run.train(config.validate(cfg), None, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"
    assert offline_runs(tmp_path) == []


def test_diverged_run_is_finished_with_its_status(compose_cfg, tmp_path, no_wandb_account):
    cfg = compose_cfg([*TINY, "logger=wandb", "model=bow", "optimizer=sgd", "optimizer.lr=1e10",
                       "train.grad_clip=null", "logger.log_every=1"])
    record = run.train(config.validate(cfg), None, tmp_path)
    (run_dir,) = offline_runs(tmp_path)
    offline = read_offline_run(run_dir)
    assert record["status"] == "diverged" == offline.summary["status"]
    assert offline.exit_code == 0  # a finished experiment with a finding, not a crash


def test_mode_follows_explicit_setting_then_env_then_key(monkeypatch, tmp_path, no_wandb_account):
    assert tracking.resolve_wandb_mode("auto") == ("offline", "W&B: no API key configured, logging offline")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password 0123456789\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert tracking.resolve_wandb_mode("auto") == ("online", None)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.resolve_wandb_mode("auto") == ("disabled", None)
    assert tracking.resolve_wandb_mode("offline") == ("offline", None)
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert tracking.resolve_wandb_mode("auto") == ("online", None)


def test_an_empty_wandb_mode_means_unset_and_an_unknown_one_is_one_line(tmp_path):
    from conftest import run_cli

    common = [*TINY, "logger=wandb", f"ledger.store={tmp_path / 'store'}"]
    # `WANDB_MODE=` as a shell or CI leaves it: W&B itself would reject it and fail the run.
    res = run_cli([*common, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, WANDB_MODE="")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "completed"
    assert read_offline_run(next((Path(record["wandb"]["dir"])).glob("offline-run-*"))).run_id == record["wandb"]["id"]

    bad = run_cli([*common, f"hydra.run.dir={tmp_path / 'bad'}"], cwd=tmp_path, WANDB_MODE="offlin")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "rnnsweep: error: WANDB_MODE='offlin' in the environment: W&B accepts online, offline or disabled "
        "(or leave it unset)"]
    assert not (tmp_path / "bad" / "metrics.json").exists()
    none = run_cli([*TINY, "logger=none", f"ledger.store={tmp_path / 'store'}", f"hydra.run.dir={tmp_path / 'n'}"],
                   cwd=tmp_path, WANDB_MODE="offlin")
    assert none.returncode == 0  # without W&B, its settings do not matter
