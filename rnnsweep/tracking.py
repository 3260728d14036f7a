"""Weights & Biases: which mode a run logs in, and one W&B run per training run.

The result record (store.py) is the source of truth that reports read; W&B is a view of the
same numbers. Torch-free, and `wandb` itself is imported only when a run starts: the report and
the config checks use the mode rules too.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)


def wandb_api_key_configured() -> bool:
    """True when W&B could log online without asking: WANDB_API_KEY or a netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


# What W&B's own settings accept in WANDB_MODE ("dryrun" and "run" are its old names).
ACCEPTED_ENV_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")


def wandb_mode_env_problem() -> str | None:
    """Why WANDB_MODE would make every W&B run fail, or None. W&B reads it whatever mode a run asks
    for, and rejects a value it does not know with a multi-line validation error."""
    value = os.environ.get("WANDB_MODE")
    if value is None or not value.strip() or value in ACCEPTED_ENV_MODES:
        return None
    return f"WANDB_MODE={value!r} in the environment: W&B accepts online, offline or disabled (or leave it unset)"


def _drop_empty_wandb_mode_env() -> None:
    # `WANDB_MODE=` in a shell or CI means unset, but W&B's settings reject the empty string.
    if os.environ.get("WANDB_MODE", "x").strip() == "":
        del os.environ["WANDB_MODE"]


def resolve_wandb_mode(configured: str) -> tuple[str, str | None]:
    """(mode, notice). An explicit logger.mode wins, then WANDB_MODE, then key detection.
    Call it before a W&B run starts: an empty WANDB_MODE is removed from the environment."""
    _drop_empty_wandb_mode_env()
    if configured != "auto":
        return configured, None
    env = os.environ.get("WANDB_MODE")
    if env:
        return env, None
    if wandb_api_key_configured():
        return "online", None
    return "offline", "W&B: no API key configured, logging offline"


class NoTracker:
    """logger=none: metrics go to the result record only."""

    run_id: str | None = None

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_epoch(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def log_model(self, directory: Path, name: str) -> None:
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
            # The store's id: a resumed run continues its W&B run instead of starting a second.
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

    def log_model(self, directory: Path, name: str) -> None:
        """The run's model directory as a W&B artifact of type `model`."""
        artifact = self._wandb.Artifact(name, type="model", description="rnnsweep model: weights.npz, "
                                        "model.json and the vocabulary")
        artifact.add_dir(str(directory))
        self.run.log_artifact(artifact)

    def finish(self, status: str) -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status in ("completed", "diverged") else 1)
