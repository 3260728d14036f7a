"""An embedding whose sparse gradient leaves the backward pass coalesced.

torch's sparse embedding backward keeps one gradient entry per looked-up token: it first drops
the padding tokens (a mask, a nonzero and an index_select over the whole (tokens, dim) gradient),
then every consumer coalesces (sorts the entries and sums the repeats). For a batch of 16 texts
that is two passes over ~800 rows where one suffices. Here the backward is one compiled loop that
sums each row's entries in their order of appearance, skipping padding, and hands over the rows in
ascending order: the rows and sums the optimizers made of torch's entries before (`grad.coalesce()`
holds the same rows; its sort may add a row's repeats in another order, a last-bit difference).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .numba_math import JIT as _jit


@_jit
def coalesce_rows(ids, grads, padding_idx, slot):
    """(rows ascending, each row's gradient summed in order of appearance) over the entries whose
    id is not `padding_idx`. `slot` has one entry per table row, all -1 before and after."""
    rows = np.empty(ids.shape[0], dtype=np.int64)
    k = 0
    for i in range(ids.shape[0]):
        r = ids[i]
        if r != padding_idx and slot[r] < 0:
            slot[r] = 0
            rows[k] = r
            k += 1
    rows = np.sort(rows[:k])
    for j in range(k):
        slot[rows[j]] = j
    sums = np.empty((k, grads.shape[1]), dtype=grads.dtype)
    filled = np.zeros(k, dtype=np.bool_)
    for i in range(ids.shape[0]):
        r = ids[i]
        if r == padding_idx:
            continue
        j = slot[r]
        if filled[j]:
            for e in range(grads.shape[1]):
                sums[j, e] += grads[i, e]
        else:
            sums[j] = grads[i]
            filled[j] = True
    for j in range(k):
        slot[rows[j]] = -1
    return rows, sums


class _Lookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor, padding_idx: int, slot: np.ndarray) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.slot, ctx.shape = padding_idx, slot, weight.shape
        return F.embedding(ids, weight)  # padding only shapes the gradient, which backward makes

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        rows, sums = coalesce_rows(ids.reshape(-1).numpy(), grad.reshape(-1, ctx.shape[1]).contiguous().numpy(),
                                   ctx.padding_idx, ctx.slot)
        # torch 2.11-2.12 warn of unchecked invariants even with check_invariants=False
        # (pytorch#178274); an explicit scope silences it. The rows are distinct and ascending.
        with torch.sparse.check_sparse_tensor_invariants(enable=False):
            weight_grad = torch.sparse_coo_tensor(torch.from_numpy(rows).unsqueeze(0), torch.from_numpy(sums),
                                                  ctx.shape, is_coalesced=True, check_invariants=False)
        return weight_grad, None, None, None


class Embedding(torch.nn.Embedding):
    """`nn.Embedding`, the same module to everything that reads it (state dict, hooks, isinstance);
    with `sparse=True` on a float32 CPU table its gradient comes out coalesced (see above).
    Any other setting runs nn.Embedding's own forward."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._slot: np.ndarray | None = None

    def _coalesces(self, ids: torch.Tensor) -> bool:
        w = self.weight
        return (self.sparse and w.requires_grad and torch.is_grad_enabled() and w.device.type == "cpu"
                and w.dtype == torch.float32 and ids.device.type == "cpu" and self.max_norm is None
                and not self.scale_grad_by_freq)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self._coalesces(ids):
            return super().forward(ids)
        if self._slot is None or self._slot.shape[0] != self.num_embeddings:
            self._slot = np.full(self.num_embeddings, -1, dtype=np.int64)
        padding = -1 if self.padding_idx is None else self.padding_idx
        return _Lookup.apply(self.weight, ids.long(), padding, self._slot)


def warm_up() -> None:
    """One step of each kind on a tiny table (numba compiles or loads `coalesce_rows` here)."""
    with torch.random.fork_rng(devices=[]):
        table = Embedding(4, 2, padding_idx=0, sparse=True)
    table(torch.tensor([[1, 2, 1, 0]])).sum().backward()
