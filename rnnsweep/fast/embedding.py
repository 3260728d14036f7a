"""nn.Embedding whose sparse gradient on the CPU leaves the padding row out without torch's mask.

With `padding_idx`, torch's sparse embedding backward selects the entries of every other token
with a boolean mask over the batch's ids and gradient rows (`indices != padding_idx`, then two
indexing copies): 60-100 us for a batch of 16 sequences of a few dozen tokens, some 5% of the
lesson's LSTM step. Here the lookup runs without `padding_idx` (its forward is the same: the
padding row is read as it is) and a hook after the gradient's accumulation zeroes the padding
entries' values in place, in one compiled pass over the ids.

The gradient then holds the same sums for every row, and a zero for the padding row where torch's
holds no entry. Every consumer treats the two alike: Adam, lazy Adam, SGD and Adagrad leave a row
with a zero gradient and zero moments where it is (the padding row never gets any other), AdamW
decays it as dense AdamW decays every row, and the gradient's norm is the same. The padding row's
gradient is zero after each backward, as it is after a backward into an empty `.grad` with torch's
mask (rnnsweep sets `.grad` to None before each backward).

Elsewhere (dense gradients, other devices and dtypes, no padding row) it is nn.Embedding as is.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .numba_math import JIT as _jit


@_jit
def _zero_entries(values, ids, row):
    """values[k] = 0 wherever ids[k] == row: the padding entries of an uncoalesced sparse gradient."""
    for k in range(ids.shape[0]):
        if ids[k] == row:
            values[k, :] = 0.0


class _ZeroPaddingGrad:
    """The post-accumulate-grad hook: the padding row's gradient, zero."""

    def __init__(self, row: int):
        self.row = row

    def __call__(self, weight: torch.Tensor) -> None:
        grad = weight.grad
        if grad is None:
            return
        if not grad.is_sparse:  # accumulated into a dense gradient set before
            grad[self.row] = 0
            return
        if grad.sparse_dim() != 1 or grad.dtype != torch.float32:
            raise ValueError("the sparse gradient of an embedding table has one sparse dimension and float32 values")
        values = grad._values()
        if not values.is_contiguous():  # a hand-made gradient: torch's mask, as nn.Embedding's backward has it
            values[grad._indices()[0] == self.row] = 0
            return
        _zero_entries(values.reshape(values.size(0), -1).numpy(), grad._indices()[0].numpy(), self.row)


class Embedding(nn.Embedding):
    """nn.Embedding, with the cheaper padding mask described above for sparse float32 CPU tables."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (not self.sparse or self.padding_idx is None or w.device.type != "cpu" or w.dtype != torch.float32
                or self.max_norm is not None or self.scale_grad_by_freq):
            return super().forward(ids)
        self._hook_padding_grad(w)
        return nn.functional.embedding(ids, w, None, None, 2.0, False, True)

    def _hook_padding_grad(self, w: nn.Parameter) -> None:
        # Checked at every lookup: a deep copy, a pickle or a new Parameter drops tensor hooks.
        hooks = w._post_accumulate_grad_hooks
        row = self.padding_idx
        if hooks is not None and any(isinstance(h, _ZeroPaddingGrad) and h.row == row for h in hooks.values()):
            return
        if hooks is not None and any(isinstance(h, _ZeroPaddingGrad) for h in hooks.values()):
            raise ValueError("the embedding's padding_idx changed after its first lookup; build a new embedding")
        w.register_post_accumulate_grad_hook(_ZeroPaddingGrad(row))


def warm_up() -> None:
    """Compile (or load) the loop on tiny arrays."""
    _zero_entries(np.zeros((2, 2), np.float32), np.zeros(2, np.int64), 0)
