"""Text sources -> encoded splits. No Hydra here: callers pass plain values."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import synthetic
from .vocab import EncodedTexts, Vocabulary


@dataclass
class Splits:
    train: EncodedTexts
    val: EncodedTexts
    test: EncodedTexts
    vocab: Vocabulary
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (keep, held_out): `fraction` of every class held out, the same for the same seed."""
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rng.shuffle(rows)
        held.append(rows[: int(round(len(rows) * fraction))])
    held_out = np.sort(np.concatenate(held))
    keep = np.setdiff1d(np.arange(len(labels)), held_out)
    return keep, held_out


def load_synthetic(variant: str, train_size: int, test_size: int, val_fraction: float, seed: int) -> Splits:
    train_texts, train_labels = synthetic.generate(variant, train_size, seed)
    # A different seed stream for test, so no test text is a copy of the train generator's state.
    test_texts, test_labels = synthetic.generate(variant, test_size, seed + 1_000_003)
    vocab = Vocabulary.build(train_texts)
    train_all = EncodedTexts.from_texts(vocab, train_texts, train_labels)
    keep, held_out = stratified_split(train_all.labels, val_fraction, seed)
    return Splits(
        train=train_all.subset(keep),
        val=train_all.subset(held_out),
        test=EncodedTexts.from_texts(vocab, test_texts, test_labels),
        vocab=vocab,
        class_names=synthetic.CLASS_NAMES,
    )
