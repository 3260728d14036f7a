"""Which W&B mode a run logs in. Torch-free: the report uses it too."""

from __future__ import annotations

import netrc
import os
from urllib.parse import urlparse


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
