"""Training runs end in a truthful record: reproducible, diverged, or failed with its traceback."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY
from rnnsweep import config, run
from rnnsweep.data.batches import Batch
from rnnsweep.loop import fit, macro_f1

TIMING = {"wall_s", "train/examples_per_s", "train/seconds"}


def train_tiny(compose_cfg, out_dir, overrides):
    return run.train(config.validate(compose_cfg([*TINY, *overrides])), None, out_dir)


def without_timing(record):
    metrics = {k: v for k, v in record["metrics"].items() if k not in TIMING}
    history = [{k: v for k, v in h.items() if k not in TIMING} for h in record["history"]]
    return metrics, history


@pytest.mark.parametrize("extra", [[], ["model=gru", "topology=deep_bi", "batching=packed"]])
def test_same_config_and_seed_give_identical_metrics(compose_cfg, tmp_path, extra):
    # Promised on the CPU; CUDA's embedding backward accumulates with atomics, in any order.
    extra = ["runtime.device=cpu", *extra]
    overrides = ["train.epochs=2", "seed=3", *extra]
    a = train_tiny(compose_cfg, tmp_path / "a", overrides)
    b = train_tiny(compose_cfg, tmp_path / "b", overrides)
    assert a["status"] == b["status"] == "completed"
    assert without_timing(a) == without_timing(b)
    c = train_tiny(compose_cfg, tmp_path / "c", ["train.epochs=2", "seed=4", *extra])
    assert without_timing(c) != without_timing(a)  # the seed is not ignored


def test_record_holds_what_a_report_needs(compose_cfg, tmp_path):
    rec = train_tiny(compose_cfg, tmp_path, ["train.epochs=2"])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(rec))
    assert on_disk["status"] == "completed"
    for key in ("test/acc", "test/macro_f1", "val/acc", "train/loss", "train/acc", "train/examples_per_s", "wall_s", "params"):
        assert isinstance(on_disk["metrics"][key], (int, float)), key
    assert [h["epoch"] for h in on_disk["history"]] == [1, 2]
    assert on_disk["config"]["train"]["epochs"] == 2
    assert set(on_disk["env"]) >= {"python", "torch", "rnnsweep", "git_commit", "device", "threads"}
    assert on_disk["data"]["train"] + on_disk["data"]["val"] == 120
    assert not list(tmp_path.glob(".metrics.json.*"))  # no temp file left behind


def test_nan_loss_ends_the_run_as_diverged(compose_cfg, tmp_path):
    rec = train_tiny(compose_cfg, tmp_path, ["model=bow", "optimizer=sgd", "optimizer.lr=1e10", "train.grad_clip=null", "logger.log_every=1"])
    assert rec["status"] == "diverged"
    assert "training loss became" in rec["error"]["message"]
    assert "test/acc" not in rec["metrics"]
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "diverged"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA to fail")
def test_an_exception_is_recorded_as_failed_with_its_traceback(compose_cfg, tmp_path):
    with pytest.raises(run.RunFailed, match="no CUDA device"):
        train_tiny(compose_cfg, tmp_path, ["runtime.device=cuda"])
    rec = json.loads((tmp_path / "metrics.json").read_text())
    assert rec["status"] == "failed"
    assert "Traceback" in rec["error"]["traceback"] and rec["error"]["type"] == "RuntimeError"


def test_macro_f1_matches_a_hand_computation():
    # rows: true class, columns: predicted. Class 2 never occurs and is never predicted.
    confusion = torch.tensor([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    f1_0 = 2 * 3 / (2 * 3 + 2 + 1)
    f1_1 = 2 * 4 / (2 * 4 + 1 + 2)
    assert macro_f1(confusion) == pytest.approx((f1_0 + f1_1) / 2)


class _Recorder:
    def __init__(self):
        self.steps = []

    def on_step(self, step, metrics):
        self.steps.append((step, metrics))

    def on_epoch(self, step, metrics):
        pass


class _BagOfThree(torch.nn.Module):
    """Three token ids -> three classes; fit calls a model with ids and lengths."""

    def __init__(self):
        super().__init__()
        self.embedding, self.fc = torch.nn.Embedding(50, 8), torch.nn.Linear(24, 3)

    def forward(self, ids, lengths):
        return self.fc(self.embedding(ids).flatten(1))


def test_step_and_epoch_metrics_are_the_example_weighted_loss_and_accuracy_of_their_batches():
    torch.manual_seed(0)
    model = _BagOfThree()
    sizes = [4, 4, 2, 4, 3, 4, 1]  # seven batches, uneven: windows of three leave one for the epoch's end
    batches = [Batch(torch.randint(0, 50, (n, 3)), torch.full((n,), 3), torch.randint(0, 3, (n,))) for n in sizes]
    with torch.no_grad():  # lr 0: every batch meets the initial weights
        losses = [torch.nn.functional.cross_entropy(model(b.ids, b.lengths), b.labels, reduction="sum").item()
                  for b in batches]
        correct = [(model(b.ids, b.lengths).argmax(1) == b.labels).sum().item() for b in batches]
    assert 0 < sum(correct) < sum(sizes)  # the accuracy checks below can tell right from wrong
    recorder = _Recorder()
    state = fit(model, torch.optim.SGD(model.parameters(), lr=0.0), lambda epoch: batches, lambda: [],
                epochs=1, steps_per_epoch=len(batches), num_classes=3, device=torch.device("cpu"), log_every=3,
                callbacks=[recorder])
    windows = [slice(0, 3), slice(3, 6)]
    assert [step for step, _ in recorder.steps] == [3, 6]
    for (_, metrics), w in zip(recorder.steps, windows):
        assert metrics["train/loss"] == pytest.approx(sum(losses[w]) / sum(sizes[w]))
        assert metrics["train/acc"] == pytest.approx(sum(correct[w]) / sum(sizes[w]))
    epoch = state.history[0]
    assert epoch["train/loss"] == pytest.approx(sum(losses) / sum(sizes))
    assert epoch["train/acc"] == pytest.approx(sum(correct) / sum(sizes))
    assert state.train_examples == sum(sizes)


def test_an_exploding_loss_ends_the_run_as_diverged_and_no_table_averages_or_bolds_it(compose_cfg, tmp_path):
    from rnnsweep.report import build

    # Finite all along, just huge: a learning rate of a million.
    exploded = train_tiny(compose_cfg, tmp_path / "a", ["model=lstm", "optimizer.lr=1e6", "train.epochs=2"])
    assert exploded["status"] == "diverged", exploded["metrics"]
    assert "times the loss of guessing" in exploded["error"]["message"]
    assert "test/acc" not in exploded["metrics"]
    sane = train_tiny(compose_cfg, tmp_path / "b", ["model=lstm", "train.epochs=2"])
    assert sane["status"] == "completed"
    report = build([str(tmp_path)], None)
    rows = [line for line in report.table_markdown.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 1 and "1e+06" not in rows[0] and "1000000" not in rows[0]
    assert "Excluded from the means: 1 diverged" in report.table_markdown


def test_a_completed_run_leaves_a_model_that_loads_without_pickle_and_scores_the_same(compose_cfg, tmp_path):
    import json
    from pathlib import Path

    import numpy as np

    from rnnsweep import builders
    from rnnsweep.data import batches, prepare
    from rnnsweep.model import TextClassifier
    from rnnsweep.loop import evaluate

    settings = config.validate(compose_cfg([*TINY, "model=gru", "train.epochs=2", "topology=bi"]))
    record = run.train(settings, None, tmp_path)
    exported = Path(record["model"]["dir"])
    assert record["model"]["bytes"] == sum(p.stat().st_size for p in exported.iterdir())
    meta = json.loads((exported / "model.json").read_text())
    assert meta["classes"] == record["data"]["classes"] and (exported / "vocab.json").is_file()
    arch = dict(meta["architecture"])
    net = TextClassifier(arch.pop("vocab_size"), arch.pop("num_classes"), **arch)
    weights = np.load(exported / "weights.npz", allow_pickle=False)
    net.load_state_dict({name: torch.from_numpy(weights[name]) for name in weights.files})
    cache = builders.cache_dir(settings.runtime, Path.cwd())
    data = prepare(builders.data_source(settings.data, Path.cwd(), cache), builders.split_options(settings.data),
                   builders.tokenizer_options(settings.tokenizer), cache)
    test = evaluate(net, batches.iterate(data.test, 512, shuffle=False), data.num_classes, torch.device("cpu"))
    assert test["acc"] == record["metrics"]["test/acc"]
    off = run.train(config.validate(compose_cfg([*TINY, "ledger.keep_model=false"])), None, tmp_path / "off")
    assert off["model"] is None and not (tmp_path / "off" / "model").exists()
