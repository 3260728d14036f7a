"""Texts -> token ids: torchtext's `basic_english` rules with a frequency-ranked word vocabulary,
or WordPiece / BPE subwords trained with Hugging Face `tokenizers`.

Every tokenizer reserves id 0 for padding and id 1 for unknown tokens. The vocabulary is learnt
from the rows `fit_rows` selects (the training split), and every row of every split is encoded
with it, in one pass over the texts.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
TOKENIZERS = ("basic_english", "wordpiece", "bpe")

# torchtext.data.utils._basic_english_normalize, rule for rule, in its order: lowercase, then
# these substitutions, then split on whitespace.
BASIC_ENGLISH_RULES = (
    (r"\'", " '  "),
    (r"\"", ""),
    (r"\.", " . "),
    (r"<br \/>", " "),
    (r",", " , "),
    (r"\(", " ( "),
    (r"\)", " ) "),
    (r"\!", " ! "),
    (r"\?", " ? "),
    (r"\;", " "),
    (r"\:", " "),
    (r"\s+", " "),
)
_COMPILED = [(re.compile(p), r) for p, r in BASIC_ENGLISH_RULES]


def basic_english(text: str) -> list[str]:
    """The reference implementation: exactly torchtext's `get_tokenizer("basic_english")`."""
    line = text.lower()
    for pattern, replacement in _COMPILED:
        line = pattern.sub(replacement, line)
    return line.split()


# The same rules as plain string replacements, which run over a whole chunk of documents at
# once. They are equivalent: removing '"' first is the only reordering, and it has to come first
# because removing a quote can complete a '<br />'; no other rule can make or break one. The
# final whitespace rule is what str.split() does anyway.
_FAST_RULES = (
    ('"', ""),
    ("<br />", " "),
    ("'", " '  "),
    (".", " . "),
    (",", " , "),
    ("(", " ( "),
    (")", " ) "),
    ("!", " ! "),
    ("?", " ? "),
    (";", " "),
    (":", " "),
)
# Joins the texts of a chunk: a private-use character that no rule touches and that is not
# whitespace (a chunk whose texts contain it takes the one-by-one path).
_SEP = "\ue000"
_CHUNK = 20_000


def _basic_english_rows(texts: Sequence[str]) -> list[list[str]]:
    """`basic_english` of many texts at once: the rules run once over the joined chunk."""
    if any(_SEP in t for t in texts):
        return [basic_english(t) for t in texts]
    line = _SEP.join(texts).lower()
    for old, new in _FAST_RULES:
        line = line.replace(old, new)
    return [row.split() for row in line.split(_SEP)]


@dataclass
class Encoded:
    """Every row's token ids, flat, with offsets; the vocabulary that produced them."""

    ids: np.ndarray  # int32
    offsets: np.ndarray  # int64, len(rows) + 1
    vocab_size: int
    save: Callable[[Path], None]  # writes what it takes to encode new text the same way


def _ensure_one_step(ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A row that tokenizes to nothing (e.g. only ';') becomes one <unk>: a sequence needs a step."""
    empty = np.flatnonzero(lengths == 0)
    if len(empty):
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        ids = np.insert(ids, starts[empty], UNK_ID)
        lengths = np.maximum(lengths, 1)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return ids, offsets


def _word_ids(texts: Sequence[str], to_ids: Callable[[list[str]], np.ndarray],
              progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(flat int32 ids, per-row lengths) of `texts` in `basic_english` tokens, chunk by chunk;
    `to_ids` maps one chunk's tokens to ids (learning a vocabulary, or looking one up)."""
    chunks, lengths = [], []
    for start in range(0, len(texts), _CHUNK):
        rows = _basic_english_rows(texts[start : start + _CHUNK])
        lengths.append(np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)))
        tokens = list(itertools.chain.from_iterable(rows))
        del rows
        chunks.append(to_ids(tokens))
        if progress:
            progress(len(lengths[-1]))
    ids = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
    return ids, np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)


def word_vocabulary(
    texts: Sequence[str],
    fit_rows: np.ndarray,
    *,
    min_freq: int = 1,
    max_vocab: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Encoded:
    """`basic_english` tokens, ranked by frequency in `fit_rows` (ties by the token itself)."""
    if min_freq < 1:
        raise ValueError("min_freq must be at least 1")
    index: dict[str, int] = {}  # provisional ids, in order of first sight

    def provisional_ids(tokens: list[str]) -> np.ndarray:
        for tok in set(tokens).difference(index):
            index[tok] = len(index)
        return np.fromiter(map(index.__getitem__, tokens), dtype=np.int32, count=len(tokens))

    ids, row_lengths = _word_ids(texts, provisional_ids, progress)
    fit_mask = np.zeros(len(row_lengths), dtype=bool)
    fit_mask[fit_rows] = True
    counts = np.bincount(ids[np.repeat(fit_mask, row_lengths)], minlength=len(index))
    words = np.empty(len(index), dtype=object)
    words[list(index.values())] = list(index.keys())
    kept = np.flatnonzero(counts >= min_freq)
    ranked = sorted(kept.tolist(), key=lambda i: (-counts[i], words[i]))
    if max_vocab is not None:
        ranked = ranked[: max(max_vocab - 2, 0)]
    remap = np.full(len(index), UNK_ID, dtype=np.int32)
    remap[np.asarray(ranked, dtype=np.int64)] = np.arange(2, 2 + len(ranked), dtype=np.int32)
    ids, offsets = _ensure_one_step(remap[ids], row_lengths)
    vocab = [PAD, UNK, *words[ranked].tolist()] if ranked else [PAD, UNK]

    def save(directory: Path) -> None:
        (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))

    return Encoded(ids, offsets, len(vocab), save)


def subword_vocabulary(
    kind: str,
    texts: Sequence[str],
    fit_rows: np.ndarray,
    *,
    min_freq: int = 2,
    max_vocab: int = 30_000,
    lowercase: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Encoded:
    """WordPiece or BPE, trained on `fit_rows` with Hugging Face `tokenizers` (Rust, multi-threaded)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    specials = [PAD, UNK]  # the trainers give special tokens the first ids, in this order
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(
            vocab_size=max_vocab, min_frequency=min_freq, special_tokens=specials, show_progress=False
        )
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=UNK))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else []))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.BpeTrainer(
            vocab_size=max_vocab, min_frequency=min_freq, special_tokens=specials, show_progress=False
        )
    else:
        raise ValueError(f"unknown subword tokenizer {kind!r} (expected wordpiece or bpe)")
    tok.train_from_iterator((texts[i] for i in fit_rows), trainer=trainer, length=len(fit_rows))
    if (tok.token_to_id(PAD), tok.token_to_id(UNK)) != (PAD_ID, UNK_ID):
        raise RuntimeError("the subword trainer did not give <pad> and <unk> the ids 0 and 1")
    ids, offsets = _subword_ids(tok, texts, progress)

    def save(directory: Path) -> None:
        tok.save(str(directory / "tokenizer.json"))

    return Encoded(ids, offsets, tok.get_vocab_size(), save)


def _subword_ids(tok, texts: Sequence[str], progress: Callable[[int], None] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(flat ids, offsets) of `texts` under a trained subword tokenizer: the training split's
    encoding and a saved model's encoding of new text are this one function."""
    chunks, lengths = [], []
    for start in range(0, len(texts), _CHUNK):
        batch = tok.encode_batch(list(texts[start : start + _CHUNK]), add_special_tokens=False)
        n = np.fromiter((len(e.ids) for e in batch), dtype=np.int64, count=len(batch))
        chunks.append(np.fromiter(itertools.chain.from_iterable(e.ids for e in batch), dtype=np.int32, count=int(n.sum())))
        lengths.append(n)
        if progress:
            progress(len(batch))
    ids = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
    return _ensure_one_step(ids, np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64))


def encode(
    name: str,
    texts: Sequence[str],
    fit_rows: np.ndarray,
    *,
    min_freq: int,
    max_vocab: int | None,
    lowercase: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Encoded:
    if name == "basic_english":
        return word_vocabulary(texts, fit_rows, min_freq=min_freq, max_vocab=max_vocab, progress=progress)
    return subword_vocabulary(
        name, texts, fit_rows, min_freq=min_freq, max_vocab=max_vocab or 30_000, lowercase=lowercase, progress=progress
    )


def load_encoder(directory: Path, name: str) -> Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]:
    """The vocabulary `Encoded.save` wrote into `directory`, as a function from new texts to
    (flat int32 ids, int64 offsets): exactly the ids `encode` gave the same texts when it learnt
    it. Words it never kept are <unk>; a text that tokenizes to nothing is one <unk>, as in training."""
    if name == "basic_english":
        vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
        # Ids 0 and 1 are reserved: a text's own word "<pad>" or "<unk>" is a word like any other,
        # ranked (id >= 2) if it was kept, else <unk> like every word that was cut.
        index = {word: i for i, word in enumerate(vocab[2:], start=2)}

        def encode_words(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
            return _ensure_one_step(*_word_ids(texts, lambda tokens: np.fromiter(
                (index.get(t, UNK_ID) for t in tokens), dtype=np.int32, count=len(tokens))))

        return encode_words
    if name in ("wordpiece", "bpe"):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
        return lambda texts: _subword_ids(tok, texts)
    raise ValueError(f"unknown tokenizer {name!r} (expected one of {', '.join(TOKENIZERS)})")
