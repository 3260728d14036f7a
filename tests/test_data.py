"""The embedded data and the path from texts to padded batches."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import torch

from rnnsweep.data import EncodedTexts, SplitOptions, TokenizerOptions, prepare, stratified_split, synthetic
from rnnsweep.data.batches import collate, iterate, num_batches
from rnnsweep.data.sources import Synthetic
from rnnsweep.data.tokenization import PAD_ID, UNK_ID, word_vocabulary


def test_synthetic_is_deterministic_balanced_and_follows_its_rule():
    texts, labels = synthetic.generate("order", 400, seed=7)
    assert (texts, labels) == synthetic.generate("order", 400, seed=7)
    assert texts != synthetic.generate("order", 400, seed=8)[0]
    assert set(Counter(labels).values()) == {100}
    for text, label in zip(texts, labels):
        assert synthetic.label_of(text.split()) == label


def test_order_variant_has_bags_that_only_order_or_negation_can_tell_apart():
    texts, labels = synthetic.generate("order", 2000, seed=1)
    topic_of = {w: c for c, ws in enumerate(synthetic.TOPIC_WORDS) for w in ws}
    two_topics = [t for t in texts if len({topic_of[w] for w in t.split() if w in topic_of}) == 2]
    negated = [t for t in two_topics if synthetic.NEGATION in t.split()]
    # About 70% mention two topics; half of those carry a negation.
    assert 0.6 < len(two_topics) / len(texts) < 0.8
    assert 0.4 < len(negated) / len(two_topics) < 0.6
    # Where two topics appear, the label is the first one in about half and the second in the rest
    # of the negated cases, so no bag-of-words rule (e.g. "the first word wins") recovers it.
    second_wins = 0
    for t in negated:
        mentions = [topic_of[w] for w in t.split() if w in topic_of]
        second_wins += synthetic.label_of(t.split()) == mentions[1]
    assert 0.4 < second_wins / len(negated) < 0.6


def test_long_range_variant_names_the_label_early_in_a_long_text():
    texts, labels = synthetic.generate("long_range", 300, seed=3)
    topic_of = {w: c for c, ws in enumerate(synthetic.TOPIC_WORDS) for w in ws}
    for text, label in zip(texts, labels):
        words = text.split()
        first = next(i for i, w in enumerate(words) if w in topic_of)
        assert first <= 2 and topic_of[words[first]] == label
        assert len(words) >= 30
        later = [topic_of[w] for w in words[first + 1 :] if w in topic_of]
        assert len(later) >= 2 and label not in later


def test_vocabulary_has_fixed_special_ids_and_maps_unknown_words(tmp_path):
    # Fitted on the first two rows only: "zzz" (third row) is unknown.
    enc = word_vocabulary(["b a a", "c a", "a b zzz"], np.array([0, 1]))
    enc.save(tmp_path)
    assert json.loads((tmp_path / "vocab.json").read_text()) == ["<pad>", "<unk>", "a", "b", "c"]
    assert (PAD_ID, UNK_ID) == (0, 1) and enc.vocab_size == 5
    # a (3x) before b, c (1x each, by name)
    assert enc.ids[enc.offsets[2] : enc.offsets[3]].tolist() == [2, 3, UNK_ID]


def test_collate_pads_to_the_longest_row_and_keeps_lengths():
    data = EncodedTexts(np.arange(1, 10), np.array([0, 4, 5, 9]), np.array([0, 1, 2]))
    b = collate(data, np.array([1, 0]))
    assert b.ids.tolist() == [[5, 0, 0, 0], [1, 2, 3, 4]]
    assert b.lengths.tolist() == [1, 4] and b.labels.tolist() == [1, 0]
    assert b.lengths.device.type == "cpu"


def test_iterate_covers_every_row_once_in_a_seeded_order():
    data = EncodedTexts(np.arange(10), np.arange(11), np.arange(10))
    g = torch.Generator().manual_seed(3)
    seen = [row for b in iterate(data, 4, shuffle=True, generator=g) for row in b.labels.tolist()]
    assert sorted(seen) == list(range(10)) and seen != list(range(10))
    g.manual_seed(3)
    assert seen == [row for b in iterate(data, 4, shuffle=True, generator=g) for row in b.labels.tolist()]
    assert num_batches(data, 4) == 3


def test_stratified_split_holds_out_each_class_in_proportion():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    keep, held = stratified_split(labels, 0.1, seed=0)
    assert Counter(labels[held].tolist()) == {0: 5, 1: 3, 2: 2}
    assert len(set(keep) | set(held)) == 100 and not set(keep) & set(held)
    assert np.array_equal(held, stratified_split(labels, 0.1, seed=0)[1])


def test_synthetic_splits_are_disjoint_and_share_one_vocabulary(tmp_path):
    s = prepare(Synthetic(variant="order", train_size=200, test_size=50, seed=5), SplitOptions(0.1, seed=5),
                TokenizerOptions(), tmp_path)
    assert (len(s.train), len(s.val), len(s.test)) == (180, 20, 50)
    assert s.num_classes == 4 and s.class_names[3] == "Sci/Tech"
    assert s.train.ids.max() < s.vocab_size and s.test.ids.max() < s.vocab_size


def test_a_files_checksum_is_not_remembered_across_a_rewrite_that_keeps_size_and_mtime(tmp_path):
    """cp -p, rsync -t or a restored file keep size and mtime; the kernel's ctime still moves."""
    import os
    import time

    from rnnsweep.data.download import file_md5

    path = tmp_path / "train.csv"
    path.write_text("1,aaaa\n")
    before, stat = file_md5(path), path.stat()
    time.sleep(0.01)
    path.write_text("2,bbbb\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert file_md5(path) != before
