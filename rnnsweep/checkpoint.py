"""Epoch checkpoints: everything needed to continue a run as if it had never stopped.

Model and optimizer state, the training position (`FitState`) and every random generator the
loop draws from (dropout uses torch's). Batch order needs no state: each epoch's shuffle is
seeded by the epoch itself. Files are written whole or not at all, and read with
`weights_only=True`, so a checkpoint can hold nothing but tensors and plain containers.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .store import atomic_write
from .train import FitState

log = logging.getLogger(__name__)


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "python": {"version": version, "state": list(mt), "gauss_next": gauss_next},
    }


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def save(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: FitState) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "fit": asdict(state),
        "rng": _rng_state(),
    }
    atomic_write(path, lambda f: torch.save(payload, f))


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> FitState | None:
    """Restore a run from `path`; None (start afresh) when there is none or it cannot be read."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        _restore_rng(payload["rng"])
        return FitState(**payload["fit"])
    except Exception as ex:  # truncated or foreign file: training from scratch is always correct
        log.warning("ignoring unreadable checkpoint %s (%s: %s); training from scratch", path, type(ex).__name__, ex)
        return None
