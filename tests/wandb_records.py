"""Read back what a real offline W&B run wrote to its `run-<id>.wandb` file.

The file is a LevelDB-style log of protobuf `Record`s (the layout wandb documents in its
datastore: a 7-byte file header, then 32 KiB blocks of records, each with a 7-byte header of
checksum, length and type, split across blocks as FIRST/MIDDLE/LAST). Recent wandb releases no
longer ship a Python reader, so the tests carry this small one.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

_HEADER = 7
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER:  # block trailer: zero padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    run_id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    exit_code: int | None = None
    files: list[str] = field(default_factory=list)  # the files the run asked W&B to upload
    artifacts: list[tuple[str, str]] = field(default_factory=list)  # (name, type) of each logged artifact


def read_offline_run(run_dir: Path) -> OfflineRun:
    """`run_dir` is a wandb/offline-run-* directory."""
    (log_file,) = run_dir.glob("run-*.wandb")
    run = OfflineRun()
    for payload in _payloads(log_file.read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.name = rec.run.run_id, rec.run.display_name
            run.group, run.job_type, run.tags = rec.run.run_group, rec.run.job_type, list(rec.run.tags)
            run.config.update({_key(i): json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            run.config.update({_key(i): json.loads(i.value_json) for i in rec.config.update})
        elif kind == "summary":
            run.summary.update({_key(i): json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "files":
            run.files += [f.path for f in rec.files.files]
        elif kind == "artifact":
            run.artifacts.append((rec.artifact.name, rec.artifact.type))
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
    return run
