"""Pretrained word vectors (word2vec / GloVe / fastText text files) -> one row per vocabulary token.

The file is one word per line followed by its values, separated by spaces; word2vec and fastText
files begin with a "<count> <dim>" header line, which is recognised and skipped. It may be gzipped
(told by its first bytes, whatever its name). A vocabulary token gets the vector of the same word;
for a lowercasing tokenizer, failing that, the vector of the first word in the file that lowercases
to it (files list frequent words first). <pad> and <unk> are never looked up: the model keeps its
own rows for them.

A vectors file is large and a sweep's jobs share one vocabulary, so the file is read once per data
cache entry: the (vocab_size, dim) float32 matrix, the mask of rows found and the coverage figures
are written beside the entry's arrays, in `<entry>/vectors/`, keyed by the file's digest and
dimension, under a file lock; later jobs memory-map them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np
from filelock import FileLock

from ..store import atomic_write, write_json
from .pipeline import Splits
from .readers import DataError
from .tokenization import PAD_ID, UNK_ID

log = logging.getLogger(__name__)

# Bump when reading or matching changes what a cached matrix holds.
VECTORS_VERSION = "1"
GZIP_MAGIC = b"\x1f\x8b"
FIRST_LOOKED_UP = max(PAD_ID, UNK_ID) + 1  # the specials keep the model's own rows


@dataclass(frozen=True)
class VectorsFile:
    """A vectors file as far as a run's identity needs it: where, its content, its dimension."""

    path: Path
    digest: str  # BLAKE2b of the bytes as stored (gzipped or not)
    dim: int
    header: bool  # the first line is "<count> <dim>"


@dataclass
class PretrainedVectors:
    """What a model's embedding takes from a vectors file, for one vocabulary."""

    matrix: np.ndarray  # (vocab_size, dim) float32, possibly memory-mapped; zeros where not found
    found: np.ndarray  # (vocab_size,) bool: the rows that have a vector
    info: dict[str, Any]  # path, digest, dim and coverage: the record's data.vectors


def _open(path: Path) -> IO[bytes]:
    with open(path, "rb") as f:
        gzipped = f.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text without its line end or trailing spaces) of every non-blank line. A
    word that is not UTF-8 is kept as undecodable text: it cannot equal a vocabulary token."""
    try:
        with _open(path) as f:
            for number, raw in enumerate(f, start=1):
                text = raw.decode("utf-8", errors="surrogateescape").rstrip()
                if text:
                    yield number, text
    except (EOFError, zlib.error, gzip.BadGzipFile) as ex:
        raise DataError(f"{path}: not a readable gzip file ({ex or type(ex).__name__})") from None
    except OSError as ex:
        raise DataError(f"{path}: cannot be read: {ex.strerror or ex}") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _header(first: str, second: str | None, where: str) -> int | None:
    """The dimension a "<count> <dim>" header line gives, or None when `first` is a vector. Two
    integers alone are a header when the next line has that many values (or there is none); a
    one-dimensional vector of an integer word ("1984 2") reads the same, and is told apart by
    its next line having two fields too. Anything else: the header and the vectors disagree."""
    fields = first.split(" ")
    if len(fields) != 2 or not all(f.isascii() and f.isdigit() for f in fields):
        return None
    dim = int(fields[1])
    if second is None or len(second.split(" ")) == dim + 1:
        return dim
    if len(second.split(" ")) == 2:  # 1-dimensional vectors, the first word a number
        return None
    raise DataError(f"{where}:1: the header says {dim} dimensions, but line 2 has {len(second.split(' ')) - 1} "
                    "values (fix or remove the header line)")


def _digest(path: Path) -> str:
    """The file's content, as each job's identity needs it. Not remembered by size and mtime: a
    file rewritten within the clock's resolution would keep a stale digest, and the identity with it."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def vectors_file(path: Path, embed_dim: int | None = None) -> VectorsFile:
    """The file at `path`, checked as far as its first two lines (and against the model's
    `embed_dim`): what the run's identity and the cache key need, without reading it all."""
    if not path.exists():
        raise DataError(f"{path}: no such file (model.vectors)")
    if not path.is_file():
        raise DataError(f"{path}: not a file (model.vectors)")
    head: list[tuple[int, str]] = []
    for line in _lines(path):
        head.append(line)
        if len(head) == 2:
            break
    if not head:
        raise DataError(f"{path}: the file holds no vectors")
    dim = _header(head[0][1], head[1][1] if len(head) > 1 else None, str(path))
    header = dim is not None
    if header:
        if len(head) == 1:
            raise DataError(f"{path}: the file holds no vectors (only its header line)")
        if dim == 0:
            raise DataError(f"{path}:{head[0][0]}: the header gives 0 dimensions")
    else:
        dim = len(head[0][1].split(" ")) - 1
        if dim == 0:
            raise DataError(f"{path}:{head[0][0]}: a word without values (expected 'word v1 v2 ...')")
    if embed_dim is not None and dim != embed_dim:
        raise DataError(f"{path}: vectors have {dim} dimensions, model.embed_dim={embed_dim}: "
                        f"set model.embed_dim={dim}")
    return VectorsFile(path=path, digest=_digest(path), dim=dim, header=header)


def _word_and_values(text: str, dim: int, where: str, header: bool) -> tuple[str, str]:
    """Split a line into its word and its values' text; a wrong number of values is an error.
    A word with spaces inside (GloVe's 840B file has a few) is the text before the last `dim`
    values, when what precedes them is not a number."""
    word, _, values = text.partition(" ")
    count = values.count(" ") + 1 if values else 0
    if count == dim:
        return word, values
    fields = text.split(" ")
    if len(fields) > dim + 1 and not _is_number(fields[-dim - 1]):
        return " ".join(fields[:-dim]), " ".join(fields[-dim:])
    others = f"the header gives {dim}" if header else f"the first vector has {dim}"
    raise DataError(f"{where}: '{word[:40]}' has {count} values, {others}: every line must have "
                    f"a word and {dim} numbers")


def _parse(values: str, where: str, word: str) -> np.ndarray:
    try:
        row = np.array(values.split(" "), dtype=np.float32)
    except ValueError:
        bad = next(((i, v) for i, v in enumerate(values.split(" "), start=1) if not _is_number(v)), None)
        if bad is None:  # a spelling Python reads and numpy does not, such as 1_000
            raise DataError(f"{where}: '{word[:40]}' has values that are not plain numbers") from None
        raise DataError(f"{where}: value {bad[0]} of '{word[:40]}' is '{bad[1][:40]}', not a number") from None
    if not np.isfinite(row).all():
        raise DataError(f"{where}: '{word[:40]}' has a value that is not a finite number")
    return row


def read_vectors(source: VectorsFile, vocabulary: list[str], *, lowercase: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """(matrix, found, counts) for `vocabulary` from the file: one pass, parsing only the values
    of the lines whose word the vocabulary has. Every line's count of values is checked; a line
    the vocabulary does not need is not checked for non-numbers (parsing millions of unused
    rows would make the read many times slower)."""
    index = {token: i for i, token in enumerate(vocabulary) if i >= FIRST_LOOKED_UP}
    matrix = np.zeros((len(vocabulary), source.dim), dtype=np.float32)
    found = np.zeros(len(vocabulary), dtype=bool)
    exact = np.zeros(len(vocabulary), dtype=bool)
    words = 0
    lines = _lines(source.path)
    if source.header:
        next(lines)
    for number, text in lines:
        where = f"{source.path}:{number}"
        word, values = _word_and_values(text, source.dim, where, source.header)
        words += 1
        row = index.get(word)
        if row is not None:
            if not exact[row]:  # the exact word wins over a case variant seen before it
                matrix[row] = _parse(values, where, word)
                found[row] = exact[row] = True
        elif lowercase:
            row = index.get(word.lower())
            if row is not None and not found[row]:  # the first case variant in the file
                matrix[row] = _parse(values, where, word)
                found[row] = True
    if words == 0:
        raise DataError(f"{source.path}: the file holds no vectors")
    return matrix, found, {"words": words, "lowercase_matches": int((found & ~exact).sum())}


def vocabulary(directory: Path) -> list[str]:
    """The tokens of a data cache entry, by id (vocab.json, or a subword tokenizer's tokenizer.json)."""
    if (directory / "vocab.json").is_file():
        return json.loads((directory / "vocab.json").read_text())
    from tokenizers import Tokenizer

    by_id = Tokenizer.from_file(str(directory / "tokenizer.json")).get_vocab(with_added_tokens=True)
    tokens = [""] * (max(by_id.values()) + 1)
    for token, i in by_id.items():
        tokens[i] = token
    return tokens


def _lowercases(meta: dict[str, Any]) -> bool:
    tok = meta.get("tokenizer", {})
    return tok.get("name") == "basic_english" or bool(tok.get("lowercase"))


def _coverage(splits: Splits, found: np.ndarray, counts: dict) -> dict[str, Any]:
    """How much of the vocabulary, and of the training split's tokens, has a vector."""
    types = max(len(found) - FIRST_LOOKED_UP, 0)
    covered = int(found.sum())
    per_token = np.bincount(np.asarray(splits.train.ids), minlength=len(found))
    train_tokens = int(per_token.sum())
    covered_tokens = int(per_token[found].sum())
    return {
        "words_in_file": counts["words"],
        "vocab_size": len(found),
        "vocab_tokens": types,  # the tokens looked up: the vocabulary without <pad> and <unk>
        "covered": covered,
        "lowercase_matches": counts["lowercase_matches"],
        "coverage": covered / types if types else 0.0,
        "train_tokens": train_tokens,
        "train_tokens_covered": covered_tokens,
        "token_coverage": covered_tokens / train_tokens if train_tokens else 0.0,
    }


def _build(source: VectorsFile, splits: Splits) -> PretrainedVectors:
    assert splits.directory is not None
    matrix, found, counts = read_vectors(source, vocabulary(splits.directory), lowercase=_lowercases(splits.meta))
    if len(matrix) != splits.vocab_size:
        raise RuntimeError(f"the vocabulary of {splits.directory} has {len(matrix)} tokens, "
                           f"its meta.json says {splits.vocab_size}")
    info = {"version": VECTORS_VERSION, "digest": source.digest, "dim": source.dim, "header": source.header,
            **_coverage(splits, found, counts)}
    return PretrainedVectors(matrix, found, info)


def _paths(source: VectorsFile, splits: Splits) -> dict[str, Path]:
    assert splits.directory is not None
    key = f"{source.digest[:16]}-d{source.dim}-v{VECTORS_VERSION}"
    folder = splits.directory / "vectors"
    return {name: folder / f"{key}.{name}" for name in ("matrix.npy", "found.npy", "json", "lock")}


def _load_cached(source: VectorsFile, splits: Splits) -> PretrainedVectors | None:
    """The cached rows, memory-mapped, or None if absent or damaged (then built again)."""
    paths = _paths(source, splits)
    if not paths["json"].is_file():  # written last: without it the others may be half there
        return None
    try:
        info = json.loads(paths["json"].read_text())
        matrix = np.load(paths["matrix.npy"], mmap_mode="r")
        found = np.load(paths["found.npy"])
        if matrix.shape != (splits.vocab_size, source.dim) or found.shape != (splits.vocab_size,) \
                or matrix.dtype != np.float32 or found.dtype != bool or info.get("digest") != source.digest:
            raise ValueError("the arrays do not match the vocabulary and the vectors file")
    except (ValueError, OSError, KeyError, AttributeError) as ex:
        log.warning("cached word vectors %s are damaged (%s); reading the vectors file again", paths["json"], ex)
        return None
    return PretrainedVectors(matrix, found, info)


def _save(vectors: PretrainedVectors, paths: dict[str, Path]) -> None:
    atomic_write(paths["matrix.npy"], lambda f: np.save(f, vectors.matrix))
    atomic_write(paths["found.npy"], lambda f: np.save(f, vectors.found))
    write_json(paths["json"], vectors.info)


def load_vectors(source: VectorsFile, splits: Splits) -> PretrainedVectors:
    """The vectors of `splits`' vocabulary: from the entry's cache, or read from the file (once,
    whichever job asks first) and cached there. A cache that cannot be written (a shared, read-only
    one) costs a read per job, with a warning, and nothing more."""
    if splits.directory is None:  # splits not from the cache: nothing to key a cached matrix by
        raise ValueError("pretrained vectors need splits from the data cache (prepare)")
    vectors = _load_cached(source, splits)
    if vectors is None:
        paths = _paths(source, splits)
        try:
            paths["lock"].parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(paths["lock"])):
                vectors = _load_cached(source, splits)  # another job may have read it meanwhile
                if vectors is None:
                    vectors = _build(source, splits)
                    _save(vectors, paths)
                    log.info("word vectors cached: %s", paths["json"])
        except OSError as ex:
            log.warning("cannot cache word vectors in %s (%s); reading %s for this job only",
                        paths["json"].parent, ex.strerror or ex, source.path)
            vectors = _build(source, splits)
    # The cache is shared by every path to the same content: the path is this job's.
    vectors.info = {"path": str(source.path), **vectors.info}
    return vectors
