"""Shared fixtures: compose the real conf/ the way the CLI does, and make runs tiny."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from rnnsweep import cli, config

REPO = Path(__file__).resolve().parents[1]
CONF = Path(cli.config_dir())

# Small enough that one run trains a few steps in about a second on one core.
TINY = [
    "data.train_size=120",
    "data.test_size=40",
    "train.epochs=1",
    "train.batch_size=32",
    "model.embed_dim=8",
    "model.hidden_dim=8",
    "logger=none",
    "runtime.progress=off",
    "runtime.threads=1",
]


def compose_config(overrides: list[str]):
    config.register_schemas()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory):
    """One encoded-data cache for the whole session (never the user's ~/.cache), as a sweep shares one."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["RNNSWEEP_CACHE_DIR"] = str(path)
    return path


@pytest.fixture
def no_wandb_account(monkeypatch, tmp_path):
    """A user without a W&B account: runs log offline, nothing reaches the network."""
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def compose_cfg():
    return compose_config


def group_options() -> list[tuple[str, str]]:
    """Every (group, option) that conf/ ships."""
    pairs = []
    for group_dir in sorted(p for p in CONF.iterdir() if p.is_dir()):
        for option in sorted(group_dir.glob("*.yaml")):
            pairs.append((group_dir.name, option.stem))
    return pairs


def clean_env(**extra: str) -> dict[str, str]:
    """The environment a user without a W&B account has; nothing reaches the network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
    env.update({"NETRC": os.devnull, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}, **extra)
    return env


def run_cli(args: list[str], cwd: Path, exe: list[str] | None = None, timeout: int = 300, **env: str):
    return subprocess.run(
        (exe or [sys.executable, "-m", "rnnsweep"]) + args,
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def entries(store: Path) -> list[Path]:
    """The run store's entries (one directory per run), without its store.json."""
    return sorted(p for p in store.iterdir() if p.is_dir())


def wandb_id(offline_run: Path) -> str:
    """The W&B run id of an offline run directory: offline-run-<date>_<time>-<id>."""
    return offline_run.name.split("-", 3)[3]
