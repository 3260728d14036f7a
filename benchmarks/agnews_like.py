"""Generated data of AG News's size and shape, for benchmarks: no download, any number of rows.

    python benchmarks/agnews_like.py DIR                      # 120,000 train / 7,600 test rows
    python benchmarks/agnews_like.py DIR --train 1000000

Writes DIR/train.csv and DIR/test.csv in AG News's layout ("class 1-4","title","description").
Words are pronounceable made-up tokens drawn from a Zipf law, so that the 120,000-row set has a
`basic_english` vocabulary near AG News's (~95,000 words); each class prefers its own topic
words, so classifiers learn something and accuracy can be compared. Titles are capitalised and
texts carry AG News's punctuation, so tokenizers do the same work they do on the real data.

Text lengths follow AG News's, since a recurrent layer's cost grows with them while the lesson's
dense Adam step does not. AG News's 120,000 training texts (title + " " + description) average
236.5 characters (from the published byte size of the split); 581 real rows average 5.29 characters per `basic_english`
token, so the real mean is about 44.7 tokens, with a right tail (those rows: standard deviation
16.7, 5th and 95th percentiles 24 and 76). The 120,000 generated texts here: mean 44.6 tokens,
standard deviation 17.0, percentiles 24 and 77, vocabulary 96,281 words.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

LEXICON = 142_000
TOPIC_WORDS = 3_000  # per class
TOPIC_SHARE = 0.25  # of a text's words
ZIPF = 1.15
TITLE_WORDS = (4, 9)  # uniform, inclusive
BODY_FLOOR, BODY_SHAPE, BODY_SCALE, BODY_MAX = 3, 2.2, 7.4, 150
SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "st", "qu", "ck"]


def lexicon(size: int, seed: int) -> np.ndarray:
    """`size` distinct made-up words, short ones first (frequent words are short, as in English)."""
    rng = np.random.default_rng(seed)
    syl = np.array(SYLLABLES)
    words: dict[str, None] = {}
    n_syl = 1
    while len(words) < size:
        n_syl = min(n_syl + 1, 5)
        batch = rng.integers(0, len(syl), size=(size, n_syl))
        for row in syl[batch]:
            words.setdefault("".join(row), None)
            if len(words) >= size:
                break
    return np.array(list(words), dtype=object)


def _zipf_sampler(n: int, rng: np.random.Generator):
    weights = 1.0 / np.arange(1, n + 1) ** ZIPF
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return lambda k: np.minimum(np.searchsorted(cdf, rng.random(k)), n - 1)


PUNCT = np.array(["", "", "", "", "", ",", ",", ".", "'s", ""], dtype=object)


def write_split(path: Path, rows: int, words: np.ndarray, topics: np.ndarray, seed: int, chunk: int = 50_000) -> None:
    rng = np.random.default_rng(seed)
    common = _zipf_sampler(len(words), rng)
    topical = _zipf_sampler(topics.shape[1], rng)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            labels = rng.integers(0, 4, size=n)
            title_len = rng.integers(TITLE_WORDS[0], TITLE_WORDS[1] + 1, size=n)
            # Right-skewed, as news descriptions are: a floor plus a gamma-distributed rest.
            body_len = np.minimum(BODY_FLOOR + np.rint(rng.gamma(BODY_SHAPE, BODY_SCALE, size=n)).astype(np.int64),
                                  BODY_MAX)
            lengths = title_len + body_len
            total = int(lengths.sum())
            ids = common(total)
            row_of = np.repeat(np.arange(n), lengths)
            is_topic = rng.random(total) < TOPIC_SHARE
            ids[is_topic] = topics[labels[row_of[is_topic]], topical(int(is_topic.sum()))]
            tokens = words[ids] + PUNCT[rng.integers(0, len(PUNCT), size=total)]
            bounds = np.concatenate(([0], np.cumsum(lengths)))
            for i in range(n):
                a, t, b = bounds[i], bounds[i] + title_len[i], bounds[i + 1]
                title = " ".join(w.capitalize() for w in tokens[a:t])
                body = " ".join(tokens[t:b])
                writer.writerow([str(labels[i] + 1), f"{title} (Reuters)", f"Reuters - {body}."])


def write(directory: Path, train: int = 120_000, test: int = 7_600, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    words = lexicon(LEXICON, seed)
    rng = np.random.default_rng(seed + 1)
    # Each class's topic words: a random slice of the lexicon's middle ranks.
    topics = np.stack([rng.choice(np.arange(200, 60_000), size=TOPIC_WORDS, replace=False) for _ in range(4)])
    write_split(directory / "train.csv", train, words, topics, seed + 2)
    write_split(directory / "test.csv", test, words, topics, seed + 3)
    return directory


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", type=Path)
    p.add_argument("--train", type=int, default=120_000)
    p.add_argument("--test", type=int, default=7_600)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    started = time.perf_counter()
    write(args.directory, args.train, args.test, args.seed)
    print(f"wrote {args.train} + {args.test} rows to {args.directory} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()


def canonical_md5() -> dict[str, str]:
    """The canonical AG News files' MD5s, from the one place rnnsweep keeps them."""
    from omegaconf import OmegaConf

    data = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "data" / "ag_news.yaml")
    return {"train": data.train_md5, "test": data.test_md5}


def encoded(data: Path, cache: Path):
    """The encoded splits of AG News-format `data` as rnnsweep's runs read them (val 5%, split
    seed 1234, the default tokenizer), built in or loaded from `cache`."""
    from rnnsweep.data import SplitOptions, TokenizerOptions, prepare
    from rnnsweep.data.sources import AgNews

    source = AgNews(root=data, download=False, urls={}, md5=canonical_md5(), clean=True, drop_empty=True)
    return prepare(source, SplitOptions(val_fraction=0.05, seed=1234), TokenizerOptions(), cache)
