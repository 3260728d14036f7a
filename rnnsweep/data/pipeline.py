"""Source -> splits -> token ids, built once per (data fingerprint, tokenizer) and cached on disk.

The cache entry is a directory of .npy arrays (flat token ids, offsets, labels per split), the
vocabulary and `meta.json` with each file's size and BLAKE2 digest. It is written into a
temporary directory and renamed into place under a file lock, so jobs that start together build
it once and none ever sees half of it; an entry whose files do not match their digests is
rebuilt. Loads memory-map the arrays: every job of a sweep, in any process, shares one copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from filelock import FileLock
from ..progress import tqdm
from ..store import digest
from .encoded import EncodedTexts
from .readers import DataError
from .sources import RawData
from .tokenization import encode

log = logging.getLogger(__name__)

# Bump when splitting, encoding or the cache layout change what a cache entry holds.
CACHE_VERSION = "1"
SPLITS = ("train", "val", "test")
META = "meta.json"


class Source(Protocol):
    def fingerprint(self) -> dict[str, Any]: ...

    def read(self, progress: bool = False) -> RawData: ...


@dataclass(frozen=True)
class SplitOptions:
    val_fraction: float
    seed: int
    test_fraction: float | None = None  # carved from train; only for a source without a test split
    limit: int | None = None  # at most this many train rows and test rows (stratified), for quick runs


@dataclass(frozen=True)
class TokenizerOptions:
    name: str = "basic_english"
    min_freq: int = 1
    max_vocab: int | None = None
    lowercase: bool = True


@dataclass
class Splits:
    train: EncodedTexts
    val: EncodedTexts
    test: EncodedTexts
    vocab_size: int
    class_names: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    directory: Path | None = None  # the cache entry
    built: bool = False  # this call built the cache entry (rather than loading it)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def data_fingerprint(source: Source, split: SplitOptions) -> str:
    """What the splits hold: the source's content and reading options, and how it is split."""
    return digest({"source": source.fingerprint(), "split": asdict(split), "cache": CACHE_VERSION})


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (keep, held_out): `fraction` of every class held out, the same for the same seed."""
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rng.shuffle(rows)
        held.append(rows[: int(round(len(rows) * fraction))])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), held_out)
    return keep, held_out


def _limited(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or len(labels) <= limit:
        return np.arange(len(labels))
    return stratified_split(labels, limit / len(labels), seed)[1]


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def load_entry(directory: Path) -> Splits | None:
    """The cached splits, memory-mapped, or None (with the reason logged) if absent or damaged."""
    meta_path = directory / META
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
            raise ValueError("meta.json is not a mapping with a 'files' mapping")
        for name, expected in meta["files"].items():
            path = directory / name
            if not path.is_file() or path.stat().st_size != expected["size"]:
                raise ValueError(f"{name} is missing or has the wrong size")
            if _file_digest(path) != expected["blake2b"]:
                raise ValueError(f"{name} does not match its digest")
        parts = {}
        for split in SPLITS:
            ids, offsets, labels = (np.load(directory / f"{split}.{a}.npy", mmap_mode="r")
                                    for a in ("ids", "offsets", "labels"))
            if len(offsets) != len(labels) + 1 or int(offsets[-1]) != len(ids):
                raise ValueError(f"{split} arrays do not agree in length")
            parts[split] = EncodedTexts(ids, offsets, labels)
        splits = Splits(parts["train"], parts["val"], parts["test"], int(meta["vocab_size"]),
                        tuple(str(c) for c in meta["class_names"]), meta=meta, directory=directory)
        if "fingerprint" not in meta:
            raise KeyError("fingerprint")
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as ex:
        # Garbled, truncated, or valid JSON of the wrong shape: all the same, rebuilt.
        log.warning("encoded cache %s is damaged (%s: %s); rebuilding it", directory, type(ex).__name__, ex)
        return None
    return splits


def _split_rows(raw: RawData, split: SplitOptions) -> tuple[list[str], dict[str, np.ndarray], np.ndarray]:
    """All texts to encode (train-file rows, then test rows) and each split's positions among them."""
    labels = np.asarray(raw.train_labels, dtype=np.int64)
    pool = _limited(labels, split.limit, split.seed + 2)
    if raw.test_texts is None:
        if split.test_fraction is None:
            raise DataError("the data has no test split of its own; set data.test_fraction")
        keep, test_pos = stratified_split(labels[pool], split.test_fraction, split.seed + 1)
        pool_test, pool = pool[test_pos], pool[keep]
    keep, val_pos = stratified_split(labels[pool], split.val_fraction, split.seed)
    train_rows, val_rows = pool[keep], pool[val_pos]
    if raw.test_texts is None:
        rows = {"train": train_rows, "val": val_rows, "test": pool_test}
        order = np.concatenate([train_rows, val_rows, pool_test])
        texts = [raw.train_texts[i] for i in order]
        all_labels = labels[order]
    else:
        test_labels = np.asarray(raw.test_labels, dtype=np.int64)
        test_rows = _limited(test_labels, split.limit, split.seed + 3)
        order = np.concatenate([train_rows, val_rows])
        texts = [raw.train_texts[i] for i in order] + [raw.test_texts[i] for i in test_rows]
        all_labels = np.concatenate([labels[order], test_labels[test_rows]])
        rows = {"train": train_rows, "val": val_rows, "test": test_rows}
    n_train, n_val = len(rows["train"]), len(rows["val"])
    positions = {
        "train": np.arange(n_train),
        "val": np.arange(n_train, n_train + n_val),
        "test": np.arange(n_train + n_val, len(texts)),
    }
    return texts, positions, all_labels


def split_texts(raw: RawData, split: SplitOptions) -> dict[str, tuple[list[str], np.ndarray]]:
    """Each split's texts and class indices, in the order the cache entry stores that split: the
    rows `prepare` encodes, for a caller that needs the texts themselves (scoring a trained model
    on its own test split). Splitting stays `_split_rows`'s alone."""
    texts, positions, labels = _split_rows(raw, split)
    return {name: ([texts[i] for i in pos], labels[pos]) for name, pos in positions.items()}


def build_entry(raw: RawData, split: SplitOptions, tok: TokenizerOptions, directory: Path, *, fingerprint: str,
                progress: bool = False) -> None:
    """Encode `raw` and write the cache entry at `directory` (atomically: temp dir + rename)."""
    started = time.perf_counter()
    texts, positions, labels = _split_rows(raw, split)
    for name in SPLITS:
        if len(positions[name]) == 0:
            raise DataError(f"the {name} split is empty: the data has too few rows for data.val_fraction"
                             f"{' / data.test_fraction' if raw.test_texts is None else ''}")
    with tqdm(total=len(texts), desc=f"tokenizing ({tok.name})", unit="doc", disable=not progress,
              leave=False) as bar:
        encoded = encode(tok.name, texts, positions["train"], min_freq=tok.min_freq, max_vocab=tok.max_vocab,
                         lowercase=tok.lowercase, progress=bar.update)
    del texts
    everything = EncodedTexts(encoded.ids, encoded.offsets, labels)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in SPLITS:
        part = everything.subset(positions[name])
        np.save(tmp / f"{name}.ids.npy", part.ids.astype(np.int32, copy=False))
        np.save(tmp / f"{name}.offsets.npy", part.offsets)
        np.save(tmp / f"{name}.labels.npy", part.labels.astype(np.int64, copy=False))
    encoded.save(tmp)
    meta = {
        "cache_version": CACHE_VERSION,
        "fingerprint": fingerprint,
        "tokenizer": asdict(tok),
        "split": asdict(split),
        "class_names": list(raw.class_names),
        "label_mapping": raw.label_mapping,
        "vocab_size": encoded.vocab_size,
        "rows": {name: int(len(positions[name])) for name in SPLITS},
        "tokens": {name: int(encoded.offsets[positions[name][-1] + 1] - encoded.offsets[positions[name][0]])
                   for name in SPLITS},
        "dropped_empty": raw.dropped_empty,
        "warnings": raw.warnings,
        "build_seconds": round(time.perf_counter() - started, 3),
        "files": {p.name: {"size": p.stat().st_size, "blake2b": _file_digest(p)} for p in sorted(tmp.iterdir())},
    }
    (tmp / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    if directory.exists():  # a damaged entry: move it aside, then swap the new one in
        trash = directory.parent / f".{directory.name}.old-{os.getpid()}"
        os.replace(directory, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, directory)


def prepare(source: Source, split: SplitOptions, tok: TokenizerOptions, cache_root: Path, *,
            progress: bool = False) -> Splits:
    """The encoded splits of `source`, from the cache, or built (once, whoever asks) and cached."""
    fingerprint = data_fingerprint(source, split)
    key = digest({"data": fingerprint, "tokenizer": asdict(tok), "cache": CACHE_VERSION})
    root = cache_root / "encoded"
    directory = root / key
    splits = load_entry(directory)
    if splits is not None:
        return splits
    # Read (and check) the source before anything is written: bad input leaves no directory and no
    # lock file behind. Jobs that start together may each read it; one of them builds the entry.
    raw = source.read(progress=progress)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{key}.lock")):
        splits = load_entry(directory)  # another process may have built it while we read
        if splits is not None:
            return splits
        for stale in root.glob(f".{key}.tmp-*"):  # left by a build that was killed
            shutil.rmtree(stale, ignore_errors=True)
        for warning in raw.warnings:
            log.warning("%s", warning)
        build_entry(raw, split, tok, directory, fingerprint=fingerprint, progress=progress)
        log.info("encoded cache built: %s", directory)
        splits = load_entry(directory)
        if splits is None:
            raise RuntimeError(f"the encoded cache {directory} could not be read back after building it")
    splits.built = True
    return splits
