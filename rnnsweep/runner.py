"""One job of a sweep (or a single run): find its identity, then train, resume, skip or plan.

The job's own directory (Hydra's) gets `job.json` — what this job did — and, when a result
exists, a copy of the run's `metrics.json` from the store. The sweep's summary is read from the
`job.json` files (sweep_jobs.py), so it covers every launcher, in-process or not.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import Timeout

from . import job, ledger, tracking
from .config import RootConfig, to_plain
from .data import DataError
from .sweep_jobs import write_job_file

log = logging.getLogger(__name__)


@dataclass
class JobInfo:
    """What the launcher knows about a job."""

    job_dir: Path
    name: str
    sweep: str | None = None  # the sweep's name (its directory) in a multirun, else None
    choices: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    base_dir: Path = field(default_factory=Path.cwd)  # where rnnsweep was started: relative paths start here


def readable_group(choices: dict[str, str], group_id: str) -> str:
    """A W&B group name people can read, made unique by the seed-free identity."""
    order = ("model", "batching", "topology", "optimizer", "data", "lesson", "experiment")
    parts = [str(choices[k]) for k in order if choices.get(k)]
    return "-".join(parts + [group_id[:8]])


def _copy_record(entry: ledger.Entry, info: JobInfo) -> None:
    if entry.dir.resolve() != info.job_dir.resolve() and entry.record_path.is_file():
        shutil.copyfile(entry.record_path, info.job_dir / tracking.RECORD_NAME)


class DirectoryError(DataError):
    """The run store or the data cache cannot be written: reported like bad input, in one line."""


def _directory_problem(path: Path, setting: str, *, create: bool) -> str | None:
    """Why a job could not write into `path` (the run store, the data cache), in one line that
    names the setting behind it; None when it can. Creates the directory unless `create` is off."""
    if path.exists() and not path.is_dir():
        return f"{setting}: {path} is a file, not a directory"
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as ex:
            return f"{setting}: cannot create the directory {path}: {ex.strerror or ex}"
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        return f"{setting}: {path} is not writable"
    return None


def _cache_setting(settings: RootConfig) -> str:
    if settings.runtime.cache_dir is not None:
        return f"runtime.cache_dir={settings.runtime.cache_dir}"
    if os.environ.get("RNNSWEEP_CACHE_DIR"):
        return f"RNNSWEEP_CACHE_DIR={os.environ['RNNSWEEP_CACHE_DIR']}"
    return "the data cache (set runtime.cache_dir or RNNSWEEP_CACHE_DIR)"


def _data_failure(info: JobInfo, ex: DataError, raise_on_failure: bool, **common: Any) -> dict[str, Any]:
    if raise_on_failure:
        raise ex
    log.error("%s: %s", info.name, ex)
    return write_job_file(info, outcome="failed", status="failed", error=f"{type(ex).__name__}: {ex}", **common)


def execute(settings: RootConfig, info: JobInfo, store_root: Path, *, raise_on_failure: bool) -> dict[str, Any]:
    """Do what the ledger says for this job; returns (and writes) its job.json payload."""
    plain = to_plain(settings)
    create = not settings.ledger.plan  # a plan writes nothing
    problem = (_directory_problem(store_root, f"ledger.store={settings.ledger.store}", create=create)
               or _directory_problem(job.cache_dir(settings, info.base_dir), _cache_setting(settings), create=create))
    if problem:
        return _data_failure(info, DirectoryError(problem), raise_on_failure)
    try:
        fingerprint = job.data_fingerprint(settings, info.base_dir)
    except DataError as ex:  # e.g. a data file that does not exist: nothing to identify, nothing to run
        return _data_failure(info, ex, raise_on_failure)
    run_id, group_id = ledger.run_identity(plain, fingerprint)
    entry = ledger.Store(store_root).entry(run_id)
    status = entry.status()
    action = ledger.decide(status, settings.ledger.force, entry.checkpoint_path.is_file())
    common = {"id": run_id, "group_id": group_id, "store_dir": str(entry.dir)}

    if settings.ledger.plan:
        return write_job_file(info, outcome="plan", action=action, status=status, **common)
    if action == "busy":
        log.warning("%s: run %s is in progress in another process; not starting it twice", info.name, run_id)
        return write_job_file(info, outcome="busy", status="running", **common)
    if action == "skip":
        _copy_record(entry, info)
        log.info("%s: already %s in the store, skipped -> %s", info.name, status, entry.record_path)
        return write_job_file(info, outcome="skipped", status=status, **common)

    try:
        # Bad input fails here, before the run has a record in the store; the cache makes this
        # a load of memory-mapped arrays for every job but the first.
        splits = job.load_data(settings, info.base_dir, job.show_progress(settings))
    except DataError as ex:
        return _data_failure(info, ex, raise_on_failure, **common)
    try:
        with entry.lock():
            # Decided before the lock: look again now that no one else can change the entry.
            status = entry.status(holding_lock=True)
            action = ledger.decide(status, settings.ledger.force, entry.checkpoint_path.is_file())
            if action == "skip":
                _copy_record(entry, info)
                return write_job_file(info, outcome="skipped", status=status, **common)
            previous = entry.record() or {}
            attempt = previous.get("attempt", 1) if action == "resume" else previous.get("attempt", 0) + 1
            if action == "train":
                entry.checkpoint_path.unlink(missing_ok=True)
            ctx = job.RunContext(
                out_dir=entry.dir,
                name=info.name,
                group=readable_group(info.choices, group_id),
                job_type=info.sweep or "run",
                choices=info.choices,
                overrides=info.overrides,
                run_id=run_id,
                group_id=group_id,
                attempt=attempt,
                wandb_id=run_id if attempt == 1 else f"{run_id}-{attempt}",
                resume=action == "resume",
                keep_checkpoint=settings.ledger.keep_checkpoint,
                base_dir=info.base_dir,
                splits=splits,
            )
            try:
                record = job.run(settings, ctx)
            except job.RunFailed as ex:
                _copy_record(entry, info)
                failed = write_job_file(info, outcome="failed", status="failed", error=str(ex), **common)
                if raise_on_failure:
                    raise
                log.error("%s: %s", info.name, ex)
                return failed
    except Timeout:
        log.warning("%s: run %s is in progress in another process; not starting it twice", info.name, run_id)
        return write_job_file(info, outcome="busy", status="running", **common)

    _copy_record(entry, info)
    outcome = "resumed" if record["resumed_from_epoch"] is not None else "trained"
    return write_job_file(info, outcome=outcome, status=record["status"], **common)
