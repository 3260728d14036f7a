"""Run identity and the run store: what is done, what to skip, what to resume.

A run's identity is a hash of everything that can change its result — the resolved config minus
the keys that cannot (logging, progress, threads, the ledger's own settings), plus the data
fingerprint and the package version. Every sweep and launcher shares one store,
`<store>/<id>/`, holding the run's result record, its epoch checkpoint and its W&B files, so a
sweep launched again finds what earlier sweeps finished, whatever Hydra named their directories.

A file lock per entry (`filelock`, an OS lock that dies with its process) tells a run in
progress from one that was cut: a cut run's lock is free, its checkpoint resumes it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from . import __version__

# Keys that cannot change what a run computes: how it is watched, how many threads share the
# work, which implementation of the same layer runs it, and where things are written. Dotted prefixes.
NON_RESULT_KEYS = ("logger", "runtime.threads", "runtime.compiled_rnn", "runtime.progress", "runtime.cache_dir",
                   "ledger")

RECORD = "metrics.json"
CHECKPOINT = "checkpoint.pt"
LOCK = ".lock"


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


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_identity(config: dict[str, Any], data_fingerprint: str) -> tuple[str, str]:
    """(run id, group id): the group id is the same hash without the seed, so repeats share it."""
    core = _without(config, NON_RESULT_KEYS)
    payload = {"config": core, "data": data_fingerprint, "rnnsweep": __version__}
    group_payload = {**payload, "config": _without(core, ("seed",))}
    return _digest(payload), _digest(group_payload)


@dataclass
class Entry:
    """One run's place in the store."""

    dir: Path

    @property
    def record_path(self) -> Path:
        return self.dir / RECORD

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / CHECKPOINT

    def record(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.record_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

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

    def lock(self) -> FileLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(self.dir / LOCK, timeout=0)

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


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)

    def entry(self, run_id: str) -> Entry:
        return Entry(self.root / run_id)


# What a job does, given its entry's status (and whether the user forces a retrain).
ACTIONS = {
    "new": "train",
    "completed": "skip",
    "diverged": "skip",  # a finding, not an accident: rerunning gives the same NaN
    "failed": "train",
    "interrupted": "resume",
    "running": "busy",
}


def decide(status: str, force: bool, has_checkpoint: bool) -> str:
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
