"""Encoded texts -> padded batches of token ids, lengths and labels (no text in the loop)."""

from __future__ import annotations

import itertools
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


# Rows an `iterate` cuts in one compiled call: a few hundred kilobytes of ids at news-article
# lengths (each batch is a view of the chunk's buffer, and keeps all of it alive while kept).
CHUNK_ROWS = 2048


@JIT
def _gather(ids, offsets, labels, order, picks, batch_size, pad):
    """Batches picks[0], picks[1], ... of `order` (batch j holds rows order[j * batch_size:][:batch_size]),
    in one compiled call: all their ids, each batch padded to its longest row, one after another
    in one flat array; each batch's size and width; all their lengths and labels."""
    count = picks.shape[0]
    sizes = np.empty(count, dtype=np.int64)
    widths = np.empty(count, dtype=np.int64)
    cells, rows = 0, 0
    for j in range(count):
        start = picks[j] * batch_size
        end = min(start + batch_size, order.shape[0])
        width = 0
        for i in range(start, end):
            width = max(width, offsets[order[i] + 1] - offsets[order[i]])
        sizes[j], widths[j] = end - start, width
        cells += (end - start) * width
        rows += end - start
    out_ids = np.empty(cells, dtype=np.int64)
    out_lengths = np.empty(rows, dtype=np.int64)
    out_labels = np.empty(rows, dtype=np.int64)
    at, b = 0, 0
    for j in range(count):
        start = picks[j] * batch_size
        for i in range(start, start + sizes[j]):
            row = order[i]
            first, last = offsets[row], offsets[row + 1]
            out_lengths[b], out_labels[b] = last - first, labels[row]
            out_ids[at : at + last - first] = ids[first:last]
            out_ids[at + last - first : at + widths[j]] = pad
            at += widths[j]
            b += 1
    return out_ids, sizes, widths, out_lengths, out_labels


def _cut(data: EncodedTexts, order: np.ndarray, picks: np.ndarray, batch_size: int, pin: bool) -> list[Batch]:
    """Batches picks[0], picks[1], ... of `order` (see _gather), each a view of one buffer."""
    ids, sizes, widths, lengths, labels = (torch.from_numpy(a) for a in _gather(
        np.asarray(data.ids), np.asarray(data.offsets), np.asarray(data.labels), order, picks, batch_size, PAD_ID))
    if pin:  # page-locked host memory: the copy to the GPU can overlap with compute
        ids, lengths, labels = ids.pin_memory(), lengths.pin_memory(), labels.pin_memory()
    rows = sizes.tolist()
    return [Batch(cells.view(size, width), batch_lengths, batch_labels) for cells, size, width, batch_lengths, batch_labels
            in zip(ids.split((sizes * widths).tolist()), rows, widths.tolist(), lengths.split(rows), labels.split(rows))]


def collate(data: EncodedTexts, rows: np.ndarray, pin: bool = False) -> Batch:
    """The batch of the given rows, in that order."""
    rows = np.asarray(rows, dtype=np.int64)
    return _cut(data, rows, np.zeros(1, dtype=np.int64), len(rows), pin)[0]


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


def _plan(
    data: EncodedTexts,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    bucket_pool: int | None = None,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(order, picks): the epoch's batches are order[j * batch_size:][:batch_size] for j in picks."""
    n = len(data)
    order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n, dtype=np.int64)
    count = -(-n // batch_size)
    keep = count if limit is None else min(count, -(-limit // batch_size))
    if bucket_pool:
        _sort_pools(order, data.lengths, batch_size * bucket_pool)
        # A pool holds whole batches (the last pool's last batch may be short), so batch j is
        # order[j * batch_size:][:batch_size]. Only the batches kept are cut (an epoch_size of a
        # tenth of the data used to cut all of them, every epoch).
        picks = torch.randperm(count, generator=generator)[:keep].numpy() if shuffle else np.arange(keep)
    else:
        picks = np.arange(keep)
    return order, picks.astype(np.int64, copy=False)


def batch_rows(data: EncodedTexts, batch_size: int, **order) -> list[np.ndarray]:
    """Each batch's row indices. Shuffled with `generator`, else in stored order.

    With `bucket_pool`, the shuffled rows are cut into pools of `bucket_pool` batches, each pool
    is sorted by length and cut into batches, and the batches are shuffled: every batch holds
    texts of similar length (little padding), while which texts meet stays random.
    `limit` keeps the first batches that hold `limit` examples (the lesson's epoch_size).
    Keywords: shuffle, generator=None, bucket_pool=None, limit=None.
    """
    rows, picks = _plan(data, batch_size, **order)
    return [rows[j * batch_size : (j + 1) * batch_size] for j in picks.tolist()]


def iterate(data: EncodedTexts, batch_size: int, *, pin: bool = False, **order) -> Iterator[Batch]:
    """Padded batches, in the order `batch_rows(data, batch_size, **order)` gives; the last may be short.

    They are cut CHUNK_ROWS rows at a time. One batch at a time, each cut came after a training
    step had pushed the data and the interpreter's own state out of the CPU's caches: fetching a
    batch through `fit` cost 84 us that way, 29 by chunks (of a lesson LSTM step's 3 ms)."""

    # chain walks each chunk's list in C: no Python frame resumes between a chunk's batches.
    return itertools.chain.from_iterable(cut for _, _, cut in _chunks(data, batch_size, pin, order))


def iterate_with_rows(data: EncodedTexts, batch_size: int, *, pin: bool = False,
                      **order) -> Iterator[tuple[np.ndarray, Batch]]:
    """(row indices, batch) for each batch `iterate` gives, in its order."""
    for rows, picks, cut in _chunks(data, batch_size, pin, order):
        for j, batch in zip(picks.tolist(), cut):
            yield rows[j * batch_size : (j + 1) * batch_size], batch


def _chunks(data: EncodedTexts, batch_size: int, pin: bool, order: dict) -> Iterator[tuple[np.ndarray, np.ndarray, list[Batch]]]:
    """(order, the chunk's picks, its batches) per CHUNK_ROWS rows. A generator: the epoch's order is
    built at the first batch, inside the caller's clock, as it always was."""
    rows, picks = _plan(data, batch_size, **order)
    per_chunk = max(1, CHUNK_ROWS // batch_size)
    for start in range(0, len(picks), per_chunk):
        chunk = picks[start : start + per_chunk]
        yield rows, chunk, _cut(data, rows, chunk, batch_size, pin)


def warm_up(data: EncodedTexts) -> None:
    """Cut one batch and sort one pool, so that compiling their loops for these arrays' types (or
    loading them from numba's disk cache) is not counted as training time."""
    if len(data):
        collate(data, np.zeros(1, dtype=np.int64))
        _sort_pools(np.zeros(1, dtype=np.int64), data.lengths, 1)


def num_batches(data: EncodedTexts, batch_size: int, limit: int | None = None) -> int:
    n = len(data) if limit is None else min(limit, len(data))
    return -(-n // batch_size)
