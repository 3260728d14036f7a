"""Where metrics go: the run's result record on disk, and Weights & Biases.

The record (`metrics.json`) is the source of truth that reports read; it is written whole or
not at all (temp file + rename). W&B is a view of the same numbers.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .ledger import RECORD
from .wandb_mode import resolve_wandb_mode

log = logging.getLogger(__name__)

RECORD_NAME = RECORD  # the ledger names the files of a run


def write_record(directory: Path, record: dict[str, Any]) -> Path:
    """Atomically write `record` as `directory/metrics.json`; a reader never sees half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / RECORD_NAME
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{RECORD_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, sort_keys=False, allow_nan=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide records from the rest of a shared group
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


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


class NoTracker:
    """logger=none: metrics go to the result record only."""

    run_id: str | None = None

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_epoch(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


@functools.cache
def installed_packages() -> str:
    """`name==version` per installed distribution, as W&B's requirements.txt lists them."""
    found = {(d.metadata["Name"] or "").lower(): d.version for d in importlib.metadata.distributions()}
    return "".join(f"{name}=={version}\n" for name, version in sorted(found.items()) if name)


class WandbTracker:
    """One W&B run per training run; `finish` must run whatever happens (the caller's finally)."""

    def __init__(
        self,
        *,
        project: str,
        entity: str | None,
        mode: str,
        name: str,
        group: str | None,
        job_type: str,
        tags: list[str],
        config: dict[str, Any],
        directory: Path,
        run_id: str | None = None,
    ):
        resolved, notice = resolve_wandb_mode(mode)
        import wandb  # imported here: a second or two that logger=none runs should not pay

        if notice:
            log.info("%s into %s (sync later with `wandb sync %s/wandb/offline-run-*`)", notice, directory, directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self.run = wandb.init(
            project=project,
            entity=entity,
            mode=resolved,
            name=name,
            group=group,
            job_type=job_type,
            tags=tags,
            config=config,
            dir=str(directory),
            # The ledger's id: a resumed run continues its W&B run instead of starting a second.
            id=run_id,
            resume="allow" if run_id else None,
            # Never continue whatever run this process had open: each job gets its own run.
            reinit="finish_previous",
            # W&B lists the installed packages itself at every init, about 0.4 s of each job;
            # the list is the same for every run of a process, so it is written once (below).
            settings=wandb.Settings(silent=True, x_save_requirements=False),
        )
        requirements = Path(self.run.dir) / "requirements.txt"
        requirements.write_text(installed_packages())
        self.run.save(str(requirements), base_path=self.run.dir, policy="end")
        self.run.define_metric("epoch")
        for prefix in ("val/*", "epoch/*"):
            self.run.define_metric(prefix, step_metric="epoch")
        self.run_id = self.run.id
        self.mode = resolved

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def on_epoch(self, step: int, metrics: dict[str, float]) -> None:
        epoch_metrics = {
            (k if k.startswith("val/") or k == "epoch" else f"epoch/{k}"): v for k, v in metrics.items()
        }
        # Commit now: a row left open is flushed at finish() and would overwrite the summary.
        self.run.log(epoch_metrics, step=step, commit=True)

    def summary(self, metrics: dict[str, Any]) -> None:
        self.run.summary.update(metrics)

    def finish(self, status: str) -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status in ("completed", "diverged") else 1)
