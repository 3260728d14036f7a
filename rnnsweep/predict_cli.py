"""`rnnsweep-predict`: classify texts with a trained run from the command line (see predict.load).

Only the standard library at import: torch and the model load once the arguments and the input
texts have been read, so --help and a bad argument answer at once.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .console import OneLineParser, positive_int, run_reporting_errors

if TYPE_CHECKING:
    from .predict import Classifier

DEFAULT_STORE = "outputs/store"  # as predict.DEFAULT_STORE, without importing torch for it

EPILOG = """\
RUN is a run id (or a unique prefix of one) in the run store, a store entry (outputs/store/<id>),
its model/ directory, or a job directory of a sweep or single run (it points to the store entry).

examples:
  rnnsweep-predict 1a2b "Stocks rally as oil falls" "Late goal sinks the champions"
  rnnsweep-predict 1a2b --proba "Stocks rally as oil falls"
  rnnsweep-predict outputs/multirun/2026-11-26_10-00-00/3 --file headlines.txt --output predictions.csv
  rnnsweep-predict 1a2b --file news.csv --text-column title --text-column body --format jsonl
  cat headlines.txt | rnnsweep-predict 1a2b --format json
  rnnsweep-predict 1a2b --store /shared/rnnsweep/store --file - < headlines.txt

input: TEXT arguments, or --file (one text per line, blank lines skipped; .csv/.tsv with a header
and .jsonl by --text-column, repeated columns joined by a space as the training data's were), or
stdin when neither is given. A text without a single known token is predicted as <unk> alone.
output: csv (text,label[,p_<class>...]), json (a list of objects) or jsonl, to stdout or --output.
To score a run on labelled data, see rnnsweep-evaluate.
"""


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="rnnsweep-predict", description="Classify texts with a trained rnnsweep run.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run id or prefix, store entry, model or job directory")
    p.add_argument("texts", metavar="TEXT", nargs="*", help="texts to classify ('-': read stdin)")
    p.add_argument("--file", metavar="PATH", help="texts from a file ('-': stdin)")
    p.add_argument("--text-column", metavar="COL", action="append",
                   help="for .csv/.tsv/.jsonl files: the column (name, or 0-based position with --no-header) "
                        "holding the text; repeat to join several (default: text)")
    p.add_argument("--no-header", action="store_true", help=".csv/.tsv files without a header row")
    p.add_argument("--proba", action="store_true", help="add each class's probability (p_<class> columns)")
    p.add_argument("--format", choices=("csv", "json", "jsonl"), default="csv", help="output format (default: csv)")
    p.add_argument("--output", "-o", metavar="PATH", help="write here instead of stdout")
    p.add_argument("--store", metavar="DIR", help=f"the run store to look RUN up in (default: {DEFAULT_STORE})")
    p.add_argument("--batch-size", type=positive_int, metavar="N", help="texts per batch (default: the run's "
                   "train.eval_batch_size)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto")
    p.add_argument("--version", action="version", version=f"rnnsweep-predict {__version__}")
    return p


def _table_format(path: str) -> str | None:
    ext = Path(path).suffix.lower()
    return {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(ext)


def _read_table(path: str, lines: list[str], fmt: str, columns: list[str], header: bool) -> list[str]:
    """Texts from a CSV/TSV (with a header unless `header` is False) or JSON Lines file."""
    texts = []
    if fmt == "jsonl":
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as ex:
                raise ValueError(f"{path}:{number}: not valid JSON: {ex.msg} at column {ex.colno}") from None
            if not isinstance(obj, dict) or any(not isinstance(obj.get(c), (str, type(None))) for c in columns):
                raise ValueError(f"{path}:{number}: expected an object with the string key(s) {', '.join(columns)}")
            missing = [c for c in columns if c not in obj]
            if missing:
                raise ValueError(f"{path}:{number}: no key '{missing[0]}' (keys: {', '.join(obj)})")
            texts.append(" ".join(obj[c] for c in columns if obj[c]))
        return texts
    reader = csv.reader(lines, delimiter="\t" if fmt == "tsv" else ",", strict=True)
    positions: list[int] | None = None
    try:
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            if positions is None:
                names = [c.strip() for c in record] if header else None
                positions = []
                for c in columns:
                    if names is not None and c in names:
                        positions.append(names.index(c))
                    elif names is None and c.isdigit():
                        positions.append(int(c))
                    else:
                        raise ValueError(f"{path}:1: no column '{c}' in the header (columns: {', '.join(names)})"
                                         if names is not None else
                                         f"{path}: without a header, name columns by position (--text-column 1)")
                if header:
                    continue
            if len(record) <= max(positions):
                raise ValueError(f"{path}:{reader.line_num}: {len(record)} fields, expected at least "
                                 f"{max(positions) + 1}")
            texts.append(" ".join(record[i] for i in positions))
    except csv.Error as ex:
        raise ValueError(f"{path}:{reader.line_num}: malformed {fmt.upper()}: {ex}") from None
    return texts


def read_texts(path: str, columns: list[str] | None = None, header: bool = True) -> list[str]:
    """The texts of a file ('-': stdin): one per line (blank lines skipped), or a table's column(s)."""
    name = "<stdin>" if path == "-" else path
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).expanduser().read_bytes()
    except OSError as ex:
        raise ValueError(f"{name}: {ex.strerror or ex}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as ex:
        line = raw[: ex.start].count(b"\n") + 1
        raise ValueError(f"{name}:{line}: byte 0x{raw[ex.start]:02x} is not UTF-8 (re-save the file as UTF-8)") from None
    fmt = _table_format(path) if path != "-" else None
    if fmt is None:
        if columns:
            raise ValueError(f"{name}: --text-column needs a .csv, .tsv or .jsonl file")
        return [line for line in text.splitlines() if line.strip()]
    return _read_table(name, text.splitlines(keepends=fmt != "jsonl"), fmt, columns or ["text"], header)


def _rows(texts: list[str], clf: Classifier, proba: bool) -> tuple[list[str], list[list[Any]]]:
    columns = ["text", "label"] + ([f"p_{c}" for c in clf.classes] if proba else [])
    if proba:
        p = clf.predict_proba(texts)
        labels = [clf.classes[i] for i in p.argmax(axis=1)]
        return columns, [[t, label, *map(float, row)] for t, label, row in zip(texts, labels, p)]
    return columns, [[t, label] for t, label in zip(texts, clf.predict(texts))]


def _write(columns: list[str], rows: list[list[Any]], fmt: str, out: io.TextIOBase) -> None:
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    elif fmt == "json":
        json.dump([dict(zip(columns, r)) for r in rows], out, ensure_ascii=False, indent=1)
        out.write("\n")
    else:
        for r in rows:
            out.write(json.dumps(dict(zip(columns, r)), ensure_ascii=False) + "\n")


def _inputs(args: argparse.Namespace) -> list[str]:
    texts = _given_texts(args)
    if not texts:
        source = "the file" if args.file not in (None, "-") else "stdin"
        raise ValueError(f"no texts to classify: {source} holds none (blank lines are skipped)")
    return texts


def _given_texts(args: argparse.Namespace) -> list[str]:
    if args.texts and args.file:
        raise ValueError("give TEXT arguments or --file, not both")
    if args.texts == ["-"] or (not args.texts and args.file is None):
        if not args.texts and sys.stdin.isatty():
            raise ValueError("no texts: give TEXT arguments, --file PATH, or pipe texts on stdin")
        return read_texts("-")
    if args.file is not None:
        return read_texts(args.file, args.text_column, header=not args.no_header)
    if args.text_column or args.no_header:
        raise ValueError("--text-column and --no-header are for --file")
    return list(args.texts)


def _run(args: argparse.Namespace) -> None:
    texts = _inputs(args)  # before loading the model: a bad input fails at once
    from .predict import load

    clf = load(args.run, args.store, device=args.device, batch_size=args.batch_size)
    columns, rows = _rows(texts, clf, args.proba)
    if args.output is None:
        _write(columns, rows, args.format, sys.stdout)
        sys.stdout.flush()
        return
    try:
        with open(Path(args.output).expanduser(), "w", encoding="utf-8", newline="") as out:
            _write(columns, rows, args.format, out)
    except OSError as ex:
        raise ValueError(f"{args.output}: {ex.strerror or ex}") from None


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: every error is one line and exit status 2."""
    parser = _parser()
    args = parser.parse_intermixed_args(argv)  # options may come between RUN and the rest
    run_reporting_errors(parser.prog, lambda: _run(args))


if __name__ == "__main__":
    main()
