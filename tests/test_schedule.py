"""Learning-rate schedules, best-epoch selection and early stopping: the rates torch computes,
the epoch the record names, and a run cut mid-way that resumes to the same numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler

from conftest import TINY
from rnnsweep import builders, checkpoint, config, run, schedule, store
from rnnsweep.data import DataError, prepare
from rnnsweep.data.batches import iterate, num_batches
from rnnsweep.loop import fit

TIMING = ("train/examples_per_s", "train/seconds", "wall_s")
SMALL = [*TINY, "runtime.device=cpu", "data.train_size=400", "data.test_size=100", "train.batch_size=16"]

SCHEDULES = {
    "cosine": ["scheduler=cosine", "scheduler.eta_min=0.0002"],
    "linear_warmup": ["scheduler=linear_warmup", "scheduler.warmup_steps=7", "scheduler.start_factor=0.1",
                      "scheduler.end_factor=0.05"],
    "plateau": ["scheduler=plateau", "scheduler.patience=0", "scheduler.factor=0.5", "scheduler.threshold=0.5"],
}
# Every optimizer option; on the CPU `adam` is deferred Adam (the fast path), `scattered` the other.
OPTIMIZERS = {
    "adam": ["optimizer=adam"],
    "adam_scattered": ["optimizer=adam", "optimizer.embedding_grad=scattered"],
    "adam_dense": ["optimizer=adam", "optimizer.embedding_grad=dense"],
    "adamw": ["optimizer=adamw", "optimizer.weight_decay=0.01"],
    "sgd": ["optimizer=sgd", "optimizer.lr=0.1"],
    "sparse_adam": ["optimizer=sparse_adam"],
}


def torch_reference(name: str, settings, lr: float, total_steps: int, steps_per_epoch: int, val_accs: list[float]):
    """The rate of every step, from torch's scheduler on a bare optimizer with the same settings."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    if name == "cosine":
        sched = lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps, eta_min=settings.eta_min)
    elif name == "linear_warmup":
        sched = lr_scheduler.SequentialLR(opt, [
            lr_scheduler.LinearLR(opt, start_factor=settings.start_factor, total_iters=settings.warmup_steps),
            lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=settings.end_factor,
                                  total_iters=total_steps - settings.warmup_steps)], milestones=[settings.warmup_steps])
    else:
        sched = lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=settings.factor, patience=settings.patience,
                                               threshold=settings.threshold, min_lr=settings.min_lr)
    rates = []
    for step in range(total_steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        if name == "plateau":
            if (step + 1) % steps_per_epoch == 0:
                sched.step(val_accs[(step + 1) // steps_per_epoch - 1])
        else:
            sched.step()
    return rates


class StepRates:
    def __init__(self):
        self.rates: list[float] = []

    def on_step(self, step, metrics):
        self.rates.append(metrics["lr"])

    def on_epoch(self, step, metrics):
        pass


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_gives_each_step_torchs_rate_with_every_optimizer(compose_cfg, name, optimizer):
    settings = config.validate(compose_cfg([*SMALL, "train.epochs=3", *SCHEDULES[name], *OPTIMIZERS[optimizer]]))
    cache = builders.cache_dir(settings.runtime, Path.cwd())
    data = prepare(builders.data_source(settings.data, Path.cwd(), cache), builders.split_options(settings.data),
                   builders.tokenizer_options(settings.tokenizer), cache)
    device = torch.device("cpu")
    torch.manual_seed(0)  # the same weights whichever tests ran before: plateau's reductions depend on them
    grad = builders.embedding_grad(settings.optimizer, device)
    model = builders.build_model(settings.model, settings.topology, settings.batching, vocab_size=data.vocab_size,
                                 num_classes=data.num_classes, embedding_grad=grad, compiled_rnn=True)
    opt = builders.build_optimizer(settings.optimizer, model, grad)
    steps = num_batches(data.train, 16)
    sched = schedule.build(settings.scheduler, opt, total_steps=3 * steps)
    rates = StepRates()
    state = fit(model, opt, lambda epoch: iterate(data.train, 16, shuffle=True, generator=torch.Generator().manual_seed(epoch)),
                lambda: iterate(data.val, 64, shuffle=False), epochs=3, steps_per_epoch=steps, num_classes=data.num_classes,
                device=device, log_every=1, callbacks=[rates], schedule=sched, pending_work=None)
    expected = torch_reference(name, settings.scheduler, settings.optimizer.lr, 3 * steps, steps,
                               [h["val/acc"] for h in state.history])
    assert rates.rates == expected  # exactly: torch's own classes, stepped where they belong
    assert len(set(expected)) > 1  # the schedule did change the rate
    assert [h["lr"] for h in state.history] == expected[::steps]


def test_deferred_adam_under_a_schedule_trains_dense_adams_weights(compose_cfg, tmp_path):
    """Deferred Adam replays a row's missed steps at the rates they had: after a whole run under a
    cosine schedule every weight, the embedding table's included, is dense Adam's to float32
    rounding (a replay at the wrong rate moves rows by orders of magnitude more)."""
    common = [*SMALL, "train.epochs=2", "scheduler=cosine", "optimizer.lr=0.01"]
    weights = {}
    for grad in ("deferred", "dense"):
        settings = config.validate(compose_cfg([*common, f"optimizer.embedding_grad={grad}"]))
        record = run.train(settings, None, tmp_path / grad)
        with np.load(Path(record["model"]["dir"]) / "weights.npz") as saved:
            weights[grad] = {k: saved[k] for k in saved.files}
    start = config.validate(compose_cfg([*common, "train.epochs=1", "scheduler=constant", "optimizer.lr=1e-9"]))
    with np.load(Path(run.train(start, None, tmp_path / "start")["model"]["dir"]) / "weights.npz") as saved:
        moved = np.abs(weights["dense"]["embedding.weight"] - saved["embedding.weight"]).max()
    assert moved > 1e-2  # the table did train
    for name, dense in weights["dense"].items():
        np.testing.assert_allclose(weights["deferred"][name], dense, rtol=0, atol=2e-5, err_msg=name)


def test_best_val_selects_the_best_epochs_model_and_says_which(compose_cfg, tmp_path):
    overrides = [*SMALL, "seed=1", "optimizer.lr=0.05"]
    best_run = run.train(config.validate(compose_cfg([*overrides, "train.epochs=5", "train.select=best_val"])), None,
                         tmp_path / "best")
    history = best_run["history"]
    accs = [h["val/acc"] for h in history]
    chosen = accs.index(max(accs)) + 1
    assert best_run["selection"] == {"rule": "best_val", "epoch": chosen, "epochs_trained": 5, "stopped_early": False}
    assert best_run["metrics"]["val/acc"] == max(accs)
    # The same run stopped at that epoch (select=last) has the same weights, hence the same test numbers.
    stopped = run.train(config.validate(compose_cfg([*overrides, f"train.epochs={chosen}"])), None, tmp_path / "last")
    assert stopped["selection"]["rule"] == "last"
    assert best_run["metrics"]["test/acc"] == stopped["metrics"]["test/acc"]
    assert best_run["metrics"]["test/loss"] == stopped["metrics"]["test/loss"]


def test_patience_stops_the_run_once_validation_stops_improving(compose_cfg, tmp_path):
    # A rate so low nothing improves after the first epochs' luck: patience 1 ends the run early.
    settings = config.validate(compose_cfg([*SMALL, "train.epochs=8", "train.patience=1", "optimizer.lr=1e-5",
                                            "train.select=best_val"]))
    record = run.train(settings, None, tmp_path / "run")
    history = record["history"]
    sel = record["selection"]
    assert sel["stopped_early"] and sel["epochs_trained"] == len(history) < 8
    accs = [h["val/acc"] for h in history]
    assert history[-1]["epoch"] - sel["epoch"] == 1 and max(accs[sel["epoch"]:]) <= accs[sel["epoch"] - 1]


class Cut(BaseException):
    """What a kill does to the run: nothing after the checkpoint of the epoch it hit."""


@pytest.mark.parametrize("optimizer,name", [("adam", "cosine"), ("sparse_adam", "cosine"), ("sgd", "cosine"),
                                            ("adam_scattered", "cosine"), ("adam", "linear_warmup"),
                                            ("adamw", "plateau")])
def test_a_run_cut_mid_way_resumes_to_the_uninterrupted_numbers(compose_cfg, tmp_path, monkeypatch, optimizer, name):
    overrides = [*SMALL, "seed=3", "train.epochs=5", "train.select=best_val", "train.patience=3", *SCHEDULES[name],
                 "topology=deep", *OPTIMIZERS[optimizer]]
    settings = lambda: config.validate(compose_cfg(overrides))  # noqa: E731
    full = run.train(settings(), None, tmp_path / "full")

    save = checkpoint.save

    def save_then_die(path, model, opt, state, **kw):
        save(path, model, opt, state, **kw)
        if state.epoch == 3:
            raise Cut

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(Cut):
        run.train(settings(), None, tmp_path / "cut")
    monkeypatch.setattr(checkpoint, "save", save)
    resumed = run.train(settings(), None, tmp_path / "cut", resume=True)

    assert resumed["resumed_from_epoch"] == 3
    strip = lambda m: {k: v for k, v in m.items() if k not in TIMING}  # noqa: E731
    assert strip(resumed["metrics"]) == strip(full["metrics"])
    assert [strip(h) for h in resumed["history"]] == [strip(h) for h in full["history"]]
    assert resumed["selection"] == full["selection"]


def test_a_schedule_and_selection_are_part_of_the_run_identity(compose_cfg):
    ids = set()
    for extra in ([], ["scheduler=cosine"], ["scheduler=plateau"], ["train.select=best_val"], ["train.patience=2"]):
        settings = config.validate(compose_cfg([*TINY, *extra]))
        ids.add(store.run_identity(config.to_plain(settings), "data").run_id)
    assert len(ids) == 5


@pytest.mark.parametrize("override,message", [
    ("train.patience=0", "train.patience=0: must be at least 1"),
    ("scheduler=linear_warmup scheduler.start_factor=0", "scheduler.start_factor=0.0: must be in (0, 1]"),
    ("scheduler=plateau scheduler.factor=1.5", "scheduler.factor=1.5: must be in (0, 1)"),
    ("scheduler=cosine scheduler.eta_min=-1", "scheduler.eta_min=-1.0: must be a number >= 0"),
    ("train.select=best", "train.select"),
    ("scheduler=cosine scheduler.eta_min=0.01", "scheduler.eta_min=0.01: is where the rate ends; it must be at most "
                                                 "optimizer.lr=0.002"),
    ("scheduler=plateau scheduler.min_lr=0.01", "scheduler.min_lr=0.01: must be below optimizer.lr=0.002"),
])
def test_bad_schedule_and_selection_settings_are_one_line_errors(compose_cfg, override, message):
    with pytest.raises(Exception) as err:
        config.validate(compose_cfg([*TINY, *override.split()]))
    assert message in str(err.value)


def test_a_warm_up_longer_than_the_run_is_refused_before_training(compose_cfg, tmp_path):
    settings = config.validate(compose_cfg([*TINY, "train.epochs=2", "scheduler=linear_warmup"]))  # 8 steps
    with pytest.raises(DataError, match=r"scheduler.warmup_steps=100: this run has 8 optimizer steps"):
        run.run_job(settings, run.Job(dir=tmp_path / "job"), tmp_path / "store", raise_on_failure=True)
    assert not (tmp_path / "store").exists()


def test_a_key_of_another_schedule_names_the_schedule_that_has_it(compose_cfg):
    from rnnsweep import cli

    with pytest.raises(Exception) as err:
        compose_cfg([*TINY, "scheduler.eta_min=0.1"])
    assert cli.describe(err.value).endswith("scheduler.eta_min is a key of scheduler=cosine, not of the scheduler "
                                            "chosen: add scheduler=cosine")
