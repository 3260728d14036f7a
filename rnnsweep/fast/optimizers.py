"""Adam for a model whose largest tensor is its embedding table, and torch's other optimizers.

A recurrent text classifier's embedding table is its largest tensor by far, and a batch uses a
few hundred of its rows. Dense Adam nonetheless reads and writes the whole table every step. The
optimizers here keep Adam's semantics and avoid that cost (`scattered`, `deferred`), or change
the algorithm to lazy Adam on request (`sparse_adam`).

Every optimizer `make_optimizer` returns is a `torch.optim.Optimizer`, so torch's learning-rate
schedulers drive them; each reads its learning rate from its `param_groups` at every step.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections import OrderedDict, defaultdict

import numpy as np
import torch

from .row_adam import Steps, adam_rows, catch_up, catch_up_all, gradient_rows


class FastOptimizer(torch.optim.Optimizer):
    """The base of rnnsweep's own optimizers: a `torch.optim.Optimizer` (what lr schedulers and
    type checks ask for) that keeps its own state.

    `Optimizer.__init__` is not called: its `add_param_group` imports `torch._dynamo`, which takes
    as long as importing torch itself, in every process that trains (each job of a SLURM array,
    each parallel worker, each single run), and it wraps `step` in profiler hooks that these
    optimizers have no use for. What the base class's other methods read is set here."""

    def _init_groups(self, param_groups: list[dict], defaults: dict) -> None:
        self.defaults = defaults
        self.param_groups = param_groups
        self.state = defaultdict(dict)
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()


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


class AdamMoments(FastOptimizer):
    """What rnnsweep's own Adam variants share: Adam's two moments for each of their tensors."""

    params: list[torch.nn.Parameter]
    exp_avg: list[torch.Tensor]
    exp_avg_sq: list[torch.Tensor]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none or p.grad is None:
                p.grad = None
            else:  # as torch's: a zero gradient still steps the parameter (its moments decay)
                p.grad.detach_().zero_()

    def _check_moments(self, state: dict) -> None:
        """Refuse a state whose moments do not fit, before anything is loaded."""
        theirs = state["exp_avg"] + state["exp_avg_sq"]
        if len(theirs) != len(self.exp_avg) * 2:
            raise ValueError(f"optimizer state: moments for {len(theirs) // 2} tensors, this optimizer has "
                             f"{len(self.exp_avg)} (a checkpoint of another model)")
        for mine, their in zip(self.exp_avg + self.exp_avg_sq, theirs):
            if mine.shape != their.shape:  # copy_ would broadcast a (1, d) moment over every row
                raise ValueError(f"optimizer state: a moment of shape {tuple(their.shape)} cannot be loaded for a "
                                 f"parameter of shape {tuple(mine.shape)} (a checkpoint of another model or vocabulary)")

    def _load_moments(self, state: dict) -> None:
        self._check_moments(state)
        for mine, theirs in zip(self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"]):
            mine.copy_(theirs)


def _step_counts(saved, tensors: int) -> list[int]:
    """Per-tensor step counts from a state dict: a list, or one count for all (saved by 0.2.1 and before)."""
    counts = [int(saved)] * tensors if isinstance(saved, (int, float)) else [int(c) for c in saved]
    if len(counts) != tensors:
        raise ValueError(f"optimizer state: {len(counts)} step counts for {tensors} embedding tables")
    return counts


class DenseAdam(AdamMoments):
    """torch.optim.Adam / AdamW for the dense parameters of rnnsweep's own optimizers: the same
    kernels (`torch.optim.adam.adam`, fused or foreach as `impl` says, or the fused kernel itself),
    hence the same numbers, with Adam's state kept here.

    Why not torch.optim.Adam itself: see FastOptimizer. The functional kernel imports nothing more."""

    def __init__(self, params: list[torch.nn.Parameter], *, lr: float, betas, eps: float,
                 weight_decay: float = 0.0, decoupled: bool = False, impl: dict[str, bool] | None = None):
        self.params = list(params)
        self._init_groups([{"params": self.params, "lr": lr, "betas": tuple(betas), "eps": eps,
                            "weight_decay": weight_decay}], {"lr": lr, "betas": tuple(betas), "eps": eps})
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
        # tensors and adds 1 to each count every step, which costs more than the kernel itself on a
        # small model. `_fused_kernel` is None once the counts part.
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
    def step(self, closure=None) -> None:
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

    def _check_state(self, state: dict) -> None:
        self._check_moments(state)
        if len(state["step"]) != len(self.params):
            raise ValueError(f"optimizer state: {len(state['step'])} step counts for {len(self.params)} parameters")

    def load_state_dict(self, state: dict) -> None:
        self._check_state(state)
        if any(not torch.equal(s.cpu(), state["step"][0].cpu()) for s in state["step"]):
            self._separate_steps()
        for mine, theirs in zip(self.steps, state["step"], strict=True):
            mine.copy_(theirs)
        self._load_moments(state)


class RowAdam(AdamMoments):
    """torch.optim.SparseAdam (lazy Adam), to the bit given the same summed gradient: for the rows
    a step's sparse gradient names, SparseAdam's moment updates and step, in its own torch
    operations and order; other rows are left alone. A row's repeated entries are summed in order
    of appearance (gradient_rows); torch's coalesce may add them in another order, a last-bit
    difference in such a row.

    SparseAdam builds several sparse tensors per step to do this (sparse_mask, coalesce and a
    sparse add per moment), which on a CPU costs more than the recurrent layer of a small model.
    Here the same arithmetic runs on the gradient's rows, gathered once: torch's kernels are kept
    (its vectorized sqrt is not always IEEE's, so a loop of our own could not be bit-identical)."""

    def __init__(self, params: list[torch.nn.Parameter], *, lr: float, betas, eps: float):
        self.params = params
        self._init_groups([{"params": params, "lr": lr, "betas": tuple(betas), "eps": eps}],
                          {"lr": lr, "betas": tuple(betas), "eps": eps})
        self.step_counts = [0] * len(params)  # per table, as SparseAdam counts them: steps with a gradient
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self._slots = [np.full(p.shape[0], -1, dtype=np.int64) if self._mergeable(p) else None for p in params]

    @staticmethod
    def _mergeable(p: torch.Tensor) -> bool:
        return p.device.type == "cpu" and p.dtype == torch.float32

    def _rows(self, i: int, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows in ascending order, each row's summed gradient): what grad.coalesce() holds."""
        if self._slots[i] is None:
            grad = grad.coalesce()
            return grad._indices()[0], grad._values()
        rows, values = gradient_rows(grad, self._slots[i])  # coalesce's sums, without its sort of every entry
        order = np.argsort(rows, kind="stable")
        return torch.from_numpy(rows[order]), torch.from_numpy(values[order])

    @torch.no_grad()
    def step(self, closure=None) -> None:
        group = self.param_groups[0]  # read each step, as SparseAdam does: a schedule may change any
        (b1, b2), eps, lr = group["betas"], group["eps"], group["lr"]
        for i, (p, m, v) in enumerate(zip(self.params, self.exp_avg, self.exp_avg_sq)):
            if p.grad is None:
                continue
            self.step_counts[i] += 1
            t = self.step_counts[i]
            # torch.optim._functional.sparse_adam, operation for operation.
            step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
            rows, g = self._rows(i, p.grad)
            if rows.numel() == 0:
                continue
            old_m = m.index_select(0, rows)
            m_update = g.sub(old_m).mul_(1 - b1)
            m.index_add_(0, rows, m_update)
            old_v = v.index_select(0, rows)
            v_update = g.pow(2).sub_(old_v).mul_(1 - b2)
            v.index_add_(0, rows, v_update)
            numer = m_update.add_(old_m)
            denom = v_update.add_(old_v).sqrt_().add_(eps)
            p.index_add_(0, rows, -step_size * numer.div_(denom))

    def state_dict(self) -> dict:
        return {"step": list(self.step_counts), "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def load_state_dict(self, state: dict) -> None:
        counts = _step_counts(state["step"], len(self.params))
        self._load_moments(state)
        self.step_counts = counts


class LazyAdam(FastOptimizer):
    """Lazy Adam (RowAdam) for the sparse-gradient embedding, fused Adam for every other parameter.

    One optimizer object to the training loop and to checkpoints (its state dict holds both)."""

    def __init__(self, sparse: list, dense: list, *, lr: float, betas, eps: float):
        self.sparse = RowAdam(sparse, lr=lr, betas=betas, eps=eps)
        self.dense = DenseAdam(dense, lr=lr, betas=betas, eps=eps)
        self._init_groups(self.sparse.param_groups + self.dense.param_groups,
                          {"lr": lr, "betas": tuple(betas), "eps": eps})

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.sparse.zero_grad(set_to_none)
        self.dense.zero_grad(set_to_none)

    def step(self, closure=None):
        self.sparse.step()
        self.dense.step()

    def state_dict(self) -> dict:
        return {"sparse": self.sparse.state_dict(), "dense": self.dense.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.sparse._check_moments(state_dict["sparse"])  # both parts checked before either is loaded
        _step_counts(state_dict["sparse"]["step"], len(self.sparse.params))
        self.dense._check_state(state_dict["dense"])
        self.sparse.load_state_dict(state_dict["sparse"])
        self.dense.load_state_dict(state_dict["dense"])


class ScatteredGrad(FastOptimizer):
    """Dense Adam for a model whose embedding produces sparse gradients: before each step, the
    sparse gradient is written into one persistent dense buffer (clearing only the rows the last
    step wrote), which the wrapped optimizer then reads as the dense gradient it always gets.

    The values are those of the dense embedding gradient, so the update is Adam's, row for row,
    decay of untouched rows included. What it saves is torch's dense embedding backward, which
    allocates and zero-fills a table-sized tensor every step (on the CPU, fresh pages each time)."""

    def __init__(self, inner: torch.optim.Optimizer, sparse: list[torch.nn.Parameter]):
        self.inner, self.sparse = inner, sparse
        self._init_groups(inner.param_groups, inner.defaults)
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
        # torch's load_state_dict replaces the inner optimizer's groups: a schedule holding this
        # optimizer must set the rate the inner one reads.
        self.param_groups = self.inner.param_groups


class DeferredAdam(AdamMoments):
    """Adam or AdamW: exact, deferred for the sparse-gradient embeddings, fused for the rest.

    The embeddings must be `nn.Embedding(sparse=True)` on the CPU. A forward pre-hook brings the
    rows a batch looks up up to date before the lookup; a state-dict pre-hook brings every row up
    to date before the weights are read out; `flush()` does the same on demand.
    """

    def __init__(self, embeddings: list[torch.nn.Embedding], dense: list[torch.nn.Parameter], *, lr: float,
                 betas, eps: float, weight_decay: float = 0.0, decoupled: bool = False, impl: dict | None = None):
        if weight_decay and not decoupled:
            raise ValueError("deferred Adam cannot replay L2 weight decay (every row has a gradient); use adamw")
        b1, b2 = (float(b) for b in betas)
        self.dense = DenseAdam(dense, lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay,
                               decoupled=decoupled, impl=impl if impl is not None else {"fused": True}) if dense else None
        self.weights = [e.weight for e in embeddings]
        for w in self.weights:
            if w.device.type != "cpu" or w.dtype != torch.float32:
                raise ValueError("deferred Adam runs on float32 CPU embeddings")
        self.sparse_group = {"params": self.weights, "lr": lr, "betas": (b1, b2), "eps": eps,
                             "weight_decay": weight_decay}
        self._fixed = (b1, b2, float(eps), float(weight_decay))
        self._init_groups([self.sparse_group, *(self.dense.param_groups if self.dense else [])],
                          {"lr": lr, "betas": (b1, b2), "eps": eps})
        # Per table, as torch's Adam counts per parameter: the steps that gave it a gradient.
        self.step_counts = [0] * len(self.weights)
        self.exp_avg = [torch.zeros_like(w) for w in self.weights]
        self.exp_avg_sq = [torch.zeros_like(w) for w in self.weights]
        # Per row: the step whose update it already has.
        self.current = [np.zeros(w.shape[0], dtype=np.int64) for w in self.weights]
        self._slots = [np.full(w.shape[0], -1, dtype=np.int64) for w in self.weights]
        self._views: list[tuple] = [(None, None)] * len(self.weights)  # see _arrays
        # Per table and step: its learning rate (a schedule may change it every step; a row's missed
        # steps are replayed at the rates they had) and what the replays derive from it.
        self.steps = [Steps(b1, b2) for _ in self.weights]
        self._embeddings = list(embeddings)
        self._hooks: list = []
        for i, emb in enumerate(embeddings):
            # The newest optimizer owns the table. The one before applies the steps its rows still
            # miss first (torch's Adam would have applied them as it went) and lets go of it.
            previous = getattr(emb, "_deferred_adam", None)
            if previous is not None and previous is not self:
                previous.flush()
                previous._release(emb)
            emb._deferred_adam = self
            self._hooks += [(emb, emb.register_forward_pre_hook(self._lookup_hook(i))),
                            (emb, emb.register_state_dict_pre_hook(
                                lambda module, *_: module._deferred_adam is self and self.flush()))]

    def _release(self, emb: torch.nn.Module) -> None:
        for owner, handle in self._hooks:
            if owner is emb:
                handle.remove()

    def _scalars(self, i: int) -> tuple:
        g = self.sparse_group
        return self.steps[i].scalars(g["eps"], g["weight_decay"])

    def _arrays(self, i: int) -> tuple:
        """The table's weights, moments and row steps as numpy views, kept while the weights stay
        where they are (a `.data` assignment or a resize moves them; the moments are this optimizer's)."""
        w = self.weights[i]
        key = (w.data_ptr(), w.shape)  # the kept view holds the old memory alive: no new tensor reuses its address
        if self._views[i][0] != key:
            if w.shape != self.exp_avg[i].shape or not w.is_contiguous():
                # The loops index the weights by the moments' rows: another size would be written past.
                raise ValueError(f"deferred Adam: the embedding's weights are now {tuple(w.shape)}"
                                 f"{'' if w.is_contiguous() else ' (not contiguous)'}, its moments "
                                 f"{tuple(self.exp_avg[i].shape)}; build a new optimizer for a resized table")
            self._views[i] = (key, (w.detach().numpy(), self.exp_avg[i].numpy(), self.exp_avg_sq[i].numpy(),
                                    self.current[i]))
        return self._views[i][1]

    def _lookup_hook(self, i: int):
        def hook(module, args):
            if self.step_counts[i] and module._deferred_adam is self:
                ids = args[0].reshape(-1).numpy()  # token ids: integers, never part of a graph
                catch_up(*self._arrays(i), ids, self.step_counts[i], *self._scalars(i))
        return hook

    def flush(self) -> None:
        """Bring every row up to the last step (before anything reads whole tables)."""
        for i, emb in enumerate(self._embeddings):
            count = self.step_counts[i]
            if count and getattr(emb, "_deferred_adam", self) is self:  # a table taken over is another's now
                catch_up_all(*self._arrays(i), count, *self._scalars(i))
                self.steps[i].forget(count)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for w in self.weights:
            if set_to_none or w.grad is None:
                w.grad = None
            else:
                w.grad.detach_().zero_()
        if self.dense:
            self.dense.zero_grad(set_to_none)

    def _check_fixed_settings(self) -> None:
        """A row's missed steps are replayed later with the betas, eps and weight decay of now: a
        change of those mid-run would reach back into steps taken before it. Only the rate may change."""
        g = self.sparse_group
        now = (*(float(b) for b in g["betas"]), float(g["eps"]), float(g["weight_decay"]))
        if now != self._fixed:
            raise ValueError(f"deferred Adam: betas, eps and weight_decay are fixed for a run ({self._fixed} at the "
                             f"start, {now} now); only lr may change (optimizer.embedding_grad=scattered takes any)")

    @torch.no_grad()
    def step(self, closure=None):
        self._check_fixed_settings()
        for i, w in enumerate(self.weights):
            if w.grad is None:  # as torch's Adam: no step for it, its rows do not decay
                continue
            if not w.grad.is_sparse:
                raise ValueError("deferred Adam needs nn.Embedding(sparse=True)")
            rows, values = gradient_rows(w.grad, self._slots[i])
            arrays = self._arrays(i)  # refuses a resized table before the step is counted
            self.step_counts[i] += 1
            count = self.step_counts[i]
            self.steps[i].record(count, self.sparse_group["lr"], self.sparse_group["weight_decay"])
            scalars = self._scalars(i)
            if not adam_rows(*arrays, rows, values, count, *scalars):
                # Rows the forward pass did not read (a gradient set by hand) first catch up.
                catch_up(*arrays, rows, count - 1, *scalars)
                adam_rows(*arrays, rows, values, count, *scalars)
        if self.dense:
            self.dense.step()

    def state_dict(self) -> dict:
        self.flush()  # every row current: the state is plain Adam's
        return {"step": list(self.step_counts), "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq,
                "dense": self.dense.state_dict() if self.dense else {}}

    def load_state_dict(self, state: dict) -> None:
        counts = _step_counts(state["step"], len(self.weights))
        self._check_moments(state)  # the tables' part and the dense part, before either is loaded
        if self.dense:
            self.dense._check_state(state["dense"])
        self._load_moments(state)
        self.step_counts = counts
        for current, steps, count in zip(self.current, self.steps, counts):
            current.fill(count)
            steps.forget(count)
        if self.dense:
            self.dense.load_state_dict(state["dense"])


@functools.cache
def warm_up(lazy: bool) -> None:
    """A few steps of deferred Adam (or, `lazy`, of sparse_adam's row loop) on a tiny table, so that
    numba compiles or loads its loops here rather than inside a run's timed epoch."""
    with torch.random.fork_rng(devices=[]):  # the run's own random stream stays where it was
        table = torch.nn.Embedding(4, 2, sparse=True)
    if lazy:
        opt = RowAdam(list(table.parameters()), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    else:
        opt = DeferredAdam([table], [], lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    for ids in ([[1, 2, 1]], [[3]], [[1, 3]]):  # a repeated row, and rows that miss steps
        table(torch.tensor(ids)).sum().backward()
        opt.step()
        opt.zero_grad()
    if not lazy:
        opt.flush()


def _sparse_embeddings(model: torch.nn.Module, *, frozen: bool = False) -> list[torch.nn.Embedding]:
    """The sparse-gradient embeddings that train; `frozen`: those too that do not.

    A frozen table (requires_grad=False) is in no optimizer: it has no gradient, and deferred
    Adam's catch-up would still move it (AdamW's decay of the rows a batch reads)."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse
            and (frozen or m.weight.requires_grad)]


def _sparse_embedding_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for m in _sparse_embeddings(model) for p in m.parameters()]


def make_optimizer(name: str, model: torch.nn.Module, *, lr: float, weight_decay: float = 0.0,
                   embedding_grad: str = "scattered", **kw) -> torch.optim.Optimizer:
    """The optimizer `name` over `model`'s trainable parameters.

    For Adam/AdamW on a model with sparse-gradient embeddings, `embedding_grad` picks how their
    gradients reach Adam: `scattered` (into a dense buffer, see ScatteredGrad) or `deferred` (see
    DeferredAdam). Both give Adam's update; `dense` models have no sparse embeddings."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name in ("adam", "adamw"):
        sparse = _sparse_embedding_params(model)
        if sparse and embedding_grad == "deferred":
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
        if not _sparse_embeddings(model, frozen=True):
            raise ValueError("optimizer=sparse_adam needs a model built with sparse embedding gradients")
        # A frozen table leaves lazy Adam no rows: the rest trains with its dense Adam as ever.
        ids = {id(p) for p in sparse}
        return LazyAdam(sparse, [p for p in params if id(p) not in ids], lr=lr, betas=kw["betas"], eps=kw["eps"])
    raise ValueError(f"unknown optimizer {name!r}")
