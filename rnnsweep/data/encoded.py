"""Many token-id sequences as one flat array plus offsets: what batches are cut from."""

from __future__ import annotations

import numpy as np


class EncodedTexts:
    """Row i is ids[offsets[i]:offsets[i+1]], labelled labels[i]; the arrays may be memory-mapped."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, labels: np.ndarray):
        if len(offsets) != len(labels) + 1:
            raise ValueError("offsets must have one entry more than labels")
        self.ids, self.offsets, self.labels = ids, offsets, labels

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def subset(self, rows: np.ndarray) -> "EncodedTexts":
        """The given rows, in the given order, as new (in-memory) arrays."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # Position j of the output comes from ids[start of its row + j - start of its output row].
        gather = np.repeat(self.offsets[rows] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return EncodedTexts(np.asarray(self.ids[gather]), offsets, np.asarray(self.labels[rows]))
