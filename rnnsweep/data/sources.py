"""Where texts come from: the embedded generator, AG News, the user's own files, the HF hub.

A source knows two things: a fingerprint of its content and reading options (cheap: file
checksums, no parsing), and how to read itself into texts and class indices. Splitting,
tokenizing and caching are the same for every source (`pipeline`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import synthetic
from .download import DownloadError, fetch, file_md5
from .readers import DataError, Rows, check_file, detect_format, map_labels, read_table

log = logging.getLogger(__name__)

# Bump when reading changes what the same files yield (parsing, cleaning): it is part of the
# data fingerprint, so neither the run store nor the cache reuse what the old reader produced.
READER_VERSION = "1"


@dataclass
class RawData:
    """A source's texts and class indices; `test` is None when the source has no test split."""

    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str] | None
    test_labels: list[int] | None
    class_names: list[str]
    label_mapping: dict[str, int] | None = None  # raw label -> index, for files with their own labels
    dropped_empty: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def default_cache_dir() -> Path:
    """$RNNSWEEP_CACHE_DIR, else $XDG_CACHE_HOME/rnnsweep, else ~/.cache/rnnsweep."""
    if os.environ.get("RNNSWEEP_CACHE_DIR"):
        return Path(os.environ["RNNSWEEP_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "rnnsweep"


class Synthetic:
    def __init__(self, *, variant: str, train_size: int, test_size: int, seed: int):
        self.variant, self.train_size, self.test_size, self.seed = variant, train_size, test_size, seed

    def fingerprint(self) -> dict[str, Any]:
        return {"source": "synthetic", "generator": synthetic.GENERATOR_VERSION, "variant": self.variant,
                "train_size": self.train_size, "test_size": self.test_size, "seed": self.seed}

    def read(self, progress: bool = False) -> RawData:
        train_texts, train_labels = synthetic.generate(self.variant, self.train_size, self.seed)
        # Another seed stream for test, so no test text repeats the train generator's state.
        test_texts, test_labels = synthetic.generate(self.variant, self.test_size, self.seed + 1_000_003)
        return RawData(train_texts, train_labels, test_texts, test_labels, list(synthetic.CLASS_NAMES))


# The canonical splits' sizes and classes (where the files come from and their checksums:
# conf/data/ag_news.yaml).
AG_NEWS_ROWS = {"train": 120_000, "test": 7_600}
AG_NEWS_CLASSES = ["World", "Sports", "Business", "Sci/Tech"]


class AgNews:
    """`train.csv` / `test.csv` in the original layout (class 1-4, title, description); `md5`: the
    canonical files' checksums, which downloads must match and files found in `root` are compared with."""

    def __init__(self, *, root: Path, download: bool, urls: dict[str, str], md5: dict[str, str], clean: bool,
                 drop_empty: bool):
        self.root, self.download, self.urls, self.md5 = root, download, urls, md5
        self.clean, self.drop_empty = clean, drop_empty

    def path(self, split: str) -> Path:
        return self.root / f"{split}.csv"

    def fingerprint(self) -> dict[str, Any]:
        # Files not downloaded yet will be verified against the expected checksum: that is their content.
        files = {s: file_md5(self.path(s)) if self.path(s).is_file() else self.md5[s] for s in ("train", "test")}
        return {"source": "ag_news", "reader": READER_VERSION, "md5": files, "clean": self.clean,
                "drop_empty": self.drop_empty}

    def _ensure(self, split: str, progress: bool) -> Path:
        path = self.path(split)
        if path.is_file():
            return path
        if not self.download:
            raise DataError(f"{path}: no such file; put AG News's train.csv and test.csv in {self.root} "
                            "or set data.download=true")
        try:
            return fetch(self.urls[split], path, md5=self.md5[split], progress=progress)
        except DownloadError as ex:
            raise DownloadError(f"{ex}; offline? put AG News's train.csv and test.csv (from {self.urls[split]}) "
                                f"in {self.root}") from None

    def read(self, progress: bool = False) -> RawData:
        warnings = []
        files = []
        for split in ("train", "test"):
            path = self._ensure(split, progress)
            rows = read_table(path, fmt="csv", text_columns=["1", "2"], label_column="0", header=False,
                              drop_empty=self.drop_empty, unescape=self.clean)
            total = len(rows) + rows.dropped_empty
            if total != AG_NEWS_ROWS[split]:
                warnings.append(f"{path}: {total} rows, the canonical AG News {split} split has "
                                f"{AG_NEWS_ROWS[split]} (a subset or another copy?)")
            elif file_md5(path) != self.md5[split]:
                warnings.append(f"{path}: MD5 {file_md5(path)} differs from the canonical {self.md5[split]}")
            files.append(rows)
        train, test = map_labels(files, classes=AG_NEWS_CLASSES, offset=1)
        return RawData(files[0].texts, train.indices, files[1].texts, test.indices, AG_NEWS_CLASSES,
                       dropped_empty={"train": files[0].dropped_empty, "test": files[1].dropped_empty},
                       warnings=warnings)


class Table:
    """The user's CSV / TSV / JSONL files."""

    def __init__(self, *, train: Path, test: Path | None, fmt: str, text_columns: Sequence[str], label_column: str,
                 header: bool, label_offset: int, classes: Sequence[str] | None, drop_empty: bool):
        self.train, self.test, self.fmt = train, test, fmt
        self.text_columns, self.label_column, self.header = list(text_columns), label_column, header
        self.label_offset, self.classes, self.drop_empty = label_offset, classes, drop_empty

    def _files(self) -> list[Path]:
        return [self.train] + ([self.test] if self.test is not None else [])

    def _format(self, path: Path) -> str:
        return detect_format(path) if self.fmt == "auto" else self.fmt

    def fingerprint(self) -> dict[str, Any]:
        for path in self._files():
            check_file(path)
        return {"source": "table", "reader": READER_VERSION, "md5": [file_md5(p) for p in self._files()],
                "format": [self._format(p) for p in self._files()], "text_columns": self.text_columns,
                "label_column": self.label_column, "header": self.header, "label_offset": self.label_offset,
                "classes": list(self.classes) if self.classes is not None else None, "drop_empty": self.drop_empty}

    def read(self, progress: bool = False) -> RawData:
        files: list[Rows] = [
            read_table(p, fmt=self._format(p), text_columns=self.text_columns, label_column=self.label_column,
                       header=self.header, drop_empty=self.drop_empty)
            for p in self._files()
        ]
        labels = map_labels(files, classes=self.classes, offset=self.label_offset)
        test = files[1] if len(files) > 1 else None
        return RawData(
            files[0].texts, labels[0].indices, test.texts if test else None, labels[1].indices if test else None,
            labels[0].class_names, label_mapping=labels[0].mapping,
            dropped_empty={"train": files[0].dropped_empty, **({"test": test.dropped_empty} if test else {})},
        )


class HuggingFace:
    """Any dataset `datasets.load_dataset` can open: a hub name or a local directory of files."""

    def __init__(self, *, dataset: str, subset: str | None, revision: str | None, train_split: str,
                 test_split: str | None, text_columns: Sequence[str], label_column: str, drop_empty: bool):
        self.dataset, self.subset, self.revision = dataset, subset, revision
        self.train_split, self.test_split = train_split, test_split
        self.text_columns, self.label_column, self.drop_empty = list(text_columns), label_column, drop_empty
        self._loaded: dict[str, Any] = {}

    def _split(self, split: str):
        if split not in self._loaded:
            try:
                import datasets
            except ImportError:
                raise DataError("data=hf needs the Hugging Face datasets library: pip install 'rnnsweep[hf]'") from None
            datasets.disable_progress_bars()
            try:
                self._loaded[split] = datasets.load_dataset(self.dataset, self.subset, split=split,
                                                            revision=self.revision)
            except Exception as ex:  # noqa: BLE001 - hub, network and file errors all end up here
                first = (str(ex).strip().splitlines() or [type(ex).__name__])[0]
                offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
                hint = ("offline and not in the local HF cache: download it once online, or point data.dataset "
                        "at a local directory of files" if offline else "check data.dataset, data.subset and "
                        "data.train_split/test_split")
                raise DataError(f"data.dataset={self.dataset}: cannot load split '{split}' ({first}); {hint}") from None
            missing = [c for c in (*self.text_columns, self.label_column) if c not in self._loaded[split].column_names]
            if missing:
                raise DataError(f"data.dataset={self.dataset}[{split}]: no column '{missing[0]}' "
                                f"(columns: {', '.join(self._loaded[split].column_names)})")
        return self._loaded[split]

    def _splits(self) -> list[str]:
        return [self.train_split] + ([self.test_split] if self.test_split else [])

    def fingerprint(self) -> dict[str, Any]:
        return {"source": "hf", "reader": READER_VERSION, "dataset": self.dataset, "subset": self.subset,
                "content": [self._split(s)._fingerprint for s in self._splits()], "text_columns": self.text_columns,
                "label_column": self.label_column, "drop_empty": self.drop_empty}

    def read(self, progress: bool = False) -> RawData:
        files: list[Rows] = []
        for split in self._splits():
            ds = self._split(split)
            rows = Rows(Path(f"{self.dataset}[{split}]"))
            columns = [ds[c] for c in self.text_columns]
            for i, (parts, label) in enumerate(zip(zip(*columns), ds[self.label_column])):
                text = " ".join(p for p in parts if p)
                if not text.strip():
                    if not self.drop_empty:
                        raise DataError(f"{rows.path}: row {i}: empty text (data.drop_empty=true drops such rows)")
                    rows.dropped_empty += 1
                    continue
                rows.texts.append(text)
                rows.labels.append(str(label))
                rows.lines.append(i)
            files.append(rows)
        feature = self._split(self.train_split).features[self.label_column]
        names = getattr(feature, "names", None)  # a ClassLabel column: integers with names
        labels = map_labels(files, classes=names, offset=0)
        test = files[1] if len(files) > 1 else None
        return RawData(files[0].texts, labels[0].indices, test.texts if test else None,
                       labels[1].indices if test else None, labels[0].class_names,
                       label_mapping=None if names else labels[0].mapping,
                       dropped_empty={"train": files[0].dropped_empty, **({"test": test.dropped_empty} if test else {})})
