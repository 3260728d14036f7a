"""Labelled text files -> texts and raw labels, with every problem reported as `file:line: what`.

CSV, TSV and JSON Lines, with or without a header. Files are streamed line by line, so a
non-UTF-8 byte is reported on the line it sits on, and a million rows never sit in memory twice.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # one long document must not end the load

FORMATS = ("csv", "tsv", "jsonl")


class DataError(ValueError):
    """Input that cannot be used, in one line: which file, which line, what is wrong."""


@dataclass
class Rows:
    """One file's usable rows: texts, their labels as written, and the line each starts on."""

    path: Path
    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    dropped_empty: int = 0

    def __len__(self) -> int:
        return len(self.texts)


def detect_format(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    if ext in ("csv",):
        return "csv"
    if ext in ("tsv", "tab"):
        return "tsv"
    if ext in ("jsonl", "ndjson", "json"):
        return "jsonl"
    raise DataError(f"{path}: cannot tell the format from the name; set data.format to csv, tsv or jsonl")


def _decoded_lines(path: Path) -> Iterator[str]:
    """The file's lines as text; a byte that is not UTF-8 names its line."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if b"\x00" in raw:  # valid UTF-8, but no text file holds one: binary data
                raise DataError(f"{path}:{number}: a NUL byte at column {raw.index(0) + 1}: not a text file")
            try:
                yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as ex:
                raise DataError(
                    f"{path}:{number}: byte 0x{raw[ex.start]:02x} at column {ex.start + 1} is not UTF-8 "
                    "(re-save the file as UTF-8)"
                ) from None


def check_file(path: Path) -> None:
    """A data file that exists, is a file and is not empty; else a one-line DataError."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: a directory, not a file" if path.is_dir() else f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")


def _column_index(name: str, header: list[str] | None, path: Path, width: int) -> int:
    if header is not None:
        if name in header:
            return header.index(name)
        raise DataError(f"{path}:1: no column '{name}' in the header (columns: {', '.join(header)})")
    if name.isdigit() and int(name) < width:
        return int(name)
    raise DataError(
        f"{path}: column '{name}' does not exist: without a header, name columns by position 0..{width - 1}"
    )


def read_table(
    path: Path,
    *,
    fmt: str,
    text_columns: Sequence[str],
    label_column: str,
    header: bool,
    drop_empty: bool,
    unescape: bool = False,
) -> Rows:
    """Every row's text (the text columns joined by a space) and its label, as written."""
    check_file(path)
    rows = Rows(path)
    if fmt == "jsonl":
        _read_jsonl(path, rows, text_columns, label_column, drop_empty)
    else:
        _read_delimited(path, rows, "\t" if fmt == "tsv" else ",", text_columns, label_column, header, drop_empty,
                        unescape)
    if not rows.texts:
        what = f" ({rows.dropped_empty} rows with an empty text)" if rows.dropped_empty else ""
        raise DataError(f"{path}: no rows with a text and a label{what}")
    return rows


def _keep(rows: Rows, text: str, label: str, line: int, drop_empty: bool, where: str) -> None:
    if not text.strip():
        if not drop_empty:
            raise DataError(f"{rows.path}:{line}: empty text in {where} (data.drop_empty=true drops such rows)")
        rows.dropped_empty += 1
        return
    if not label.strip():
        raise DataError(f"{rows.path}:{line}: empty label")
    rows.texts.append(text)
    rows.labels.append(label.strip())
    rows.lines.append(line)


def _read_delimited(path, rows, delimiter, text_columns, label_column, header, drop_empty, unescape) -> None:
    reader = csv.reader(_decoded_lines(path), delimiter=delimiter, quotechar='"', strict=True)
    names: list[str] | None = None
    cols: list[int] | None = None
    label_at = -1
    try:
        for record in reader:
            line = reader.line_num
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # a blank line
            if header and names is None:
                names = [c.strip() for c in record]
                cols = [_column_index(c, names, path, len(names)) for c in text_columns]
                label_at = _column_index(label_column, names, path, len(names))
                continue
            if cols is None:
                cols = [_column_index(c, None, path, len(record)) for c in text_columns]
                label_at = _column_index(label_column, None, path, len(record))
            need = max(cols + [label_at]) + 1
            if len(record) < need:
                raise DataError(f"{path}:{line}: {len(record)} fields, expected at least {need}")
            text = " ".join(record[c] for c in cols)
            if unescape:
                text = unescape_ag_news(text)
            _keep(rows, text, record[label_at], line, drop_empty, "the text columns")
    except csv.Error as ex:
        raise DataError(f"{path}:{reader.line_num}: malformed {'TSV' if delimiter == chr(9) else 'CSV'}: {ex}") from None


def _read_jsonl(path, rows, text_columns, label_column, drop_empty) -> None:
    for line, raw in enumerate(_decoded_lines(path), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as ex:
            raise DataError(f"{path}:{line}: not valid JSON: {ex.msg} at column {ex.colno}") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{line}: expected a JSON object per line, got {type(obj).__name__}")
        for key in (*text_columns, label_column):
            if key not in obj:
                raise DataError(f"{path}:{line}: no key '{key}' (keys: {', '.join(obj)})")
        parts = [obj[k] for k in text_columns]
        if any(p is not None and not isinstance(p, str) for p in parts):
            raise DataError(f"{path}:{line}: text keys must hold strings ({', '.join(text_columns)})")
        text = " ".join(p for p in parts if p)
        label = obj[label_column]
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise DataError(f"{path}:{line}: label '{label_column}' must be a string or an integer, got {label!r}")
        _keep(rows, text, str(label), line, drop_empty, "the text keys")


_ENTITY = re.compile(r"#(\d{1,5});")


def _entity(match: re.Match) -> str:
    code = int(match.group(1))
    if 128 <= code < 160:  # the dataset's Windows-1252 punctuation (#146; is a right quote)
        return bytes([code]).decode("cp1252", errors="replace")
    return chr(code) if code < 0x110000 else match.group(0)


def unescape_ag_news(text: str) -> str:
    """Undo AG News's escapes: '\\' marks a line break ('\\$' a dollar sign) and '&' was lost from
    numeric entities ('#36;' is '$', '#39;' an apostrophe)."""
    if "\\" in text:
        text = text.replace("\\$", "$").replace("\\", " ")
    if "#" in text:
        text = _ENTITY.sub(_entity, text)
    return text


@dataclass
class Labels:
    """Raw labels -> class indices, and the mapping to keep in the result record."""

    indices: list[int]
    class_names: list[str]
    mapping: dict[str, int]


def map_labels(files: Sequence[Rows], *, classes: Sequence[str] | None, offset: int) -> list[Labels]:
    """Integer labels (minus `offset`) or names; a label outside the declared classes names its line.

    The classes come from `classes` when given; otherwise from the first file (the training file):
    its integers offset..max, or its distinct names, sorted. Refused, each with the file (and line):
    a file of integer labels with a few that are not integers (a typo would otherwise turn every
    label into a name), integers that leave classes without a single training row (1, 2, 7; or a
    typo'd 100000000), and training data of a single class.
    """
    first = files[0]
    if not first.labels:
        raise DataError(f"{first.path}: no labelled rows to train on")
    values = [v for f in files for v in f.labels]
    integers = sum(_is_int(v) for v in values)
    integer = integers == len(values)
    if not integer and integers > len(values) // 2:
        rows, value, line = next((f, v, n) for f in files for v, n in zip(f.labels, f.lines) if not _is_int(v))
        raise DataError(f"{rows.path}:{line}: label '{value}' is not an integer, unlike {integers} of the "
                        f"{len(values)} labels; correct it (labels are integers or names, not both)")
    if integer:
        if classes is not None:
            names = list(classes)
        else:
            seen = sorted({int(v) - offset for v in first.labels})
            if seen[0] < 0:
                raise DataError(f"{first.path}: label {seen[0] + offset} is below data.label_offset={offset} "
                                "(the value of the first class)")
            if seen[0] > 0 and seen[-1] - seen[0] + 1 == len(seen):
                raise DataError(f"{first.path}: integer labels run from {seen[0] + offset} to {seen[-1] + offset}, "
                                f"so with data.label_offset={offset} classes {offset}..{seen[0] + offset - 1} would "
                                f"have no training row; set data.label_offset={seen[0] + offset}")
            if seen[-1] + 1 != len(seen):
                missing = seen[-1] + 1 - len(seen)  # counted, not listed: a typo'd label may be huge
                first_gaps = [i for a, b in zip([-1, *seen], seen) for i in range(a + 1, min(b, a + 6))][:5]
                shown = ", ".join(str(i + offset) for i in first_gaps) + (", ..." if missing > len(first_gaps) else "")
                raise DataError(
                    f"{first.path}: integer labels {', '.join(str(i + offset) for i in seen[:8])}"
                    f"{', ...' if len(seen) > 8 else ''} leave {missing} class(es) without a training row "
                    f"({shown}; data.label_offset={offset}); number the classes without gaps")
            names = [str(i) for i in range(len(seen))]
        mapping = {str(i + offset): i for i in range(len(names))}
    else:
        if classes is not None:
            names = list(classes)
        else:
            names = sorted(set(first.labels))
        mapping = {name: i for i, name in enumerate(names)}
    out = []
    for rows in files:
        indices = []
        for value, line in zip(rows.labels, rows.lines):
            key = str(int(value)) if integer else value
            if key not in mapping:
                expected = (
                    f"integers {offset}..{offset + len(names) - 1}" if integer else f"one of {', '.join(names)}"
                )
                raise DataError(f"{rows.path}:{line}: label '{value}' is outside the declared classes ({expected})")
            indices.append(mapping[key])
        out.append(Labels(indices, names, mapping))
    if len(set(out[0].indices)) < 2:
        only = first.labels[0] if first.labels else "none"
        raise DataError(f"{first.path}: every training row has the label '{only}'; a classifier needs rows of at "
                        "least two classes")
    return out


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True
