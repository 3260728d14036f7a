"""Fit and evaluate: epochs of optimizer steps, validation after each, metrics to callbacks.

Plain torch: a model, an optimizer, batch iterables. Each step's loss and logits are kept as they
are and summed only every `log_every` steps and at the end of an epoch, so the loop neither stalls
on a host sync per step nor spends small tensor operations on metrics a step.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

import torch
import torch.nn.functional as F
from .data.batches import Batch
from .progress import tqdm
from .schedule import Schedule


# An epoch whose mean training loss is this many times the loss of guessing (ln K for K classes)
# has exploded: a run at a learning rate far too high settles there, its accuracy a coin toss
# that a table must not average or call best.
EXPLODED = 10.0


class Diverged(RuntimeError):
    """The training loss became NaN or infinite, or exploded (see EXPLODED); `history` holds the
    epochs finished before."""

    def __init__(self, message: str, history: list[dict[str, float]]):
        super().__init__(message)
        self.history = history


class Callback(Protocol):
    def on_step(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_epoch(self, step: int, metrics: dict[str, float]) -> None: ...


def autocast_for(device: torch.device, amp: bool):
    """(context factory, grad scaler or None): bfloat16 autocast where the device has it, else
    float16 with loss scaling; plain float32 when `amp` is off."""
    if not amp:
        return contextlib.nullcontext, None
    if device.type != "cuda":
        # oneDNN's CPU recurrent kernels have no bfloat16 path on most CPUs: refuse, do not crash mid-run.
        raise ValueError("runtime.amp=true needs a CUDA device; this run is on the CPU (set runtime.amp=false)")
    bf16 = torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float16
    scaler = None if bf16 else torch.amp.GradScaler(device.type)
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def macro_f1(confusion: torch.Tensor) -> float:
    """Mean F1 over the classes that occur in the labels or the predictions (as scikit-learn)."""
    tp = confusion.diag().double()
    fp = confusion.sum(0).double() - tp
    fn = confusion.sum(1).double() - tp
    present = (tp + fp + fn) > 0
    f1 = 2 * tp / (2 * tp + fp + fn).clamp(min=1)
    return float(f1[present].mean()) if present.any() else 0.0


@torch.inference_mode()
def evaluate(model: torch.nn.Module, batches: Iterable[Batch], num_classes: int, device: torch.device,
             amp: bool = False) -> dict[str, float]:
    model.eval()
    autocast, _ = autocast_for(device, amp)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    for batch in batches:
        batch = batch.to(device)
        with autocast():
            logits = model(batch.ids, batch.lengths).float()
        loss_sum += F.cross_entropy(logits, batch.labels, reduction="sum")
        confusion += torch.bincount(batch.labels * num_classes + logits.argmax(1), minlength=num_classes**2)
        n += len(batch)
    confusion = confusion.view(num_classes, num_classes).cpu()
    return {
        "acc": float(confusion.diag().sum()) / max(n, 1),
        "macro_f1": macro_f1(confusion),
        "loss": float(loss_sum) / max(n, 1),
    }


class _Window:
    """The steps since the last read: each step's mean loss, batch size, logits and labels, held
    as they are. Summing them step by step would take ten small tensor operations a step, a
    visible share of a small model's step on a CPU; here that is a few operations per read. Each
    read also adds the window to the epoch's totals (`epoch`: loss sum, correct, examples)."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.sizes: list[int] = []
        self.logits: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.epoch: tuple[float, int, int] = (0.0, 0, 0)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.losses.append(loss.detach())
        self.sizes.append(len(labels))
        self.logits.append(logits.detach())
        self.labels.append(labels)

    def read(self) -> tuple[float, int, int]:
        """(loss summed over examples, correct predictions, examples), then empty."""
        if not self.sizes:
            return 0.0, 0, 0
        sizes = torch.tensor(self.sizes, dtype=torch.float64, device=self.losses[0].device)
        loss_sum = float(torch.dot(torch.stack(self.losses).double(), sizes))
        correct = int((torch.cat(self.logits).argmax(1) == torch.cat(self.labels)).sum())
        n = sum(self.sizes)
        for held in (self.losses, self.sizes, self.logits, self.labels):
            held.clear()
        ep_loss, ep_correct, ep_n = self.epoch
        self.epoch = (ep_loss + loss_sum, ep_correct + correct, ep_n + n)
        return loss_sum, correct, n


@dataclass
class FitState:
    """Where training stands after `epoch` completed epochs; what a checkpoint stores."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per epoch
    train_seconds: float = 0.0  # optimizer steps only, evaluation excluded
    train_examples: int = 0
    stopped_early: bool = False  # train.patience ended the run before its last epoch

    @property
    def examples_per_s(self) -> float:
        return self.train_examples / self.train_seconds if self.train_seconds > 0 else 0.0


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> None:
    """torch's clip_grad_norm_, also for sparse gradients (which its fused norm does not take)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not any(g.is_sparse for g in grads):
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    grads = [g.coalesce() if g.is_sparse else g for g in grads]
    total = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g._values() if g.is_sparse else g) for g in grads])
    )
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p, g in zip([p for p in params if p.grad is not None], grads):
        if g.is_sparse:
            # torch 2.11-2.12 warn of unchecked invariants even with check_invariants=False
            # (pytorch#178274); an explicit scope silences it. coalesce() made this gradient valid.
            with torch.sparse.check_sparse_tensor_invariants(enable=False):
                p.grad = torch.sparse_coo_tensor(g._indices(), g._values() * scale, g.shape, is_coalesced=True,
                                                 check_invariants=False)
        else:
            g.mul_(scale)


def best_epoch(history: list[dict[str, float]]) -> int:
    """The epoch (1-based) with the best validation accuracy; the earliest of equals."""
    best = max(range(len(history)), key=lambda i: (history[i]["val/acc"], -i))
    return history[best]["epoch"]


def patience_ran_out(history: list[dict[str, float]], patience: int | None) -> bool:
    """Whether `patience` epochs have passed without a better validation accuracy than the best."""
    return patience is not None and bool(history) and history[-1]["epoch"] - best_epoch(history) >= patience


def _finite_or_raise(value: float, step: int, epoch: int, history: list) -> float:
    if not math.isfinite(value):
        raise Diverged(f"training loss became {value} at step {step} (epoch {epoch})", history)
    return value


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_batches: Callable[[int], Iterable[Batch]],
    val_batches: Callable[[], Iterable[Batch]],
    *,
    epochs: int,
    steps_per_epoch: int,
    num_classes: int,
    device: torch.device,
    grad_clip: float | None = None,
    log_every: int = 50,
    callbacks: Iterable[Callback] = (),
    progress: bool = False,
    state: FitState | None = None,
    on_epoch_end: Callable[[FitState], None] | None = None,
    pending_work: Callable[[], None] | None = None,
    amp: bool = False,
    schedule: Schedule | None = None,
    patience: int | None = None,
) -> FitState:
    """Train until `epochs` are done, from scratch or from a checkpoint's `state`.

    `train_batches(epoch)` gives that epoch's batches; it must depend on the epoch alone (seed
    it per epoch), so a resumed run sees exactly the batches an uninterrupted one would.
    `on_epoch_end` runs after each epoch's validation (to write a checkpoint). `pending_work`
    finishes what the optimizer deferred (updates it applies lazily) before the epoch's clock
    stops, since that work is the epoch's. `schedule` sets the learning rate after each step
    and each validation; `patience` stops the run once that many epochs bring no better
    validation accuracy (`state.stopped_early`).
    """
    callbacks = list(callbacks)
    params = [p for p in model.parameters() if p.requires_grad]
    autocast, scaler = autocast_for(device, amp)
    state = state or FitState()
    history = state.history
    step = state.step
    schedule = schedule or Schedule()
    for epoch in range(state.epoch + 1, epochs + 1):
        if patience_ran_out(history, patience):  # a run resumed after it had stopped
            state.stopped_early = True
            break
        model.train()
        window = _Window()
        bar = tqdm(
            train_batches(epoch),
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{epochs}",
            unit="batch",
            leave=False,
            disable=not progress,
        )
        first_lr = optimizer.param_groups[0]["lr"]
        step_lr = first_lr
        started = time.perf_counter()
        for batch in bar:
            batch = batch.to(device)
            with autocast():
                logits = model(batch.ids, batch.lengths).float()
            loss = F.cross_entropy(logits, batch.labels)
            optimizer.zero_grad(set_to_none=True)
            step_lr = optimizer.param_groups[0]["lr"]
            if scaler is None:
                loss.backward()
                if grad_clip is not None:
                    clip_grad_norm(params, grad_clip)
                optimizer.step()
            else:  # float16: scale the loss so small gradients do not flush to zero
                scaler.scale(loss).backward()
                if grad_clip is not None:
                    scaler.unscale_(optimizer)
                    clip_grad_norm(params, grad_clip)
                scaler.step(optimizer)
                scaler.update()
            schedule.after_step()
            step += 1
            window.add(loss, logits, batch.labels)
            if step % log_every == 0:
                loss_sum, correct, n = window.read()
                metrics = {
                    "train/loss": _finite_or_raise(loss_sum / n, step, epoch, history),
                    "train/acc": correct / n,
                    "epoch": epoch,
                    "lr": step_lr,  # the rate this step used
                }
                bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", acc=f"{metrics['train/acc']:.3f}")
                for cb in callbacks:
                    cb.on_step(step, metrics)
        window.read()
        ep_loss, ep_correct, ep_n = window.epoch
        if pending_work is not None:
            pending_work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_seconds = time.perf_counter() - started
        bar.close()
        record = {
            "epoch": epoch,
            "lr": first_lr,  # the rate of the epoch's first step
            "train/loss": _finite_or_raise(ep_loss / max(ep_n, 1), step, epoch, history),
            "train/acc": ep_correct / max(ep_n, 1),
            "train/examples_per_s": ep_n / epoch_seconds if epoch_seconds > 0 else 0.0,
        }
        chance = math.log(num_classes)
        if record["train/loss"] > EXPLODED * chance:
            raise Diverged(f"training loss {record['train/loss']:.4g} in epoch {epoch} is more than {EXPLODED:g} "
                           f"times the loss of guessing (ln {num_classes} = {chance:.3f}): it exploded", history)
        val = evaluate(model, val_batches(), num_classes, device, amp)
        record.update({f"val/{k}": v for k, v in val.items()})
        history.append(record)
        schedule.after_epoch(record["val/acc"])
        state.epoch, state.step = epoch, step
        state.train_seconds += epoch_seconds
        state.train_examples += ep_n
        state.stopped_early = epoch < epochs and patience_ran_out(history, patience)
        for cb in callbacks:
            cb.on_epoch(step, record)
        if on_epoch_end is not None:
            on_epoch_end(state)
        if state.stopped_early:
            break
    return state
