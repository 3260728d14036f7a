"""Encoded texts -> padded batches of token ids, lengths and labels (no text in the loop)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..fast.numba_math import JIT
from .encoded import EncodedTexts
from .tokenization import PAD_ID


@dataclass
class Batch:
    ids: torch.Tensor  # (B, T) int64, padded with PAD_ID to the longest row of the batch
    lengths: torch.Tensor  # (B,) int64 on the CPU: pack_padded_sequence wants them there
    labels: torch.Tensor  # (B,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> "Batch":
        if device.type == "cpu":
            return self
        return Batch(
            self.ids.to(device, non_blocking=True),
            self.lengths,
            self.labels.to(device, non_blocking=True),
        )


@JIT
def _gather(ids, offsets, labels, rows, pad):
    """The batch's (ids padded to its longest row, lengths, labels), allocated here: one compiled
    call, where allocating three tensors and viewing them as arrays cost as much as the gather."""
    width = 0
    for r in rows:
        width = max(width, offsets[r + 1] - offsets[r])
    out_ids = np.empty((rows.shape[0], width), dtype=np.int64)
    out_lengths = np.empty(rows.shape[0], dtype=np.int64)
    out_labels = np.empty(rows.shape[0], dtype=np.int64)
    for b in range(rows.shape[0]):
        start, end = offsets[rows[b]], offsets[rows[b] + 1]
        out_lengths[b] = end - start
        out_labels[b] = labels[rows[b]]
        out_ids[b, : end - start] = ids[start:end]
        out_ids[b, end - start :] = pad
    return out_ids, out_lengths, out_labels


def collate(data: EncodedTexts, rows: np.ndarray, pin: bool = False) -> Batch:
    # One compiled pass over the batch's rows: a quarter of a step's overhead was this gather in numpy.
    ids, lengths, labels = _gather(np.asarray(data.ids), np.asarray(data.offsets), np.asarray(data.labels),
                                   np.asarray(rows, dtype=np.int64), PAD_ID)
    ids, lengths, labels = torch.from_numpy(ids), torch.from_numpy(lengths), torch.from_numpy(labels)
    batch = Batch(ids, lengths, labels)
    if pin:  # page-locked host memory: the copy to the GPU can overlap with compute
        batch = Batch(batch.ids.pin_memory(), batch.lengths, batch.labels.pin_memory())
    return batch


def warm_up(data: EncodedTexts) -> None:
    """Cut one batch and sort one pool, so that compiling their loops for these arrays' types (or
    loading them from numba's disk cache) is not counted as training time."""
    if len(data):
        collate(data, np.zeros(1, dtype=np.int64))
        _sort_pools(np.zeros(1, dtype=np.int64), data.lengths, 1)


@JIT
def _sort_pools(order, lengths, pool):
    """Each `pool` entries of `order` in place, by their rows' lengths, stably (as np.argsort(kind=
    "stable")): a counting sort, since lengths are small integers (a pool's argsort from Python
    cost 8 ms an epoch)."""
    top = 0
    for i in range(order.shape[0]):
        top = max(top, lengths[order[i]])
    starts = np.zeros(top + 2, dtype=np.int64)
    sorted_ = np.empty(min(pool, order.shape[0]), dtype=order.dtype)
    for start in range(0, order.shape[0], pool):
        end = min(start + pool, order.shape[0])
        starts[:] = 0
        for i in range(start, end):
            starts[lengths[order[i]] + 1] += 1
        for value in range(1, top + 2):
            starts[value] += starts[value - 1]
        for i in range(start, end):
            length = lengths[order[i]]
            sorted_[starts[length]] = order[i]
            starts[length] += 1
        order[start:end] = sorted_[: end - start]


def batch_rows(
    data: EncodedTexts,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    bucket_pool: int | None = None,
    limit: int | None = None,
) -> list[np.ndarray]:
    """Each batch's row indices. Shuffled with `generator`, else in stored order.

    With `bucket_pool`, the shuffled rows are cut into pools of `bucket_pool` batches, each pool
    is sorted by length and cut into batches, and the batches are shuffled: every batch holds
    texts of similar length (little padding), while which texts meet stays random.
    `limit` keeps the first batches that hold `limit` examples (the lesson's epoch_size).
    """
    n = len(data)
    order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
    count = -(-n // batch_size)
    keep = count if limit is None else min(count, -(-limit // batch_size))
    if bucket_pool:
        _sort_pools(order, data.lengths, batch_size * bucket_pool)
        # A pool holds whole batches (the last pool's last batch may be short), so batch j is
        # order[j * batch_size:][:batch_size]. Only the batches kept are cut (an epoch_size of a
        # tenth of the data used to cut all of them, every epoch).
        picks = torch.randperm(count, generator=generator)[:keep].tolist() if shuffle else range(keep)
    else:
        picks = range(keep)
    return [order[j * batch_size : (j + 1) * batch_size] for j in picks]


def iterate(data: EncodedTexts, batch_size: int, *, pin: bool = False, **order) -> Iterator[Batch]:
    """Padded batches, in the order `batch_rows(data, batch_size, **order)` gives; the last may be short."""
    for rows in batch_rows(data, batch_size, **order):
        yield collate(data, rows, pin)


def num_batches(data: EncodedTexts, batch_size: int, limit: int | None = None) -> int:
    n = len(data) if limit is None else min(limit, len(data))
    return -(-n // batch_size)
