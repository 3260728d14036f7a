"""Small data files in the formats rnnsweep reads, written by the tests that need them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from rnnsweep.data import synthetic


def ag_news_rows(n: int, seed: int) -> list[tuple[int, str, str]]:
    """AG News-style rows (class 1-4, title, description) carrying the embedded data's signal,
    with the dataset's quirks: quotes, '\\' line breaks, '#36;' entities."""
    texts, labels = synthetic.generate("order", n, seed)
    rows = []
    for i, (text, label) in enumerate(zip(texts, labels)):
        words = text.split()
        title = " ".join(words[:4]).title() + (' "quoted", (AP)' if i % 7 == 0 else "")
        body = " ".join(words[4:]) + (" up #36;5\\million." if i % 5 == 0 else ".")
        rows.append((label + 1, title, body))
    return rows


def write_ag_news(directory: Path, train: int = 400, test: int = 100, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, n, s in (("train", train, seed), ("test", test, seed + 1)):
        with open(directory / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
            for label, title, body in ag_news_rows(n, s):
                writer.writerow([str(label), title, body])
    return directory


def write_jsonl(path: Path, n: int = 300, seed: int = 0, label_names: bool = True) -> Path:
    texts, labels = synthetic.generate("order", n, seed)
    with open(path, "w", encoding="utf-8") as f:
        for text, label in zip(texts, labels):
            value = synthetic.CLASS_NAMES[label] if label_names else label
            f.write(json.dumps({"text": text, "label": value}) + "\n")
    return path
