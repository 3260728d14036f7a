"""Embedded default data: short 4-class "news" texts in which word order carries the label.

Every text names one or more topics through topic words (e.g. "striker" for Sports) among
neutral filler words. The label is the topic of the *first* mention that is not negated by a
directly preceding "not". A bag of words sees the same multiset for "election ... playoff"
(World) and "playoff ... election" (Sports), and for "not election ... playoff" (Sports) and
"election ... not playoff" (World), so it cannot do better than chance between the two topics
of such an example; a recurrent model that reads in order can.

`variant="long_range"` names the label topic in the first few tokens of a long text whose later
mentions are all distractors of other topics: the model must carry one early token across
dozens of steps, where a vanilla RNN's memory fades and a gated cell's does not.
"""

from __future__ import annotations

import random

# Bump when a change alters the texts generated for the same arguments: it is part of every
# run's identity, so the run store will not reuse results computed on the old texts.
GENERATOR_VERSION = "2"

CLASS_NAMES = ("World", "Sports", "Business", "Sci/Tech")

TOPIC_WORDS = (
    (  # World
        "election", "minister", "embassy", "treaty", "refugees", "parliament", "ceasefire",
        "diplomats", "sanctions", "summit", "rebels", "referendum", "border", "president",
    ),
    (  # Sports
        "striker", "playoff", "coach", "tournament", "goalkeeper", "championship", "season",
        "quarterback", "league", "medal", "stadium", "innings", "transfer", "marathon",
    ),
    (  # Business
        "shares", "merger", "profit", "earnings", "investors", "dividend", "bankruptcy",
        "retailer", "stocks", "quarterly", "acquisition", "inflation", "bonds", "revenue",
    ),
    (  # Sci/Tech
        "software", "genome", "satellite", "processor", "telescope", "browser", "vaccine",
        "robot", "spacecraft", "chipmaker", "database", "laser", "startup", "internet",
    ),
)

FILLER = (
    "the", "a", "on", "in", "of", "to", "and", "said", "says", "reported", "report", "tuesday",
    "monday", "friday", "officials", "according", "sources", "week", "after", "during", "latest",
    "analysts", "while", "with", "new", "local", "early", "statement", "late", "today", "news",
    "agency", "people", "group", "plans", "year", "first", "last", "since", "over", "about",
    "amid", "despite", "talks", "expected", "still", "more", "than", "from", "at", "by",
    "headlines", "story", "update", "reuters", "ap", "afp", "briefly", "again", "major",
)

NEGATION = "not"

# Share of each pattern in variant="order"; the rest are single-topic texts a bag can solve.
_ORDER_SHARE = 0.35
_NEGATION_SHARE = 0.35


def _filler(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(FILLER) for _ in range(n)]


def _topic(rng: random.Random, label: int) -> str:
    return rng.choice(TOPIC_WORDS[label])


def _place(rng: random.Random, mentions: list[list[str]], length: int) -> list[str]:
    """Spread the mention phrases, in the given order, over `length` filler tokens."""
    filler_count = max(length - sum(len(m) for m in mentions), len(mentions) + 1)
    cuts = sorted(rng.sample(range(1, filler_count), len(mentions)))
    words = _filler(rng, filler_count)
    out: list[str] = []
    prev = 0
    for cut, mention in zip(cuts, mentions):
        out += words[prev:cut] + mention
        prev = cut
    return out + words[prev:]


def _order_text(rng: random.Random, label: int) -> list[str]:
    other = rng.choice([c for c in range(len(CLASS_NAMES)) if c != label])
    length = rng.randint(10, 22)
    roll = rng.random()
    if roll < _ORDER_SHARE:
        mentions = [[_topic(rng, label)], [_topic(rng, other)]]
    elif roll < _ORDER_SHARE + _NEGATION_SHARE:
        negated = [NEGATION, _topic(rng, other)]
        mentions = [negated, [_topic(rng, label)]] if rng.random() < 0.5 else [
            [_topic(rng, label)], negated]
    else:
        mentions = [[_topic(rng, label)] for _ in range(rng.randint(1, 2))]
    return _place(rng, mentions, length)


def _long_range_text(rng: random.Random, label: int) -> list[str]:
    others = [c for c in range(len(CLASS_NAMES)) if c != label]
    head = _filler(rng, rng.randint(0, 2)) + [_topic(rng, label)]
    distractors = [[_topic(rng, rng.choice(others))] for _ in range(rng.randint(2, 3))]
    # Distractors sit in the second half, so the label token is always far from the end.
    tail_len = rng.randint(50, 70)
    lead = _filler(rng, tail_len // 2)
    return head + lead + _place(rng, distractors, tail_len - len(lead))


def generate(variant: str, size: int, seed: int) -> tuple[list[str], list[int]]:
    """`size` texts and labels (balanced, shuffled), the same for the same arguments."""
    if variant not in ("order", "long_range"):
        raise ValueError(f"unknown synthetic variant {variant!r}: expected order or long_range")
    rng = random.Random(f"rnnsweep-synthetic-{variant}-{seed}")
    make = _order_text if variant == "order" else _long_range_text
    labels = [i % len(CLASS_NAMES) for i in range(size)]
    rng.shuffle(labels)
    texts = [" ".join(make(rng, label)) for label in labels]
    return texts, labels


def label_of(tokens: list[str]) -> int | None:
    """The labelling rule, stated once as code: the first non-negated topic mention."""
    topic_of = {w: c for c, words in enumerate(TOPIC_WORDS) for w in words}
    for i, tok in enumerate(tokens):
        if tok in topic_of and (i == 0 or tokens[i - 1] != NEGATION):
            return topic_of[tok]
    return None
