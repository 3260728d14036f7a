"""One training run, start to finish: data -> model -> fit -> test -> result record.

Takes the validated config as plain dataclasses plus what the launcher knows about the run
(its directory, name, group); knows nothing of Hydra. Whatever happens, the run ends with a
result record whose `status` says how it ended, and its W&B run closed.
"""

from __future__ import annotations

import logging
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint, cpu_rnn, deferred_adam, tracking
from . import data as data_sources
from .config import (
    AgNewsDataConfig,
    HfDataConfig,
    LoggerBackend,
    Progress,
    RootConfig,
    SyntheticDataConfig,
    TableDataConfig,
    to_plain,
)
from .data import batches, sources
from .data.pipeline import SplitOptions, TokenizerOptions
from .ledger import CHECKPOINT
from .model import TextClassifier, count_parameters
from .optim import LazyAdam, make_optimizer
from .train import Diverged, evaluate, fit

log = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """Training raised; the record with the traceback is at `record_path`."""

    def __init__(self, message: str, record_path: Path):
        super().__init__(f"{message} (traceback in {record_path})")
        self.record_path = record_path


@dataclass
class RunContext:
    out_dir: Path  # the run's own directory: record, checkpoint, W&B files
    name: str = "run"
    group: str | None = None  # W&B group
    job_type: str = "train"  # W&B job type
    choices: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    run_id: str | None = None  # the ledger's identity, see ledger.run_identity
    group_id: str | None = None
    attempt: int = 1  # how many times this identity has been trained from scratch
    wandb_id: str | None = None  # W&B run id; a resumed run reuses it
    resume: bool = False  # continue from out_dir's checkpoint, if one can be read
    keep_checkpoint: bool = False  # keep the last epoch's checkpoint after the run ends
    base_dir: Path = field(default_factory=Path.cwd)  # relative data paths start here
    splits: data_sources.Splits | None = None  # already loaded by the caller, else loaded here


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device=cuda but no CUDA device is visible; use runtime.device=auto or cpu")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def cache_dir(cfg: RootConfig, base_dir: Path) -> Path:
    if cfg.runtime.cache_dir is None:
        return sources.default_cache_dir()
    return base_dir / Path(cfg.runtime.cache_dir).expanduser()


def data_source(cfg: RootConfig, base_dir: Path) -> "data_sources.pipeline.Source":
    """The configured source, with relative paths taken from `base_dir`."""
    d = cfg.data

    def path(value: str) -> Path:
        return base_dir / Path(value).expanduser()

    if isinstance(d, SyntheticDataConfig):
        return sources.Synthetic(variant=d.variant.value, train_size=d.train_size, test_size=d.test_size, seed=d.seed)
    if isinstance(d, AgNewsDataConfig):
        root = path(d.root) if d.root is not None else cache_dir(cfg, base_dir) / "ag_news"
        return sources.AgNews(root=root, download=d.download, urls={"train": d.train_url, "test": d.test_url},
                              md5={"train": d.train_md5, "test": d.test_md5}, clean=d.clean, drop_empty=d.drop_empty)
    if isinstance(d, TableDataConfig):
        return sources.Table(train=path(d.train), test=path(d.test) if d.test is not None else None,
                             fmt=d.format.value, text_columns=d.text_columns, label_column=d.label_column,
                             header=d.header, label_offset=d.label_offset, classes=d.classes, drop_empty=d.drop_empty)
    if isinstance(d, HfDataConfig):
        local = path(d.dataset)
        return sources.HuggingFace(dataset=str(local) if local.exists() else d.dataset, subset=d.subset,
                                   revision=d.revision, train_split=d.train_split, test_split=d.test_split,
                                   text_columns=d.text_columns, label_column=d.label_column, drop_empty=d.drop_empty)
    raise ValueError(f"no loader for data={d.name}")


def split_options(cfg: RootConfig) -> SplitOptions:
    d = cfg.data
    return SplitOptions(val_fraction=d.val_fraction, test_fraction=getattr(d, "test_fraction", 0.1),
                        limit=getattr(d, "limit", None), seed=d.seed)


def tokenizer_options(cfg: RootConfig) -> TokenizerOptions:
    t = cfg.tokenizer
    return TokenizerOptions(name=t.name.value, min_freq=t.min_freq, max_vocab=t.max_vocab, lowercase=t.lowercase)


def load_data(cfg: RootConfig, base_dir: Path, progress: bool = False) -> data_sources.Splits:
    return data_sources.prepare(data_source(cfg, base_dir), split_options(cfg), tokenizer_options(cfg),
                                cache_dir(cfg, base_dir), progress=progress)


def data_fingerprint(cfg: RootConfig, base_dir: Path | None = None) -> str:
    """The content the run trains on (file checksums, generator version) and how it is split."""
    return data_sources.data_fingerprint(data_source(cfg, base_dir or Path.cwd()), split_options(cfg))


def build_model(cfg: RootConfig, splits: data_sources.Splits, device: torch.device) -> TextClassifier:
    m, t = cfg.model, cfg.topology
    return TextClassifier(
        splits.vocab_size,
        splits.num_classes,
        arch=m.arch.value,
        embed_dim=m.embed_dim,
        hidden_dim=m.hidden_dim,
        num_layers=t.num_layers,
        bidirectional=t.bidirectional,
        dropout=t.dropout,
        pooling=m.pooling.value,
        packed=cfg.batching.mode.value == "packed",
        embed_init=m.embed_init.value,
        sparse_embedding=sparse_embedding(cfg, device),
        native_packing=cfg.batching.native_packing,
        compiled_rnn=cfg.runtime.compiled_rnn,
    )


def embedding_grad(cfg: RootConfig, device: torch.device) -> str:
    """How the embedding's gradient reaches the optimizer: `dense`, `scattered`, `deferred` (see
    optim.make_optimizer) or `sparse` (lazy Adam). `auto` takes deferred Adam on the CPU, where
    a pass over the whole table dominates a step, except for Adam's L2 decay, which it cannot defer."""
    o = cfg.optimizer
    if o.name.value == "sparse_adam":
        return "sparse"
    choice = getattr(o, "embedding_grad", None)
    if choice is None:
        return "dense"
    if choice.value != "auto":
        if choice.value == "deferred" and device.type != "cpu":
            raise ValueError(f"optimizer.embedding_grad=deferred runs on the CPU; this run is on {device.type} "
                             "(use optimizer.embedding_grad=auto)")
        return choice.value
    if device.type != "cpu":
        return "dense"
    return "deferred" if o.name.value == "adamw" or o.weight_decay == 0 else "scattered"


def sparse_embedding(cfg: RootConfig, device: torch.device) -> bool:
    return embedding_grad(cfg, device) != "dense"


def build_optimizer(cfg: RootConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    o = cfg.optimizer
    options = {k: getattr(v, "value", v) for k, v in vars(o).items()
               if k not in ("name", "lr", "weight_decay", "embedding_grad")}
    if hasattr(o, "embedding_grad"):
        options["embedding_grad"] = embedding_grad(cfg, device)
    return make_optimizer(o.name.value, model, lr=o.lr, weight_decay=getattr(o, "weight_decay", 0.0), **options)


def warm_up_compiled_loops(model: TextClassifier, optimizer) -> None:
    """numba compiles each loop at its first call: seconds, the first time after an install. Make
    those calls here, on tiny tensors, so that the timed epoch (and the examples/s a report
    compares across runs) does not include them."""
    if model.rnn is not None and model.compiled_rnn and cpu_rnn.kind_of(model.rnn) is not None:
        cpu_rnn.warm_up(type(model.rnn))
    if isinstance(optimizer, deferred_adam.DeferredAdam):
        deferred_adam.warm_up(lazy=False)
    elif isinstance(optimizer, LazyAdam):
        deferred_adam.warm_up(lazy=True)


def open_tracker(cfg: RootConfig, ctx: RunContext):
    lg = cfg.logger
    if lg.backend is LoggerBackend.none or lg.mode.value == "disabled":
        return tracking.NoTracker()
    tags = [f"{k}:{v}" for k, v in sorted(ctx.choices.items()) if v is not None] + list(lg.tags)
    return tracking.WandbTracker(
        project=lg.project,
        entity=lg.entity,
        mode=lg.mode.value,
        name=ctx.name,
        group=ctx.group,
        job_type=ctx.job_type,
        tags=tags,
        config={**to_plain(cfg), "run_id": ctx.run_id, "group_id": ctx.group_id},
        directory=ctx.out_dir,
        run_id=ctx.wandb_id,
    )


def show_progress(cfg: RootConfig) -> bool:
    return cfg.runtime.progress is Progress.on or (cfg.runtime.progress is Progress.auto and sys.stderr.isatty())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run(cfg: RootConfig, ctx: RunContext) -> dict[str, Any]:
    """Train and test one configuration; returns the result record it wrote."""
    started, t0 = _now(), time.perf_counter()
    seed_everything(cfg.seed)
    if cfg.runtime.threads > 0:
        torch.set_num_threads(cfg.runtime.threads)
    cpu_rnn.set_threads(torch.get_num_threads())  # the compiled layers' loops: as many threads as torch's
    progress = show_progress(cfg)

    record: dict[str, Any] = {
        # Stays "interrupted" only if something outside Exception (Ctrl-C, SIGTERM) ends the run.
        "status": "interrupted",
        "name": ctx.name,
        "group": ctx.group,
        "choices": ctx.choices,
        "overrides": ctx.overrides,
        "config": to_plain(cfg),
        "metrics": {},
        "history": [],
        "data": {},
        "env": {},
        "id": ctx.run_id,
        "group_id": ctx.group_id,
        "attempt": ctx.attempt,
        "resumed_from_epoch": None,
        "wandb": None,
        "error": None,
        "started_at": started,
        "finished_at": None,
    }
    tracker = tracking.NoTracker()
    failure: BaseException | None = None
    try:
        device = pick_device(cfg.runtime.device.value)
        record["env"] = tracking.environment(device, torch.get_num_threads())
        splits = ctx.splits or load_data(cfg, ctx.base_dir, progress)
        meta = splits.meta
        record["data"] = {
            "name": cfg.data.name,
            "classes": list(splits.class_names),
            "train": len(splits.train),
            "val": len(splits.val),
            "test": len(splits.test),
            "vocab_size": splits.vocab_size,
            "fingerprint": meta["fingerprint"],
            "label_mapping": meta.get("label_mapping"),
            "dropped_empty": meta.get("dropped_empty", {}),
            "warnings": meta.get("warnings", []),
            "tokens": meta.get("tokens", {}),
            "cache": str(splits.directory),
        }
        model = build_model(cfg, splits, device).to(device)
        optimizer = build_optimizer(cfg, model, device)
        ckpt_path = ctx.out_dir / CHECKPOINT
        state = checkpoint.load(ckpt_path, model, optimizer) if ctx.resume else None
        if state is None and ctx.resume:  # unreadable: start clean, exactly as a fresh run would
            seed_everything(cfg.seed)
            model = build_model(cfg, splits, device).to(device)
            optimizer = build_optimizer(cfg, model, device)
        if state is not None:
            record["resumed_from_epoch"] = state.epoch
            log.info("resuming %s from its epoch-%d checkpoint", ctx.out_dir, state.epoch)
        record["metrics"]["params"] = count_parameters(model)
        if device.type == "cpu":
            warm_up_compiled_loops(model, optimizer)
        batches.warm_up(splits.train)
        tracker = open_tracker(cfg, ctx)
        if tracker.run_id is not None:
            record["wandb"] = {"id": tracker.run_id, "mode": tracker.mode, "dir": str(ctx.out_dir / "wandb")}

        tr = cfg.train
        shuffle = torch.Generator()

        bucket = cfg.batching.bucket_pool if cfg.batching.bucket else None
        pin = device.type == "cuda"

        def train_batches(epoch: int):
            # Seeded per epoch, so epoch k's batch order does not depend on how we got there.
            shuffle.manual_seed(cfg.seed * 1_000_003 + epoch)
            return batches.iterate(splits.train, tr.batch_size, shuffle=True, generator=shuffle, bucket_pool=bucket,
                                   limit=tr.epoch_size, pin=pin)

        def eval_batches(split):
            # Evaluation order changes no metric: sort the whole split by length when bucketing.
            whole = batches.num_batches(split, tr.eval_batch_size) if bucket else None
            return lambda: batches.iterate(split, tr.eval_batch_size, shuffle=False, bucket_pool=whole, pin=pin)

        record["status"] = "running"
        tracking.write_record(ctx.out_dir, record)
        try:
            result = fit(
                model,
                optimizer,
                train_batches,
                eval_batches(splits.val),
                epochs=tr.epochs,
                steps_per_epoch=batches.num_batches(splits.train, tr.batch_size, tr.epoch_size),
                num_classes=splits.num_classes,
                device=device,
                grad_clip=tr.grad_clip,
                log_every=cfg.logger.log_every,
                callbacks=[tracker],
                progress=progress,
                state=state,
                on_epoch_end=lambda st: checkpoint.save(ckpt_path, model, optimizer, st),
                amp=cfg.runtime.amp,
            )
        except Diverged as ex:
            record["status"] = "diverged"
            record["error"] = {"type": "Diverged", "message": str(ex)}
            record["history"] = ex.history
            log.warning("run diverged: %s", ex)
        else:
            test = evaluate(model, eval_batches(splits.test)(), splits.num_classes, device, cfg.runtime.amp)
            last = result.history[-1]
            record["history"] = result.history
            record["metrics"].update(
                {
                    "test/acc": test["acc"],
                    "test/macro_f1": test["macro_f1"],
                    "test/loss": test["loss"],
                    "val/acc": last["val/acc"],
                    "val/macro_f1": last["val/macro_f1"],
                    "val/loss": last["val/loss"],
                    "train/loss": last["train/loss"],
                    "train/acc": last["train/acc"],
                    "train/examples_per_s": result.examples_per_s,
                    "train/seconds": result.train_seconds,
                    "steps": result.step,
                }
            )
            record["status"] = "completed"
            if not ctx.keep_checkpoint:
                ckpt_path.unlink(missing_ok=True)
    except Exception as ex:
        failure = ex
        record["status"] = "failed"
        record["error"] = {"type": type(ex).__name__, "message": str(ex), "traceback": traceback.format_exc()}
    finally:
        record["metrics"]["wall_s"] = time.perf_counter() - t0
        record["finished_at"] = _now()
        try:
            tracker.summary({**record["metrics"], "status": record["status"]})
        finally:
            tracker.finish(record["status"])
            path = tracking.write_record(ctx.out_dir, record)
    if failure is not None:
        raise RunFailed(f"run failed: {type(failure).__name__}: {failure}", path) from failure
    return record
