"""Epoch checkpoints: everything needed to continue a run as if it had never stopped.

Model and optimizer state (with each parameter group's hyperparameters: the learning rate a
schedule has reached), the schedule's state, the best epoch's weights when the run keeps them
(train.select=best_val), the training position (`FitState`) and every random generator the
loop draws from (dropout uses torch's). Batch order needs no state: each epoch's shuffle is
seeded by the epoch itself. Files are written whole or not at all, and read with
`weights_only=True`, so a checkpoint can hold nothing but tensors and plain containers.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .store import atomic_write
from .schedule import Schedule
from .loop import FitState

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


@dataclass
class Resumed:
    state: FitState
    best_model: dict[str, torch.Tensor] | None  # the best epoch's weights, when the run keeps them


def _hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict]:
    # rnnsweep's fast optimizers keep only their moments in their state dicts; a schedule's
    # current rate lives in the groups (and chained schedules compute the next rate from it).
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def save(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: FitState, *,
         schedule: Schedule | None = None, best_model: dict[str, torch.Tensor] | None = None) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "param_groups": _hyperparameters(optimizer),
        "schedule": schedule.state_dict() if schedule is not None else {},
        "best_model": best_model,
        "fit": asdict(state),
        "rng": _rng_state(),
    }
    atomic_write(path, lambda f: torch.save(payload, f))


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         schedule: Schedule | None = None) -> Resumed | None:
    """Restore a run from `path`; None (start afresh) when there is none or it cannot be read."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        for group, saved in zip(optimizer.param_groups, payload["param_groups"], strict=True):
            group.update(saved)
        if schedule is not None:
            schedule.load_state_dict(payload["schedule"])
        _restore_rng(payload["rng"])
        return Resumed(FitState(**payload["fit"]), payload["best_model"])
    except Exception as ex:  # truncated or foreign file: training from scratch is always correct
        log.warning("ignoring unreadable checkpoint %s (%s: %s); training from scratch", path, type(ex).__name__, ex)
        return None
