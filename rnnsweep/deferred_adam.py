"""Adam for an embedding table, exactly, without touching every row at every step.

With a zero gradient, Adam still moves a row: its moments decay and the parameter takes a step
along them. Dense Adam pays for that by reading and writing the whole table (parameter, gradient,
both moments) on every step: on a CPU that is most of a small recurrent model's step. Here a row
that a batch does not use is left as it is, and the steps it missed are replayed, one by one,
with Adam's own formula and that step's bias corrections, when a batch next reads it (or before
anything reads the whole table: evaluation of every row, a checkpoint, the end of an epoch).

An untouched row's update shrinks geometrically (by about beta1 / sqrt(beta2) a step). Once every
element's update is below half a unit in the last place of its weight, float32 Adam rounds the
update away, so the replay stops there and only decays the moments for the remaining steps (and
AdamW's decoupled decay of the weight) in closed form. The result is Adam's, to float32 rounding,
as fused and for-loop Adam agree with each other.

The loops are compiled by numba (see numba_math): they run over a few hundred rows per step,
element by element, which is exactly what Python and whole-tensor torch ops are bad at. Rows are
independent, so the loops over them are split over numba's threads (cpu_rnn.set_threads).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from numba import prange

from .numba_math import JIT as _jit
from .numba_math import PARALLEL_JIT as _parallel
from .numba_math import sqrt as _sqrt
from .optim import AdamMoments, DenseAdam, RowAdam

# Below this |update| / |weight|, float32 round-to-nearest leaves the weight unchanged (half an ulp).
_HALF_ULP = np.float32(2.0**-25)
_CHECK_EVERY = 8


@_jit
def _replay(p, m, v, r, first, last, lr, b1, b2, eps, decay, may_stop):
    """Zero-gradient Adam steps `first`..`last` (1-based step numbers) on row `r`.

    Element arithmetic in float32, as torch's float32 Adam; per-step scalars in float64."""
    pr, mr, vr = p[r], m[r], v[r]
    b1f, b2f, epsf, decayf = np.float32(b1), np.float32(b2), np.float32(eps), np.float32(decay)
    b1_pow, b2_pow = b1**first, b2**first
    s = first
    while s <= last:
        step_size = np.float32(lr / (1.0 - b1_pow))
        bc2_sqrt = np.float32(math.sqrt(1.0 - b2_pow))
        # Counting costs as much as the step itself, so only the first step and every
        # _CHECK_EVERY-th after it count (the first: rows that never had a gradient, or whose
        # updates already round away, stop at once); the few steps replayed past the first
        # insignificant one are float32 Adam's own steps.
        check = may_stop and (s - first) % _CHECK_EVERY == 0
        significant = 0  # elements whose update float32 would not round away
        for e in range(pr.shape[0]):
            mi = mr[e] * b1f
            vi = vr[e] * b2f
            update = step_size * mi / (_sqrt(vi) / bc2_sqrt + epsf)
            w = pr[e] * decayf
            if check:
                significant += np.int32(abs(update) >= abs(w) * _HALF_ULP)
            mr[e] = mi
            vr[e] = vi
            pr[e] = w - update
        s += 1
        b1_pow *= b1
        b2_pow *= b2
        if check and significant == 0 and s <= last:
            rest = last - s + 1
            # Powers of the float32 factors that each skipped step would have multiplied by.
            fm = np.float32(np.float64(b1f) ** rest)
            fv = np.float32(np.float64(b2f) ** rest)
            fp = np.float32(np.float64(decayf) ** rest)
            for e in range(pr.shape[0]):
                mr[e] = mr[e] * fm
                vr[e] = vr[e] * fv
                pr[e] = pr[e] * fp
            return


@_parallel
def _catch_up(p, m, v, current, ids, step, lr, b1, b2, eps, decay, may_stop):
    """Bring every row named in `ids` (repeats allowed) up to `step`."""
    stale = np.empty(ids.shape[0], dtype=np.int64)
    first = np.empty(ids.shape[0], dtype=np.int64)
    k = 0
    for i in range(ids.shape[0]):  # each stale row once: no two threads may replay the same row
        r = ids[i]
        if current[r] < step:
            stale[k] = r
            first[k] = current[r] + 1
            current[r] = step
            k += 1
    for j in prange(k):
        _replay(p, m, v, stale[j], first[j], step, lr, b1, b2, eps, decay, may_stop)


@_parallel
def _catch_up_all(p, m, v, current, step, lr, b1, b2, eps, decay, may_stop):
    for r in prange(p.shape[0]):
        if current[r] < step:
            _replay(p, m, v, r, current[r] + 1, step, lr, b1, b2, eps, decay, may_stop)
            current[r] = step


@_parallel
def adam_rows(p, m, v, current, rows, grads, step, lr, b1, b2, eps, decay, may_stop, replay=True):
    """Adam step number `step` for the rows with a gradient (each row once), after the steps they
    missed (replay=False: without them, which is lazy Adam, optimizer=sparse_adam)."""
    step_size = np.float32(lr / (1.0 - b1**step))
    bc2_sqrt = np.float32(math.sqrt(1.0 - b2**step))
    b1f, b2f, epsf, decayf = np.float32(b1), np.float32(b2), np.float32(eps), np.float32(decay)
    one = np.float32(1.0)
    for i in prange(rows.shape[0]):  # rows are distinct: each thread owns the rows it takes
        r = rows[i]
        if replay and current[r] < step - 1:
            _replay(p, m, v, r, current[r] + 1, step - 1, lr, b1, b2, eps, decay, may_stop)
        pr, mr, vr, gr = p[r], m[r], v[r], grads[i]
        for e in range(pr.shape[0]):
            g = gr[e]
            mi = mr[e] * b1f + (one - b1f) * g
            vi = vr[e] * b2f + (one - b2f) * g * g
            mr[e] = mi
            vr[e] = vi
            pr[e] = pr[e] * decayf - step_size * mi / (_sqrt(vi) / bc2_sqrt + epsf)
        current[r] = step


@_jit
def _merge_rows(ids, values, slot):
    """Each row of an uncoalesced sparse gradient once, its values summed in order of appearance:
    what `coalesce()` gives, without its sort. `slot` has one entry per table row, all -1 before
    and after."""
    rows = np.empty(ids.shape[0], dtype=np.int64)
    sums = np.empty_like(values)
    k = 0
    for i in range(ids.shape[0]):
        r = ids[i]
        j = slot[r]
        if j < 0:
            slot[r] = k
            rows[k] = r
            sums[k] = values[i]
            k += 1
        else:
            for e in range(values.shape[1]):
                sums[j, e] += values[i, e]
    for j in range(k):
        slot[rows[j]] = -1
    return rows[:k], sums[:k]


def gradient_rows(grad: torch.Tensor, slot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, summed values) of a float32 CPU sparse gradient. An embedding's backward leaves one
    entry per looked-up token; coalescing them costs a sort, a third of a small model's optimizer step."""
    return _merge_rows(grad._indices()[0].numpy(), grad._values().contiguous().numpy(), slot)


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
        self.param_groups = [self.sparse_group, *(self.dense.param_groups if self.dense else [])]
        self.defaults = {"lr": lr}
        self.step_count = 0
        self.exp_avg = [torch.zeros_like(w) for w in self.weights]
        self.exp_avg_sq = [torch.zeros_like(w) for w in self.weights]
        # Per row: the step whose update it already has.
        self.current = [np.zeros(w.shape[0], dtype=np.int64) for w in self.weights]
        self._slots = [np.full(w.shape[0], -1, dtype=np.int64) for w in self.weights]
        self._lr = lr
        for i, emb in enumerate(embeddings):
            # The newest optimizer owns the table: hooks an earlier one left behind do nothing.
            emb._deferred_adam = self
            emb.register_forward_pre_hook(self._lookup_hook(i))
            emb.register_state_dict_pre_hook(lambda module, *_: module._deferred_adam is self and self.flush())

    def _scalars(self) -> tuple:
        g = self.sparse_group
        b1, b2 = g["betas"]
        decay = 1.0 - self._lr * g["weight_decay"]
        # The early stop relies on updates that shrink from step to step: true when beta1 < sqrt(beta2).
        return self._lr, b1, b2, g["eps"], decay, b1 < math.sqrt(b2)

    def _sync_lr(self) -> None:
        """A changed learning rate applies from the next step on: replay the missed ones at the old rate first."""
        if self.sparse_group["lr"] != self._lr:
            self.flush()
            self._lr = self.sparse_group["lr"]

    def _arrays(self, i: int) -> tuple:
        return self.weights[i].detach().numpy(), self.exp_avg[i].numpy(), self.exp_avg_sq[i].numpy(), self.current[i]

    def _lookup_hook(self, i: int):
        def hook(module, args):
            if self.step_count and module._deferred_adam is self:
                self._sync_lr()
                ids = args[0].detach().reshape(-1).numpy()
                _catch_up(*self._arrays(i), ids, self.step_count, *self._scalars())
        return hook

    def flush(self) -> None:
        """Bring every row up to the last step (before anything reads whole tables)."""
        if self.step_count:
            for i in range(len(self.weights)):
                _catch_up_all(*self._arrays(i), self.step_count, *self._scalars())

    def zero_grad(self, set_to_none: bool = True) -> None:
        for w in self.weights:
            w.grad = None
        if self.dense:
            self.dense.zero_grad(set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        self._sync_lr()
        self.step_count += 1
        for i, w in enumerate(self.weights):
            if w.grad is None:
                continue
            if not w.grad.is_sparse:
                raise ValueError("deferred Adam needs nn.Embedding(sparse=True)")
            rows, values = gradient_rows(w.grad, self._slots[i])
            adam_rows(*self._arrays(i), rows, values, self.step_count, *self._scalars())
        if self.dense:
            self.dense.step()

    def state_dict(self) -> dict:
        self.flush()  # every row current: the state is plain Adam's
        return {"step": self.step_count, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq,
                "dense": self.dense.state_dict() if self.dense else {}}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        self._load_moments(state)
        for current in self.current:
            current.fill(self.step_count)
        if self.dense:
            self.dense.load_state_dict(state["dense"])
