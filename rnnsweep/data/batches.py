"""Encoded texts -> padded batches of token ids, lengths and labels (no text in the loop)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

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


def collate(data: EncodedTexts, rows: np.ndarray, pin: bool = False) -> Batch:
    starts = np.asarray(data.offsets[rows])
    lengths = np.asarray(data.offsets[rows + 1]) - starts
    width = int(lengths.max())
    # Gather every (row, position) at once: position t of row b is ids[start_b + t] while t < len_b.
    pos = np.arange(width)
    mask = pos[None, :] < lengths[:, None]
    ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    ids[mask] = data.ids[(starts[:, None] + pos[None, :])[mask]]
    batch = Batch(torch.from_numpy(ids), torch.from_numpy(lengths), torch.from_numpy(np.asarray(data.labels[rows])))
    if pin:  # page-locked host memory: the copy to the GPU can overlap with compute
        batch = Batch(batch.ids.pin_memory(), batch.lengths, batch.labels.pin_memory())
    return batch


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
    if bucket_pool:
        lengths = data.lengths
        pool = batch_size * bucket_pool
        rows = []
        for start in range(0, n, pool):
            chunk = order[start : start + pool]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            rows.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
        if shuffle:
            rows = [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()]
    else:
        rows = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if limit is not None:
        rows = rows[: -(-limit // batch_size)]
    return rows


def iterate(data: EncodedTexts, batch_size: int, *, pin: bool = False, **order) -> Iterator[Batch]:
    """Padded batches, in the order `batch_rows(data, batch_size, **order)` gives; the last may be short."""
    for rows in batch_rows(data, batch_size, **order):
        yield collate(data, rows, pin)


def num_batches(data: EncodedTexts, batch_size: int, limit: int | None = None) -> int:
    n = len(data) if limit is None else min(limit, len(data))
    return -(-n // batch_size)
