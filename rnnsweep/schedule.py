"""Learning-rate schedules: torch's own lr_scheduler classes, stepped where each one belongs.

`cosine` and `linear_warmup` change the rate after every optimizer step, over all steps of the
run; `plateau` after each epoch, from the validation accuracy. Every optimizer rnnsweep builds is
a `torch.optim.Optimizer` that reads its rate from `param_groups` at each step (the CPU fast path
included), so the rates a run trains with are exactly the ones these classes compute. The
schedule's state goes into each epoch checkpoint, so a resumed run continues the same curve.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.optim import lr_scheduler

from .config import (
    ConstantScheduleConfig,
    CosineScheduleConfig,
    LinearWarmupScheduleConfig,
    PlateauScheduleConfig,
)


class Schedule:
    """One run's learning-rate schedule; `constant` steps nothing."""

    def __init__(self, scheduler: Any | None = None, *, per_step: bool = True):
        self.scheduler = scheduler
        self.per_step = per_step

    def after_step(self) -> None:
        if self.scheduler is not None and self.per_step:
            self.scheduler.step()

    def after_epoch(self, val_acc: float) -> None:
        if self.scheduler is not None and not self.per_step:
            self.scheduler.step(val_acc)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)


def _quietly(make):
    # SequentialLR steps its next scheduler with step(0) at a milestone, which torch warns about
    # (its own deprecated argument); schedulers also warn when stepped before a first
    # optimizer.step(), which the loop never does.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return make()


class _QuietSequential(lr_scheduler.SequentialLR):
    def step(self) -> None:  # type: ignore[override]
        _quietly(super().step)


def problem(settings: Any, total_steps: int) -> str | None:
    """Why `settings` cannot do what it says over a run of `total_steps` optimizer steps (known
    once the data is), in one line; None if it can."""
    if isinstance(settings, LinearWarmupScheduleConfig) and settings.warmup_steps >= total_steps:
        return (f"scheduler.warmup_steps={settings.warmup_steps}: this run has {total_steps} optimizer steps "
                "(train.epochs x batches per epoch), so it would never finish warming up, nor decay; "
                f"set it below {total_steps}")
    return None


def build(settings: Any, optimizer: torch.optim.Optimizer, *, total_steps: int) -> Schedule:
    """The schedule `settings` (a scheduler config) describes, for a run of `total_steps` optimizer steps."""
    if isinstance(settings, ConstantScheduleConfig):
        return Schedule()
    if isinstance(settings, CosineScheduleConfig):
        return Schedule(lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps), eta_min=settings.eta_min))
    if isinstance(settings, LinearWarmupScheduleConfig):
        warmup = settings.warmup_steps
        return Schedule(_quietly(lambda: _QuietSequential(optimizer, [
            lr_scheduler.LinearLR(optimizer, start_factor=settings.start_factor, end_factor=1.0, total_iters=warmup),
            lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=settings.end_factor,
                                  total_iters=max(1, total_steps - warmup)),
        ], milestones=[warmup])))
    if isinstance(settings, PlateauScheduleConfig):
        return Schedule(lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=settings.factor,
                                                       patience=settings.patience, threshold=settings.threshold,
                                                       min_lr=settings.min_lr), per_step=False)
    raise ValueError(f"no schedule for scheduler={getattr(settings, 'name', settings)}")
