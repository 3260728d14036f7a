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


def collate(data: EncodedTexts, rows: np.ndarray) -> Batch:
    starts, lengths = data.offsets[rows], data.lengths[rows]
    width = int(lengths.max())
    # Gather every (row, position) at once: position t of row b is ids[start_b + t] while t < len_b.
    pos = np.arange(width)
    mask = pos[None, :] < lengths[:, None]
    ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    ids[mask] = data.ids[(starts[:, None] + pos[None, :])[mask]]
    return Batch(torch.from_numpy(ids), torch.from_numpy(lengths.copy()), torch.from_numpy(data.labels[rows].copy()))


def iterate(
    data: EncodedTexts, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
) -> Iterator[Batch]:
    """Batches in random (seeded by `generator`) or stored order; the last one may be short."""
    n = len(data)
    order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        yield collate(data, order[start : start + batch_size])


def num_batches(data: EncodedTexts, batch_size: int) -> int:
    return -(-len(data) // batch_size)
