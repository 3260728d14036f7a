"""Tokens -> ids: a frequency-ordered vocabulary with fixed ids for padding and unknown words."""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1


def tokenize(text: str) -> list[str]:
    return text.lower().split()


class Vocabulary:
    def __init__(self, tokens: list[str]):
        if tokens[:2] != [PAD, UNK]:
            raise ValueError("a vocabulary starts with the padding and unknown tokens")
        self.tokens = tokens
        self.index = {tok: i for i, tok in enumerate(tokens)}

    @classmethod
    def build(cls, texts: Iterable[str], min_freq: int = 1, max_size: int | None = None) -> "Vocabulary":
        counts = Counter(tok for text in texts for tok in tokenize(text))
        # Ties broken by the token itself so the same data always gives the same ids.
        ranked = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            ranked = ranked[: max(max_size - 2, 0)]
        return cls([PAD, UNK, *ranked])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(tok, UNK_ID) for tok in tokenize(text)]


class EncodedTexts:
    """Many token-id sequences as one flat array plus offsets (row i is ids[offsets[i]:offsets[i+1]])."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, labels: np.ndarray):
        if len(offsets) != len(labels) + 1:
            raise ValueError("offsets must have one entry more than labels")
        self.ids, self.offsets, self.labels = ids, offsets, labels

    @classmethod
    def from_texts(cls, vocab: Vocabulary, texts: list[str], labels: list[int]) -> "EncodedTexts":
        rows = [vocab.encode(t) or [UNK_ID] for t in texts]  # an empty text still needs one step
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=offsets[1:])
        ids = np.fromiter((i for r in rows for i in r), dtype=np.int64, count=int(offsets[-1]))
        return cls(ids, offsets, np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def subset(self, rows: np.ndarray) -> "EncodedTexts":
        lengths = self.lengths[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.concatenate([self.ids[self.offsets[r] : self.offsets[r + 1]] for r in rows]) if len(rows) else self.ids[:0]
        return EncodedTexts(ids, offsets, self.labels[rows])
