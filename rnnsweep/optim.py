"""Optimizers: torch's Adam/AdamW/SGD, and the embedding-gradient paths that make Adam cheap on a CPU.

A recurrent text classifier's largest tensor by far is its embedding table, and a batch uses a few
hundred of its rows. Dense Adam nonetheless reads and writes the whole table every step. The
paths here keep Adam's semantics and avoid that cost (`scattered`, `deferred`), or change the
algorithm to lazy Adam on request (`sparse_adam`).
"""

from __future__ import annotations

import functools
import inspect
import math

import numpy as np
import torch


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


@functools.cache
def _functional_adam(decoupled: bool):
    """torch's functional Adam (or AdamW) step: one function with `decoupled_weight_decay` since
    torch 2.7, a separate `adamw` before."""
    from torch.optim import adam

    if "decoupled_weight_decay" in inspect.signature(adam.adam).parameters:
        return functools.partial(adam.adam, decoupled_weight_decay=decoupled)
    if decoupled:
        from torch.optim.adamw import adamw

        return adamw
    return adam.adam


class AdamMoments:
    """What rnnsweep's own Adam variants share: Adam's two moments for each of their tensors."""

    params: list[torch.nn.Parameter]
    exp_avg: list[torch.Tensor]
    exp_avg_sq: list[torch.Tensor]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def _load_moments(self, state: dict) -> None:
        for mine, theirs in zip(self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"], strict=True):
            mine.copy_(theirs)


class DenseAdam(AdamMoments):
    """torch.optim.Adam / AdamW for the dense parameters of rnnsweep's own optimizers: the same
    kernels (`torch.optim.adam.adam`, fused or foreach as `impl` says, or the fused kernel itself),
    hence the same numbers, with Adam's state kept here.

    Why not torch.optim.Adam itself: the first `Optimizer` a process builds imports
    `torch._dynamo` (its methods are wrapped to disable dynamo), which takes about 2 s on this
    CPU, as long as importing torch, in every process that trains: each job of a SLURM array, each
    parallel worker, each single run. The functional kernel does not."""

    def __init__(self, params: list[torch.nn.Parameter], *, lr: float, betas, eps: float,
                 weight_decay: float = 0.0, decoupled: bool = False, impl: dict[str, bool] | None = None):
        self.params = list(params)
        self.param_groups = [{"params": self.params, "lr": lr, "betas": tuple(betas), "eps": eps,
                              "weight_decay": weight_decay}]
        self.decoupled = decoupled
        impl = impl if impl is not None else _adam_impl("auto", self.params)
        self.fused, self.foreach = bool(impl.get("fused")), bool(impl.get("foreach"))
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        # Per parameter, as torch keeps it: float32 tensors, on the parameter's device for fused Adam.
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device if self.fused else "cpu")
                      for p in self.params]
        # While every step updates every parameter (a model's dense weights, as a rule), their step
        # counts are equal, and fused Adam's kernel is called directly with one count shared by all
        # (`self.steps` then holds that one tensor n times). torch's functional wrapper regroups the
        # tensors and adds 1 to each count every step: 0.28-0.45 ms a step of the lesson's LSTM on
        # this CPU, against 0.12-0.15 ms this way. `_fused_kernel` is None once the counts part.
        one_kind = len({(p.device, p.dtype) for p in self.params}) == 1
        self._fused_kernel = (getattr(torch, "_fused_adamw_" if decoupled else "_fused_adam_", None)
                              if self.fused and one_kind and self.params else None)
        if self._fused_kernel is not None:
            self.steps = [self.steps[0]] * len(self.params)

    def _separate_steps(self) -> None:
        """Give each parameter its own step count again (from then on torch's functional path)."""
        if self._fused_kernel is not None:
            self.steps = [s.clone() for s in self.steps]
            self._fused_kernel = None

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        active = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not active:
            return
        b1, b2 = group["betas"]
        if self._fused_kernel is not None and len(active) == len(self.params):
            self.steps[0].add_(1)
            self._fused_kernel(self.params, [p.grad for p in self.params], self.exp_avg, self.exp_avg_sq, [],
                               self.steps, amsgrad=False, lr=group["lr"], beta1=b1, beta2=b2,
                               weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                               grad_scale=None, found_inf=None)
            return
        self._separate_steps()  # a parameter without a gradient keeps its count, as in torch
        adam = _functional_adam(self.decoupled)
        adam([self.params[i] for i in active], [self.params[i].grad for i in active],
             [self.exp_avg[i] for i in active], [self.exp_avg_sq[i] for i in active], [],
             [self.steps[i] for i in active], foreach=self.foreach, fused=self.fused, capturable=False,
             differentiable=False, grad_scale=None, found_inf=None, has_complex=False, amsgrad=False,
             beta1=b1, beta2=b2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
             maximize=False)

    def state_dict(self) -> dict:
        return {"step": self.steps, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def load_state_dict(self, state: dict) -> None:
        if any(not torch.equal(s.cpu(), state["step"][0].cpu()) for s in state["step"]):
            self._separate_steps()
        for mine, theirs in zip(self.steps, state["step"], strict=True):
            mine.copy_(theirs)
        self._load_moments(state)


class RowAdam(AdamMoments):
    """torch.optim.SparseAdam's algorithm (lazy Adam), row by row.

    For the rows a step's sparse gradient names: m, v <- Adam's moment updates; p <- Adam's step
    with the global bias corrections. Other rows are left alone. SparseAdam builds several sparse
    tensors per step to do this; on a CPU that costs more than the recurrent layer at batch 16.
    Here float32 CPU tables take deferred Adam's compiled row loop (without its replay), anything
    else a handful of row-indexed torch ops."""

    def __init__(self, params: list[torch.nn.Parameter], *, lr: float, betas, eps: float):
        self.params, self.lr, (self.beta1, self.beta2), self.eps = params, lr, tuple(betas), eps
        self.param_groups = [{"params": params, "lr": lr, "betas": tuple(betas), "eps": eps}]
        self.step_count = 0
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self._compiled = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)
        if self._compiled:
            from .deferred_adam import adam_rows, gradient_rows
            self._adam_rows, self._gradient_rows = adam_rows, gradient_rows
            # adam_rows records each row's last step for deferred Adam's replay; lazy Adam never reads it.
            self._unused = [np.zeros(p.shape[0], dtype=np.int64) for p in params]
            self._slots = [np.full(p.shape[0], -1, dtype=np.int64) for p in params]

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        t, b1, b2 = self.step_count, self.beta1, self.beta2
        step_size = self.lr / (1 - b1**t)
        root_bc2 = math.sqrt(1 - b2**t)
        for i, (p, m, v) in enumerate(zip(self.params, self.exp_avg, self.exp_avg_sq)):
            if p.grad is None:
                continue
            if self._compiled:
                rows, g = self._gradient_rows(p.grad, self._slots[i])
                self._adam_rows(p.detach().numpy(), m.numpy(), v.numpy(), self._unused[i], rows, g,
                                t, self.lr, b1, b2, self.eps, 1.0, False, False)
                continue
            grad = p.grad.coalesce()
            rows, g = grad.indices()[0], grad.values()
            m_rows = m.index_select(0, rows).lerp_(g, 1 - b1)
            v_rows = v.index_select(0, rows).mul_(b2).addcmul_(g, g, value=1 - b2)
            m.index_copy_(0, rows, m_rows)
            v.index_copy_(0, rows, v_rows)
            p.index_add_(0, rows, m_rows.div_(v_rows.sqrt_().div_(root_bc2).add_(self.eps)), alpha=-step_size)

    def state_dict(self) -> dict:
        return {"step": self.step_count, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        self._load_moments(state)


class LazyAdam:
    """Lazy Adam (RowAdam) for the sparse-gradient embedding, fused Adam for every other parameter.

    One optimizer object to the training loop and to checkpoints (its state dict holds both)."""

    def __init__(self, sparse: list, dense: list, *, lr: float, betas, eps: float):
        self.sparse = RowAdam(sparse, lr=lr, betas=betas, eps=eps)
        self.dense = DenseAdam(dense, lr=lr, betas=betas, eps=eps)
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
            # The raw entries, one per looked-up token: index_add_ sums repeats without coalesce's sort.
            rows = p.grad._indices()[0]
            buffer = self._buffers[i]
            if self._written[i] is not None:
                buffer.index_fill_(0, self._written[i], 0.0)
            buffer.index_add_(0, rows, p.grad._values())
            self._written[i] = rows
            p.grad = buffer
        return self.inner.step()

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.inner.load_state_dict(state_dict)


def _sparse_embeddings(model: torch.nn.Module) -> list[torch.nn.Embedding]:
    return [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse]


def _sparse_embedding_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for m in _sparse_embeddings(model) for p in m.parameters()]


def make_optimizer(name: str, model: torch.nn.Module, *, lr: float, weight_decay: float = 0.0,
                   embedding_grad: str = "scattered", **kw) -> torch.optim.Optimizer:
    """The optimizer `name` over `model`'s trainable parameters.

    For Adam/AdamW on a model with sparse-gradient embeddings, `embedding_grad` picks how their
    gradients reach Adam: `scattered` (into a dense buffer, see ScatteredGrad) or `deferred` (see
    deferred_adam.DeferredAdam). Both give Adam's update; `dense` models have no sparse embeddings."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name in ("adam", "adamw"):
        sparse = _sparse_embedding_params(model)
        if sparse and embedding_grad == "deferred":
            from .deferred_adam import DeferredAdam  # numba: imported by the runs that use it

            ids = {id(p) for p in sparse}
            impl = _adam_impl(kw.get("impl", "auto"), params)
            return DeferredAdam(_sparse_embeddings(model), [p for p in params if id(p) not in ids], lr=lr,
                                betas=kw["betas"], eps=kw["eps"], weight_decay=weight_decay,
                                decoupled=name == "adamw", impl=impl)
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        opt = cls(params, lr=lr, betas=tuple(kw["betas"]), eps=kw["eps"], weight_decay=weight_decay,
                  **_adam_impl(kw.get("impl", "auto"), params))
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
            # torch 2.11-2.12 warn of unchecked invariants even with check_invariants=False
            # (pytorch#178274); an explicit scope silences it. coalesce() made this gradient valid.
            with torch.sparse.check_sparse_tensor_invariants(enable=False):
                p.grad = torch.sparse_coo_tensor(g._indices(), g._values() * scale, g.shape, is_coalesced=True,
                                                 check_invariants=False)
        else:
            g.mul_(scale)
