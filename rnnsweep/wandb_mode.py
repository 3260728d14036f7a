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


def resolve_wandb_mode(configured: str) -> tuple[str, str | None]:
    """(mode, notice). An explicit logger.mode wins, then WANDB_MODE, then key detection."""
    if configured != "auto":
        return configured, None
    env = os.environ.get("WANDB_MODE")
    if env:
        return env, None
    if wandb_api_key_configured():
        return "online", None
    return "offline", "W&B: no API key configured, logging offline"
