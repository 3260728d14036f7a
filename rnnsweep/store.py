"""The run store: run identity, result records, and the one way rnnsweep writes a file.

A run's identity is a hash of everything that can change its result: the resolved config minus
the keys that cannot (logging, progress, threads, the store's own settings), plus the data
fingerprint and the package version. Every sweep and launcher shares one store,
`<store>/<id>/`, holding the run's result record, its epoch checkpoint and its W&B files, so a
sweep launched again finds what earlier sweeps finished, whatever Hydra named their directories.

A file lock per entry (`filelock`, an OS lock that dies with its process) tells a run in
progress from one that was cut: a cut run's lock is free, its checkpoint resumes it.

Torch-free: the report and the process that ends a sweep read records through this module.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable

from filelock import FileLock, Timeout

from . import __version__

log = logging.getLogger(__name__)

# Keys that cannot change what a run computes: how it is watched, where things are written, and
# how many threads share the work of rnnsweep's compiled layers (which split a batch by sequence,
# each computed as on one thread). Dotted prefixes; tests/test_ledger.py trains twice for each
# and compares the metrics byte for byte. Not among them: runtime.compiled_rnn (the compiled
# layers and torch's round differently), and, where torch's own code splits sums by thread, the
# thread count (threads_change_results).
NON_RESULT_KEYS = ("logger", "runtime.threads", "runtime.progress", "runtime.cache_dir", "ledger")
# Keys added after runs were stored, with the value at which a run computes what it computed
# before the key existed: at that value the key is left out of the identity, so those runs keep
# their ids (and the store still skips them).
LATER_KEYS: dict[str, Any] = {"model.vectors": None, "model.freeze_embedding": False, "train.select": "last",
                              "train.patience": None, "scheduler": {"name": "constant"}}

RECORD = "metrics.json"
CHECKPOINT = "checkpoint.pt"
LOCK = ".lock"

# The config groups a record names its choices by, in the order people read them (W&B group
# names, report columns).
CHOICE_ORDER = ("experiment", "lesson", "data", "model", "batching", "topology", "optimizer")
# Groups whose choice changes what a run computes: a run's W&B tags (not launcher, logger, search).
RESULT_GROUPS = (*CHOICE_ORDER, "scheduler", "tokenizer")
STORE_FILE = "store.json"


def digest(payload: Any) -> str:
    """16 hex digits of SHA-256 over `payload` as canonical JSON: identities and cache keys."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write `path` whole or not at all: `write` fills a temporary file beside it, which is synced
    and renamed over `path`. A reader (another job, a report, a resumed run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from the rest of a shared group
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, payload: Any) -> Path:
    text = json.dumps(payload, indent=2, allow_nan=True) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def is_result_key(dotted: str) -> bool:
    """False for keys that cannot change what a run computes (see NON_RESULT_KEYS)."""
    return not any(dotted == k or dotted.startswith(f"{k}.") for k in NON_RESULT_KEYS)


def _without(config: dict[str, Any], dotted: tuple[str, ...], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if path in dotted:
            continue
        out[key] = _without(value, dotted, f"{path}.") if isinstance(value, dict) else value
    return out


@dataclass(frozen=True)
class Identity:
    """A run's id, and its group id: the same hash without the seed, so repeats share it."""

    run_id: str
    group_id: str


def _as_before(config: dict[str, Any], dotted: str, before: Any) -> bool:
    """Whether the LATER_KEYS key `dotted` is absent from `config` or holds its earlier value."""
    value: Any = config
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return True
        value = value[key]
    return value == before


@functools.cache
def numeric_versions() -> dict[str, str]:
    """The versions of what computes a run's numbers besides rnnsweep: torch (its kernels) and numba
    (which compiles rnnsweep's CPU loops). Read from the installed packages' metadata: this module
    imports neither."""
    out = {}
    for name in ("torch", "numba"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "none"
    return out


def threads_change_results(config: dict[str, Any]) -> bool:
    """Whether this run's numbers depend on its thread count: torch's own layers split their sums
    by thread, and so does torch code that runs beside the compiled layers at sizes where torch
    goes parallel (attention pooling's products; torch's packed kernel, batching.native_packing).
    The compiled layers compute each sequence as on one thread, whatever the count (tested)."""
    model, batching = config.get("model") or {}, config.get("batching") or {}
    return (not config["runtime"]["compiled_rnn"] or model.get("pooling") == "attention"
            or (batching.get("mode") == "packed" and bool(batching.get("native_packing"))))


def run_identity(config: dict[str, Any], data_fingerprint: str, *, vectors: str | None = None) -> Identity:
    """`config`: the plain resolved config, its runtime.threads the number the run trains on.
    `vectors`: the digest of the pretrained word vectors' file (model.vectors): it replaces the
    path, whose content it pins down; None (no vectors) adds nothing."""
    unchanged = tuple(k for k, before in LATER_KEYS.items() if _as_before(config, k, before))
    # The vectors' content stands for them, not where the file lies: moved or renamed, the same run.
    where = ("model.vectors",) if vectors is not None else ()
    core = _without(config, NON_RESULT_KEYS + unchanged + where)
    if threads_change_results(config):  # another thread count, other roundings, another result
        core["runtime"]["threads"] = config["runtime"]["threads"]
    # Another torch or numba may round differently: a store shared across installs must not hand
    # one's numbers to the other.
    payload = {"config": core, "data": data_fingerprint, "rnnsweep": __version__, **numeric_versions()}
    if vectors is not None:
        payload["vectors"] = vectors
    group_payload = {**payload, "config": _without(core, ("seed",))}
    return Identity(digest(payload), digest(group_payload))


@dataclass
class Entry:
    """One run's place in the store: `<store>/<run id>/`."""

    dir: Path

    @property
    def record_path(self) -> Path:
        return self.dir / RECORD

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / CHECKPOINT

    def record(self) -> dict[str, Any] | None:
        return read_record(self.record_path)

    def status(self, holding_lock: bool = False) -> str:
        """completed / diverged / failed / interrupted (cut, resumable or not) / running / new.

        A record that says "running" is running only while someone holds the entry's lock;
        pass `holding_lock=True` when that someone is the caller.
        """
        record = self.record()
        if record is None:
            return "new"
        if record["status"] == "running":
            return "running" if not holding_lock and self.is_locked() else "interrupted"
        return record["status"]

    def lock(self, timeout: float = 0) -> FileLock:
        """The entry's lock (created with the entry); `timeout` seconds to wait for another holder."""
        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(self.dir / LOCK, timeout=timeout)

    def is_locked(self) -> bool:
        if not (self.dir / LOCK).exists():
            return False
        probe = FileLock(self.dir / LOCK, timeout=0)
        try:
            probe.acquire()
        except Timeout:
            return True
        probe.release()
        return False


STATUSES = ("completed", "diverged", "failed", "interrupted", "running")


def record_problem(record: Any) -> str | None:
    """Why `record` is not a result record a report or the store can trust; None if it is one."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not a mapping"
    if record.get("status") not in STATUSES:
        return f"status {record.get('status')!r} is not one of {', '.join(STATUSES)}"
    for key in ("metrics", "config"):
        if not isinstance(record.get(key), dict):
            return f"'{key}' is not a mapping"
    if not isinstance(record.get("history", []), list):
        return "'history' is not a list"
    if record["status"] == "completed" and not all(
            isinstance(record["metrics"].get(k), (int, float)) for k in ("test/acc", "val/acc")):
        return "a completed run without its test/acc and val/acc"
    return None


def store_tag(root: Path) -> str:
    """This store's own random tag, made the first time it is asked for. W&B run ids carry it:
    two stores (two machines) that train the same config never write into one W&B run, while a
    run resumed from its own store continues its W&B run."""
    path = root / STORE_FILE
    for _ in range(50):
        try:
            return str(json.loads(path.read_text())["tag"])
        except FileNotFoundError:
            pass
        except (json.JSONDecodeError, KeyError, TypeError):
            # Half-written by another process this instant, or damaged: read again, then replace.
            time.sleep(0.01)
            continue
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{STORE_FILE}.")
        with os.fdopen(fd, "w") as f:
            json.dump({"tag": secrets.token_hex(4)}, f)
        try:
            os.link(tmp, path)  # created whole, and only if no one else created it first
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: a plain rename, if still no one has
            if not path.exists():
                os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    tag = secrets.token_hex(4)
    write_json(path, {"tag": tag})
    log.warning("%s was damaged; the store has a new tag (its runs' next W&B runs are new ones)", path)
    return tag


def wandb_runs(entry_dir: Path) -> set[str]:
    """The W&B run ids an entry's files hold (its wandb/ directory: offline-run-* and run-*)."""
    names = (re.fullmatch(r"(?:offline-)?run-\d{8}_\d{6}-(.+)", d.name) for d in (entry_dir / "wandb").glob("*run-*"))
    return {m.group(1) for m in names if m}


def read_record(path: Path) -> dict[str, Any] | None:
    """The result record at `path`; None when there is none or it is damaged (unreadable, or not
    of a record's shape): a damaged record is a run to train again, and it says so."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as ex:
        log.warning("%s is damaged (%s); its run is trained again", path, ex)
        return None
    problem = record_problem(record)
    if problem:
        log.warning("%s is damaged (%s); its run is trained again", path, problem)
        return None
    return record


def write_record(directory: Path, record: dict[str, Any]) -> Path:
    return write_json(directory / RECORD, record)


# What a job does, given its entry's status, when the user does not force a retrain.
ACTIONS = {
    "new": "train",
    "completed": "skip",
    "diverged": "skip",  # a finding, not an accident: rerunning gives the same NaN
    "failed": "train",
    "interrupted": "resume",
}


def decide(status: str, force: bool, has_checkpoint: bool) -> str:
    """train / resume / skip / busy (another process is running it)."""
    if status == "running":
        return "busy"
    if force:
        return "train"
    action = ACTIONS[status]
    if action == "resume" and not has_checkpoint:
        return "train"
    if status == "failed" and has_checkpoint:
        return "resume"
    return action
