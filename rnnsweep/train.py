"""Fit and evaluate: epochs of optimizer steps, validation after each, metrics to callbacks.

Plain torch: a model, an optimizer, batch iterables. Losses and correct counts accumulate on
the device and are read back only every `log_every` steps and at the end of an epoch, so the
loop does not stall on a host sync per step.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data.batches import Batch


class Diverged(RuntimeError):
    """The training loss became NaN or infinite; `history` holds the epochs finished before."""

    def __init__(self, message: str, history: list[dict[str, float]]):
        super().__init__(message)
        self.history = history


class Callback(Protocol):
    def on_step(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_epoch(self, step: int, metrics: dict[str, float]) -> None: ...


def _adam_impl(impl: str, params: list[torch.nn.Parameter]) -> dict[str, bool]:
    """Keyword arguments that select Adam's implementation; `auto` takes the fused kernel where
    torch has one for the parameters' device (CPU and CUDA), which is the same algorithm in one
    pass over the memory instead of several."""
    if impl == "auto":
        devices = {p.device.type for p in params}
        impl = "fused" if devices <= {"cpu", "cuda"} else "foreach"
    if impl == "fused":
        return {"fused": True}
    return {"foreach": impl == "foreach"}


class RowAdam:
    """torch.optim.SparseAdam's algorithm (lazy Adam) as a handful of row-indexed ops.

    For the rows a step's sparse gradient names: m, v <- Adam's moment updates; p <- Adam's step
    with the global bias corrections. Other rows are left alone. SparseAdam builds several sparse
    tensors per step to do this; on a CPU that costs more than the recurrent layer at batch 16."""

    def __init__(self, params: list[torch.nn.Parameter], *, lr: float, betas, eps: float):
        self.params, self.lr, (self.beta1, self.beta2), self.eps = params, lr, tuple(betas), eps
        self.param_groups = [{"params": params, "lr": lr, "betas": tuple(betas), "eps": eps}]
        self.step_count = 0
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        t, b1, b2 = self.step_count, self.beta1, self.beta2
        step_size = self.lr / (1 - b1**t)
        root_bc2 = math.sqrt(1 - b2**t)
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if p.grad is None:
                continue
            grad = p.grad.coalesce()
            rows, g = grad.indices()[0], grad.values()
            m_rows = m.index_select(0, rows).lerp_(g, 1 - b1)
            v_rows = v.index_select(0, rows).mul_(b2).addcmul_(g, g, value=1 - b2)
            m.index_copy_(0, rows, m_rows)
            v.index_copy_(0, rows, v_rows)
            p.index_add_(0, rows, m_rows.div_(v_rows.sqrt_().div_(root_bc2).add_(self.eps)), alpha=-step_size)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        return {"step": self.step_count, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        for mine, theirs in zip(self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"]):
            mine.copy_(theirs)


class LazyAdam:
    """Lazy Adam (RowAdam) for the sparse-gradient embedding, fused Adam for every other parameter.

    One optimizer object to the training loop and to checkpoints (its state dict holds both)."""

    def __init__(self, sparse: list, dense: list, *, lr: float, betas, eps: float):
        self.sparse = RowAdam(sparse, lr=lr, betas=betas, eps=eps)
        self.dense = torch.optim.Adam(dense, lr=lr, betas=tuple(betas), eps=eps, **_adam_impl("auto", dense))
        self.param_groups = self.sparse.param_groups + self.dense.param_groups
        self.defaults = {"lr": lr}

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.sparse.zero_grad(set_to_none)
        self.dense.zero_grad(set_to_none)

    def step(self, closure=None):
        self.sparse.step()
        self.dense.step()

    def state_dict(self) -> dict:
        return {"sparse": self.sparse.state_dict(), "dense": self.dense.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.sparse.load_state_dict(state_dict["sparse"])
        self.dense.load_state_dict(state_dict["dense"])


class ScatteredGrad:
    """Dense Adam for a model whose embedding produces sparse gradients: before each step, the
    sparse gradient is written into one persistent dense buffer (clearing only the rows the last
    step wrote), which the wrapped optimizer then reads as the dense gradient it always gets.

    The values are those of the dense embedding gradient, so the update is Adam's, row for row,
    decay of untouched rows included. What it saves is torch's dense embedding backward, which
    allocates and zero-fills a table-sized tensor every step (on the CPU, fresh pages each time)."""

    def __init__(self, inner: torch.optim.Optimizer, sparse: list[torch.nn.Parameter]):
        self.inner, self.sparse = inner, sparse
        self.param_groups, self.defaults = inner.param_groups, inner.defaults
        self._buffers = [torch.zeros_like(p) for p in sparse]
        self._written: list[torch.Tensor | None] = [None] * len(sparse)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none)

    def step(self, closure=None):
        for i, p in enumerate(self.sparse):
            if p.grad is None or not p.grad.is_sparse:
                continue
            grad = p.grad.coalesce()
            rows = grad.indices()[0]
            buffer = self._buffers[i]
            if self._written[i] is not None:
                buffer.index_fill_(0, self._written[i], 0.0)
            buffer.index_copy_(0, rows, grad.values())
            self._written[i] = rows
            p.grad = buffer
        return self.inner.step()

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.inner.load_state_dict(state_dict)


def _sparse_embedding_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse for p in m.parameters()]


def make_optimizer(name: str, model: torch.nn.Module, *, lr: float, weight_decay: float = 0.0,
                   **kw) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        opt = cls(params, lr=lr, betas=tuple(kw["betas"]), eps=kw["eps"], weight_decay=weight_decay,
                  **_adam_impl(kw.get("impl", "auto"), params))
        sparse = _sparse_embedding_params(model)
        return ScatteredGrad(opt, sparse) if sparse else opt
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=kw["momentum"], nesterov=kw["nesterov"], weight_decay=weight_decay
        )
    if name == "sparse_adam":
        sparse = _sparse_embedding_params(model)
        if not sparse:
            raise ValueError("optimizer=sparse_adam needs a model built with sparse embedding gradients")
        ids = {id(p) for p in sparse}
        return LazyAdam(sparse, [p for p in params if id(p) not in ids], lr=lr, betas=kw["betas"], eps=kw["eps"])
    raise ValueError(f"unknown optimizer {name!r}")


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
            p.grad = torch.sparse_coo_tensor(g._indices(), g._values() * scale, g.shape, is_coalesced=True,
                                             check_invariants=False)
        else:
            g.mul_(scale)


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


@dataclass
class FitState:
    """Where training stands after `epoch` completed epochs; what a checkpoint stores."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per epoch
    train_seconds: float = 0.0  # optimizer steps only, evaluation excluded
    train_examples: int = 0

    @property
    def examples_per_s(self) -> float:
        return self.train_examples / self.train_seconds if self.train_seconds > 0 else 0.0


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
    amp: bool = False,
) -> FitState:
    """Train until `epochs` are done, from scratch or from a checkpoint's `state`.

    `train_batches(epoch)` gives that epoch's batches; it must depend on the epoch alone (seed
    it per epoch), so a resumed run sees exactly the batches an uninterrupted one would.
    `on_epoch_end` runs after each epoch's validation (to write a checkpoint).
    """
    callbacks = list(callbacks)
    params = [p for p in model.parameters() if p.requires_grad]
    autocast, scaler = autocast_for(device, amp)
    state = state or FitState()
    history = state.history
    step = state.step
    for epoch in range(state.epoch + 1, epochs + 1):
        model.train()
        # Window sums for step logs and epoch sums for the epoch record, both kept on the device.
        win_loss = torch.zeros((), device=device)
        win_correct = torch.zeros((), dtype=torch.long, device=device)
        ep_loss = torch.zeros((), dtype=torch.float64, device=device)
        ep_correct = torch.zeros((), dtype=torch.long, device=device)
        win_n = ep_n = 0
        bar = tqdm(
            train_batches(epoch),
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{epochs}",
            unit="batch",
            leave=False,
            disable=not progress,
        )
        started = time.perf_counter()
        for batch in bar:
            batch = batch.to(device)
            with autocast():
                logits = model(batch.ids, batch.lengths).float()
            loss = F.cross_entropy(logits, batch.labels)
            optimizer.zero_grad(set_to_none=True)
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
            step += 1
            b = len(batch)
            correct = (logits.detach().argmax(1) == batch.labels).sum()
            win_loss += loss.detach() * b
            win_correct += correct
            ep_loss += loss.detach().double() * b
            ep_correct += correct
            win_n += b
            ep_n += b
            if step % log_every == 0:
                metrics = {
                    "train/loss": _finite_or_raise(float(win_loss) / win_n, step, epoch, history),
                    "train/acc": float(win_correct) / win_n,
                    "epoch": epoch,
                }
                bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", acc=f"{metrics['train/acc']:.3f}")
                for cb in callbacks:
                    cb.on_step(step, metrics)
                win_loss.zero_()
                win_correct.zero_()
                win_n = 0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_seconds = time.perf_counter() - started
        bar.close()
        record = {
            "epoch": epoch,
            "train/loss": _finite_or_raise(float(ep_loss) / max(ep_n, 1), step, epoch, history),
            "train/acc": float(ep_correct) / max(ep_n, 1),
            "train/examples_per_s": ep_n / epoch_seconds if epoch_seconds > 0 else 0.0,
        }
        val = evaluate(model, val_batches(), num_classes, device, amp)
        record.update({f"val/{k}": v for k, v in val.items()})
        history.append(record)
        state.epoch, state.step = epoch, step
        state.train_seconds += epoch_seconds
        state.train_examples += ep_n
        for cb in callbacks:
            cb.on_epoch(step, record)
        if on_epoch_end is not None:
            on_epoch_end(state)
    return state
