"""One job, from identity to record: the only path a run takes.

    run_job: where the job may write -> identity (config + data fingerprint) -> what the store
             says: skip / busy / resume / train -> the data (built or loaded from the cache) -> train
    train:   seed -> model and optimizer -> checkpoint to resume from -> fit -> test -> record

Knows nothing of Hydra: `cli` hands over the validated config and a `Job` (what the launcher knows
about it) and gets back a `JobResult` (the job's `job.json` and its result record). The run's own
directory is its store entry; the job's directory gets `job.json` and a copy of the record.
Whatever happens inside `train`, the run ends with a record whose `status` says how it ended, and
its W&B run closed.
"""

from __future__ import annotations

import logging
import os
import platform
import random
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import Timeout

from . import __version__, builders, checkpoint, export, fast, store, tracking
from . import schedule as lr_schedule
from .config import LoggerBackend, Progress, RootConfig, Select, to_plain
from .data import DataError, PretrainedVectors, Splits, batches, data_fingerprint, load_vectors, prepare
from .model import count_parameters
from .sweep import write_job_file
from .loop import Diverged, best_epoch, evaluate, fit

log = logging.getLogger(__name__)


@dataclass
class Job:
    """What the launcher knows about one job."""

    dir: Path  # the job's own directory (Hydra's): job.json and a copy of the record
    name: str = "run"
    sweep: str | None = None  # the sweep's name (its directory) in a multirun, else None
    choices: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    base_dir: Path = field(default_factory=Path.cwd)  # where rnnsweep was started: relative paths start here
    threads: int = 0  # the cores runtime.threads=0 stands for (cli: the launcher's share); 0: torch's count


@dataclass
class JobResult:
    job: dict[str, Any]  # what job.json holds: outcome, status, run id, ...
    record: dict[str, Any] | None = None  # the run's result record, when there is one


class RunFailed(RuntimeError):
    """Training raised; the record with the traceback is at `record_path`."""

    def __init__(self, message: str, record_path: Path):
        super().__init__(f"{message} (traceback in {record_path})")
        self.record_path = record_path


class DirectoryError(DataError):
    """The run store or the data cache cannot be written: reported like bad input, in one line."""


def show_progress(settings: RootConfig) -> bool:
    p = settings.runtime.progress
    return p is Progress.on or (p is Progress.auto and sys.stderr.isatty())


def readable_group(choices: dict[str, str], group_id: str) -> str:
    """A W&B group name people can read, made unique by the seed-free identity."""
    parts = [str(choices[k]) for k in store.CHOICE_ORDER if choices.get(k)]
    return "-".join(parts + [group_id[:8]])


def _directory_problem(path: Path, setting: str, *, writable: bool) -> str | None:
    """Why a job could not use `path` (the run store, the data cache) as a directory, in one line
    that names the setting behind it; None when it can. Creates nothing: a job that fails writes
    nothing. `writable`: it must be possible to create or write it."""
    if path.exists() and not path.is_dir():
        return f"{setting}: {path} is a file, not a directory"
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{setting}: cannot create the directory {path}: Not a directory"
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        return f"{setting}: {path} is not writable" if existing == path else \
            f"{setting}: cannot create the directory {path}: Permission denied"
    return None


def preflight(settings: RootConfig) -> str | None:
    """What the config asks of this machine that it lacks, in one line; None if nothing. Checked
    before anything is read or written, like a bad value."""
    rt = settings.runtime
    cuda = torch.cuda.is_available()
    if rt.device.value == "cuda" and not cuda:
        return "runtime.device=cuda: no CUDA device is visible to torch here; use runtime.device=auto or cpu"
    device = "cuda" if rt.device.value == "cuda" or (rt.device.value == "auto" and cuda) else "cpu"
    if rt.amp and device != "cuda":
        return "runtime.amp=true: mixed precision needs a CUDA device, and this run would train on the CPU " \
               "(set runtime.amp=false)"
    choice = getattr(settings.optimizer, "embedding_grad", None)
    if choice is not None and choice.value == "deferred" and device != "cpu":
        return f"optimizer.embedding_grad=deferred runs on the CPU; this run is on {device} " \
               "(use optimizer.embedding_grad=auto)"
    return None


def _cache_setting(settings: RootConfig) -> str:
    if settings.runtime.cache_dir is not None:
        return f"runtime.cache_dir={settings.runtime.cache_dir}"
    if os.environ.get("RNNSWEEP_CACHE_DIR"):
        return f"RNNSWEEP_CACHE_DIR={os.environ['RNNSWEEP_CACHE_DIR']}"
    return "the data cache (set runtime.cache_dir or RNNSWEEP_CACHE_DIR)"


def run_job(settings: RootConfig, job: Job, store_root: Path, *, raise_on_failure: bool) -> JobResult:
    """Do what the store says for this job; writes its job.json (and a copy of its record)."""

    def finish(record: dict[str, Any] | None = None, **fields: Any) -> JobResult:
        if record is not None and entry.dir.resolve() != job.dir.resolve():
            store.write_record(job.dir, record)
        return JobResult(write_job_file(job.dir, job.overrides, **fields), record)

    def bad_input(ex: DataError, **common: Any) -> JobResult:
        if raise_on_failure:
            raise ex
        log.error("%s: %s", job.name, ex)
        return JobResult(write_job_file(job.dir, job.overrides, outcome="failed", status="failed",
                                        error=f"{type(ex).__name__}: {ex}", **common))

    cache_root = builders.cache_dir(settings.runtime, job.base_dir)
    # The store must take a new entry (unless this is a plan, which writes nothing); the cache only
    # when its entry is not built yet: a prebuilt read-only cache is fine (see prepare below).
    problem = (_directory_problem(store_root, f"ledger.store={settings.ledger.store}",
                                  writable=not settings.ledger.plan)
               or _directory_problem(cache_root, _cache_setting(settings), writable=False))
    if problem:
        return bad_input(DirectoryError(problem))
    source = builders.data_source(settings.data, job.base_dir, cache_root)
    split = builders.split_options(settings.data)
    try:
        fingerprint = data_fingerprint(source, split)
        # Pretrained vectors: their content is part of the identity (the path alone is not), and a
        # missing file or one of another dimension fails here, before the data cache is built.
        vectors_file = builders.pretrained_vectors(settings.model, job.base_dir)
    except DataError as ex:  # e.g. a data file that does not exist: nothing to identify, nothing to run
        return bad_input(ex)
    govern = resolve_runtime(settings, job.threads)
    identity = store.run_identity(to_plain(settings), fingerprint,
                                  vectors=vectors_file.digest if vectors_file is not None else None)
    entry = store.Entry(store_root / identity.run_id)
    status = entry.status()
    action = store.decide(status, settings.ledger.force, entry.checkpoint_path.is_file())
    common = {"id": identity.run_id, "group_id": identity.group_id, "store_dir": str(entry.dir)}

    if settings.ledger.plan:
        return JobResult(write_job_file(job.dir, job.overrides, outcome="plan", action=action, status=status,
                                        **common))
    if action == "skip":
        log.info("%s: already %s in the store, skipped -> %s", job.name, status, entry.record_path)
        return finish(entry.record(), outcome="skipped", status=status, **common)

    progress = show_progress(settings)
    try:
        # Bad input fails here, before the run has a record in the store; the cache makes this
        # a load of memory-mapped arrays for every job but the first.
        data = prepare(source, split, builders.tokenizer_options(settings.tokenizer), cache_root, progress=progress)
        # Read once per cache entry (then memory-mapped); a malformed line fails here, before the
        # run has a record.
        vectors = load_vectors(vectors_file, data) if vectors_file is not None else None
    except DataError as ex:
        return bad_input(ex, **common)
    except OSError as ex:  # the cache's entry had to be built, and its directory cannot be written
        return bad_input(DirectoryError(f"{_cache_setting(settings)}: cannot write the data cache {cache_root}: "
                                        f"{ex.strerror or ex}"), **common)
    tr = settings.train
    schedule_problem = lr_schedule.problem(
        settings.scheduler, tr.epochs * batches.num_batches(data.train, tr.batch_size, tr.epoch_size))
    if schedule_problem:
        return bad_input(DataError(schedule_problem), **common)
    if action == "busy":
        log.info("%s: run %s is training in another process; waiting for it (at most %ss, ledger.busy_wait)",
                 job.name, identity.run_id, settings.ledger.busy_wait)
    try:
        # Whatever the record said a moment ago, another process may hold the entry now: wait for it.
        with entry.lock(timeout=settings.ledger.busy_wait):
            # Decided before the lock: look again now that no one else can change the entry. A run
            # that this job waited for and that finished meanwhile is this job's result, forced or not.
            waited = action == "busy"
            status = entry.status(holding_lock=True)
            force = settings.ledger.force and not (waited and status in ("completed", "diverged"))
            action = store.decide(status, force, entry.checkpoint_path.is_file())
            if action == "skip":
                return finish(entry.record(), outcome="skipped", status=status, **common)
            previous = entry.record() or {}
            # A new attempt (and W&B run) only when a run is trained again from scratch after it
            # ended: a run cut before its first checkpoint starts over in the same W&B run.
            again = action == "train" and status not in ("new", "interrupted")
            attempt = previous.get("attempt", 0) + 1 if again or not previous else previous.get("attempt", 1)
            if not previous:  # no record, or a damaged one: never append to a W&B run the entry already has
                attempt = len(store.wandb_runs(entry.dir)) + 1
            if action == "train":
                entry.checkpoint_path.unlink(missing_ok=True)
            try:
                tag = store.store_tag(store_root)
                record = train(settings, job, entry.dir, identity=identity, attempt=attempt,
                               resume=action == "resume", data=data, vectors=vectors, progress=progress,
                               govern_threads=govern,
                               wandb_id=f"{identity.run_id}-{tag}" + (f"-{attempt}" if attempt > 1 else ""))
            except RunFailed as ex:
                result = finish(entry.record(), outcome="failed", status="failed", error=str(ex), **common)
                if raise_on_failure:
                    raise
                log.error("%s: %s", job.name, ex)
                return result
    except Timeout:
        log.warning("%s: run %s is still training in another process after ledger.busy_wait=%ss; not starting it "
                    "twice", job.name, identity.run_id, settings.ledger.busy_wait)
        return finish(outcome="busy", status="running", **common)
    outcome = "resumed" if record["resumed_from_epoch"] is not None else "trained"
    return finish(record, outcome=outcome, status=record["status"], **common)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def git_commit() -> str | None:
    """The commit of the checkout rnnsweep runs from (with `-dirty` if it has changes), if any."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def resolve_runtime(settings: RootConfig, launcher_threads: int = 0) -> bool:
    """Replace the runtime's `auto`s by what this process trains on, as the run's identity must
    name it; True if a thread governor may then choose the thread count as it trains.

    runtime.threads=0: the launcher's share, else every core this process may use; with the
    compiled layers a governor then picks between that and one thread as the machine allows,
    unless the thread count changes the run's numbers (then it is part of the identity, fixed).
    runtime.device=auto: the device found here (a GPU machine sharing the store must not take a
    CPU run's record)."""
    govern = settings.runtime.threads == 0 and not store.threads_change_results(to_plain(settings))
    if settings.runtime.threads == 0:
        settings.runtime.threads = launcher_threads or torch.get_num_threads()
    if settings.runtime.device.value == "auto":
        settings.runtime.device = type(settings.runtime.device)("cuda" if torch.cuda.is_available() else "cpu")
    return govern


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rnnsweep": __version__,
        "git_commit": git_commit(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": threads,
        "platform": platform.platform(),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _open_tracker(settings: RootConfig, job: Job, out_dir: Path, identity: store.Identity | None,
                  wandb_id: str | None):
    lg = settings.logger
    if lg.backend is LoggerBackend.none or lg.mode.value == "disabled":
        return tracking.NoTracker()
    ids = {"run_id": identity.run_id, "group_id": identity.group_id} if identity else {"run_id": None, "group_id": None}
    return tracking.WandbTracker(
        project=lg.project,
        entity=lg.entity,
        mode=lg.mode.value,
        name=job.name,
        group=readable_group(job.choices, identity.group_id) if identity else None,
        job_type=job.sweep or "run",
        tags=[f"{k}:{v}" for k, v in sorted(job.choices.items()) if v is not None and k in store.RESULT_GROUPS]
        + list(lg.tags),
        config={**to_plain(settings), **ids},
        directory=out_dir,
        run_id=wandb_id,
    )


def train(settings: RootConfig, job: Job | None, out_dir: Path, *, identity: store.Identity | None = None,
          attempt: int = 1, resume: bool = False, data: Splits | None = None,
          vectors: PretrainedVectors | None = None,
          progress: bool | None = None, wandb_id: str | None = None, govern_threads: bool = False) -> dict[str, Any]:
    """Train and test one configuration in `out_dir` (resuming from its checkpoint if `resume`);
    returns the result record it wrote there. `data`: the encoded splits, if the caller has them.
    `vectors`: model.embed_init=pretrained's rows for `data`'s vocabulary, if the caller has them.
    `wandb_id`: the W&B run to log to (a resumed run continues its own; run_job names it after the
    identity, the store and the attempt); by default the identity's run id. `govern_threads`: on
    the CPU with the compiled layers, train on runtime.threads or on one thread, whichever is
    faster while the run trains (fast.ThreadGovernor; the numbers are the same either way)."""
    if wandb_id is None and identity is not None:
        wandb_id = identity.run_id if attempt == 1 else f"{identity.run_id}-{attempt}"
    job = job or Job(dir=out_dir)
    started, t0 = _now(), time.perf_counter()
    cfg = settings
    seed_everything(cfg.seed)
    if cfg.runtime.threads > 0:
        torch.set_num_threads(cfg.runtime.threads)
    fast.set_threads(torch.get_num_threads())  # the compiled layers' loops: as many threads as torch's
    progress = show_progress(cfg) if progress is None else progress

    record: dict[str, Any] = {
        # Stays "interrupted" only if something outside Exception (Ctrl-C, SIGTERM) ends the run.
        "status": "interrupted",
        "name": job.name,
        "group": readable_group(job.choices, identity.group_id) if identity else None,
        "choices": job.choices,
        "overrides": job.overrides,
        "config": to_plain(cfg),
        "metrics": {},
        "history": [],
        "data": {},
        "env": {},
        "id": identity.run_id if identity else None,
        "group_id": identity.group_id if identity else None,
        "attempt": attempt,
        "resumed_from_epoch": None,
        "wandb": None,
        "model": None,
        "selection": None,  # which epoch is the run's model (train.select), and whether train.patience stopped it
        "error": None,
        "started_at": started,
        "finished_at": None,
    }
    tracker = tracking.NoTracker()
    failure: BaseException | None = None
    try:
        device = builders.pick_device(cfg.runtime.device.value)
        record["env"] = environment(device, torch.get_num_threads())
        if data is None:
            cache_root = builders.cache_dir(cfg.runtime, job.base_dir)
            data = prepare(builders.data_source(cfg.data, job.base_dir, cache_root), builders.split_options(cfg.data),
                           builders.tokenizer_options(cfg.tokenizer), cache_root, progress=progress)
        meta = data.meta
        record["data"] = {
            "name": cfg.data.name,
            "classes": list(data.class_names),
            "train": len(data.train),
            "val": len(data.val),
            "test": len(data.test),
            "vocab_size": data.vocab_size,
            "fingerprint": meta["fingerprint"],
            "label_mapping": meta.get("label_mapping"),
            "dropped_empty": meta.get("dropped_empty", {}),
            "warnings": meta.get("warnings", []),
            "tokens": meta.get("tokens", {}),
            "cache": str(data.directory),
        }
        if vectors is None and cfg.model.embed_init.value == "pretrained":
            vectors = load_vectors(builders.pretrained_vectors(cfg.model, job.base_dir), data)
        if vectors is not None:
            record["data"]["vectors"] = vectors.info  # the file and its coverage of the vocabulary
        grad = builders.embedding_grad(cfg.optimizer, device)  # decided once: the model and optimizer agree

        def build():
            model = builders.build_model(cfg.model, cfg.topology, cfg.batching, vocab_size=data.vocab_size,
                                         num_classes=data.num_classes, embedding_grad=grad,
                                         compiled_rnn=cfg.runtime.compiled_rnn, vectors=vectors).to(device)
            return model, builders.build_optimizer(cfg.optimizer, model, grad)

        tr = cfg.train
        steps_per_epoch = batches.num_batches(data.train, tr.batch_size, tr.epoch_size)
        model, optimizer = build()
        schedule = lr_schedule.build(cfg.scheduler, optimizer, total_steps=tr.epochs * steps_per_epoch)
        ckpt_path = out_dir / store.CHECKPOINT
        resumed = checkpoint.load(ckpt_path, model, optimizer, schedule) if resume else None
        if resumed is None and resume:  # unreadable: start clean, exactly as a fresh run would
            seed_everything(cfg.seed)
            model, optimizer = build()
            schedule = lr_schedule.build(cfg.scheduler, optimizer, total_steps=tr.epochs * steps_per_epoch)
        state = resumed.state if resumed is not None else None
        keep_best = tr.select is Select.best_val
        best = {"model": resumed.best_model if resumed is not None else None}  # the best epoch's weights

        def end_of_epoch(st) -> None:
            if keep_best and best_epoch(st.history) == st.epoch:
                best["model"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            checkpoint.save(ckpt_path, model, optimizer, st, schedule=schedule, best_model=best["model"])

        if state is not None:
            record["resumed_from_epoch"] = state.epoch
            log.info("resuming %s from its epoch-%d checkpoint", out_dir, state.epoch)
        record["metrics"]["params"] = count_parameters(model)
        if device.type == "cpu":
            fast.warm_up(model, optimizer, compiled_layers=cfg.runtime.compiled_rnn, sweep=job.sweep is not None)
        batches.warm_up(data.train)
        tracker = _open_tracker(cfg, job, out_dir, identity, wandb_id)
        if tracker.run_id is not None:
            record["wandb"] = {"id": tracker.run_id, "mode": tracker.mode, "dir": str(out_dir / "wandb")}

        shuffle = torch.Generator()
        governor = (fast.ThreadGovernor(cfg.runtime.threads) if govern_threads and device.type == "cpu"
                    and cfg.runtime.compiled_rnn and cfg.runtime.threads > 1 else None)
        bucket = cfg.batching.bucket_pool if cfg.batching.bucket else None
        pin = device.type == "cuda"

        def train_batches(epoch: int):
            # Seeded per epoch, so epoch k's batch order does not depend on how we got there.
            shuffle.manual_seed(cfg.seed * 1_000_003 + epoch)
            epoch_batches = batches.iterate(data.train, tr.batch_size, shuffle=True, generator=shuffle,
                                            bucket_pool=bucket, limit=tr.epoch_size, pin=pin)
            return governor.govern(epoch_batches) if governor else epoch_batches

        def eval_batches(split):
            # Evaluation order changes no metric: sort the whole split by length when bucketing.
            whole = batches.num_batches(split, tr.eval_batch_size) if bucket else None
            return lambda: batches.iterate(split, tr.eval_batch_size, shuffle=False, bucket_pool=whole, pin=pin)

        record["status"] = "running"
        store.write_record(out_dir, record)
        try:
            result = fit(
                model,
                optimizer,
                train_batches,
                eval_batches(data.val),
                epochs=tr.epochs,
                steps_per_epoch=steps_per_epoch,
                num_classes=data.num_classes,
                device=device,
                grad_clip=tr.grad_clip,
                log_every=cfg.logger.log_every,
                callbacks=[tracker],
                progress=progress,
                state=state,
                on_epoch_end=end_of_epoch,
                pending_work=fast.pending_work(optimizer),
                amp=cfg.runtime.amp,
                schedule=schedule,
                patience=tr.patience,
            )
        except Diverged as ex:
            record["status"] = "diverged"
            record["error"] = {"type": "Diverged", "message": str(ex)}
            record["history"] = ex.history
            log.warning("run diverged: %s", ex)
        else:
            # The run's model: the last epoch's, or (best_val) the best epoch's weights.
            chosen = best_epoch(result.history) if keep_best else result.epoch
            if chosen != result.epoch:
                model.load_state_dict(best["model"])
            record["selection"] = {"rule": tr.select.value, "epoch": chosen, "epochs_trained": result.epoch,
                                   "stopped_early": result.stopped_early}
            test = evaluate(model, eval_batches(data.test)(), data.num_classes, device, cfg.runtime.amp)
            last = result.history[chosen - 1]
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
            if cfg.ledger.keep_model:
                model_dir = out_dir / "model"
                size = export.save(
                    model_dir, model, class_names=list(data.class_names), config=record["config"],
                    architecture=builders.architecture(cfg.model, cfg.topology, cfg.batching,
                                                       vocab_size=data.vocab_size, num_classes=data.num_classes),
                    tokenizer=to_plain(cfg.tokenizer), vocabulary_from=data.directory)
                record["model"] = {"dir": str(model_dir), "bytes": size}
                if cfg.logger.log_model:
                    tracker.log_model(model_dir, f"model-{wandb_id or 'run'}")
            if governor:
                record["env"]["thread_governor"] = {"windows": governor.windows, "switches": governor.switches,
                                                    "held": governor.held}
            record["status"] = "completed"
            if not cfg.ledger.keep_checkpoint:
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
            path = store.write_record(out_dir, record)
    if failure is not None:
        raise RunFailed(f"run failed: {type(failure).__name__}: {failure}", path) from failure
    return record
