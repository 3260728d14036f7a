"""Real data paths: tokenizer rules, file readers and their errors, AG News, splits, the encoded cache."""

from __future__ import annotations

import re

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TINY, clean_env, run_cli
from datafiles import write_ag_news, write_jsonl
from rnnsweep.data import DataError, SplitOptions, TokenizerOptions, data_fingerprint, prepare
from rnnsweep.data import tokenization as T
from rnnsweep.data.readers import map_labels, read_table, unescape_ag_news
from rnnsweep.data.sources import AgNews, Table

SYNTHETIC_ONLY = ("data.train_size", "data.test_size")
FILE_TINY = [o for o in TINY if not o.startswith(SYNTHETIC_ONLY)]


# --- basic_english: torchtext's rules ------------------------------------------------------------

@pytest.mark.parametrize(
    "text,tokens",
    [
        # torchtext's own docstring example
        ("You can now install TorchText using pip!", ["you", "can", "now", "install", "torchtext", "using", "pip", "!"]),
        ("Don't stop.", ["don", "'", "t", "stop", "."]),
        ('He said "no", then (quietly) left?', ["he", "said", "no", ",", "then", "(", "quietly", ")", "left", "?"]),
        ("a;b:c", ["a", "b", "c"]),
        ("line<br />break", ["line", "break"]),
        ('odd<br "/>case', ["odd", "case"]),  # '"' goes first, completing a '<br />'
        ("U.S. $5,000-plus\tdeal\nnow", ["u", ".", "s", ".", "$5", ",", "000-plus", "deal", "now"]),
        ("", []),
        (" ;; ", []),
    ],
)
def test_basic_english_matches_torchtext_on_known_examples(text, tokens):
    assert T.basic_english(text) == tokens
    assert T._basic_english_rows([text, "x"]) == [tokens, ["x"]]


def test_chunked_basic_english_equals_the_rule_by_rule_reference_on_random_text():
    rng = random.Random(0)
    alphabet = "abcXYZ é.,;:!?()'\"<br />\t\n\u00a0\u2028ΣΑ0-9$#\\"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(3000)]
    assert T._basic_english_rows(texts) == [T.basic_english(t) for t in texts]
    assert T._basic_english_rows(texts + ["a\ue000b"]) == [T.basic_english(t) for t in texts + ["a\ue000b"]]


def test_word_vocabulary_honours_min_freq_and_max_vocab(tmp_path):
    texts = ["a a a b b c", "a b d", "e"]
    enc = T.word_vocabulary(texts, np.array([0, 1]), min_freq=2)
    enc.save(tmp_path)
    assert json.loads((tmp_path / "vocab.json").read_text()) == ["<pad>", "<unk>", "a", "b"]
    # The third row is not in the fitted rows: its only word is unknown.
    assert enc.ids[enc.offsets[2] : enc.offsets[3]].tolist() == [T.UNK_ID]
    capped = T.word_vocabulary(texts, np.array([0, 1]), max_vocab=3)
    assert capped.vocab_size == 3 and set(capped.ids.tolist()) == {T.UNK_ID, 2}


def test_a_text_with_no_tokens_becomes_one_unknown_step():
    enc = T.word_vocabulary(["a b", ";;", "b"], np.array([0, 1, 2]))
    assert np.diff(enc.offsets).tolist() == [2, 1, 1]
    assert enc.ids[2] == T.UNK_ID


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_subword_tokenizers_reserve_pad_and_unk_and_respect_the_vocabulary_size(kind, tmp_path):
    pytest.importorskip("tokenizers")
    texts = [f"the striker scored goal number {i} in the playoff tonight" for i in range(300)] + ["zzqx unseen"]
    enc = T.subword_vocabulary(kind, texts, np.arange(300), min_freq=2, max_vocab=120)
    assert enc.vocab_size <= 120
    assert enc.ids.min() >= T.UNK_ID and enc.ids.max() < enc.vocab_size  # no padding inside a text
    enc.save(tmp_path)
    saved = json.loads((tmp_path / "tokenizer.json").read_text())["model"]["vocab"]
    assert saved["<pad>"] == T.PAD_ID and saved["<unk>"] == T.UNK_ID
    assert len(enc.offsets) == len(texts) + 1 and enc.offsets[-1] == len(enc.ids)


# --- file readers ----------------------------------------------------------------------------------

def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_csv_tsv_and_jsonl_read_the_same_rows(tmp_path):
    csv_rows = read_table(write(tmp_path / "a.csv", 'title,body,y\n"Hi, there",x y,pos\nB,"two\nlines",neg\n'),
                          fmt="csv", text_columns=["title", "body"], label_column="y", header=True, drop_empty=True)
    tsv_rows = read_table(write(tmp_path / "a.tsv", "Hi, there\tx y\tpos\nB\ttwo\\nlines\tneg\n"), fmt="tsv",
                          text_columns=["0", "1"], label_column="2", header=False, drop_empty=True)
    jsonl_rows = read_table(
        write(tmp_path / "a.jsonl", '{"t": "Hi, there", "b": "x y", "y": "pos"}\n\n{"t": "B", "b": "two", "y": "neg"}\n'),
        fmt="jsonl", text_columns=["t", "b"], label_column="y", header=True, drop_empty=True)
    assert csv_rows.texts == ["Hi, there x y", "B two\nlines"] and csv_rows.lines == [2, 4]
    assert tsv_rows.texts[0] == jsonl_rows.texts[0] == "Hi, there x y"
    assert csv_rows.labels == tsv_rows.labels == jsonl_rows.labels == ["pos", "neg"]
    assert jsonl_rows.lines == [1, 3]


def test_labels_map_integers_with_an_offset_or_names_to_indices(tmp_path):
    train = read_table(write(tmp_path / "t.csv", "text,label\na,3\nb,1\nc,2\n"), fmt="csv", text_columns=["text"],
                       label_column="label", header=True, drop_empty=True)
    (labels,) = map_labels([train], classes=None, offset=1)
    assert labels.indices == [2, 0, 1] and labels.class_names == ["0", "1", "2"]
    named = read_table(write(tmp_path / "n.csv", "text,label\na,spam\nb,ham\n"), fmt="csv", text_columns=["text"],
                       label_column="label", header=True, drop_empty=True)
    (labels,) = map_labels([named], classes=None, offset=0)
    assert labels.mapping == {"ham": 0, "spam": 1} and labels.indices == [1, 0]


@pytest.mark.parametrize(
    "name,content,kwargs,message",
    [
        ("missing.csv", None, {}, "missing.csv: no such file"),
        ("empty.csv", "", {}, "empty.csv: the file is empty"),
        ("cols.csv", "body,label\nx,1\n", {}, "cols.csv:1: no column 'text' in the header (columns: body, label)"),
        ("latin.csv", b"text,label\nok,1\ncaf\xe9,1\n", {}, "latin.csv:3: byte 0xe9 at column 4 is not UTF-8"),
        ("blank.csv", "text,label\nok,1\n  ,1\n", {"drop_empty": False}, "blank.csv:3: empty text"),
        ("short.csv", "text,label\nok\n", {}, "short.csv:2: 1 fields, expected at least 2"),
        ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b",\n', {"fmt": "jsonl"}, "bad.jsonl:2: not valid JSON"),
        ("keys.jsonl", '{"text": "a", "y": 1}\n', {"fmt": "jsonl"}, "keys.jsonl:1: no key 'label' (keys: text, y)"),
    ],
)
def test_bad_input_is_one_line_naming_file_line_and_problem(tmp_path, name, content, kwargs, message):
    path = tmp_path / name
    if content is not None:
        write(path, content)
    options = {"fmt": "csv", "text_columns": ["text"], "label_column": "label", "header": True, "drop_empty": True}
    with pytest.raises(DataError) as err:
        read_table(path, **{**options, **kwargs})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_empty_texts_are_dropped_and_counted(tmp_path):
    rows = read_table(write(tmp_path / "e.csv", "text,label\nok,1\n,1\n  ,0\nfine,0\n"), fmt="csv",
                      text_columns=["text"], label_column="label", header=True, drop_empty=True)
    assert rows.texts == ["ok", "fine"] and rows.dropped_empty == 2


def labels_file(tmp_path, name: str, labels: list[str]):
    body = "text,label\n" + "".join(f"row {i},{label}\n" for i, label in enumerate(labels))
    return read_table(write(tmp_path / name, body), fmt="csv", text_columns=["text"], label_column="label",
                      header=True, drop_empty=True)


def test_one_non_integer_label_in_an_integer_file_is_an_error_naming_its_line(tmp_path):
    # It used to turn every label into a name: label 2 became class 3, label_offset ignored.
    train = labels_file(tmp_path, "t.csv", ["1", "2", "1.5", "3", "2"])
    with pytest.raises(DataError, match=r"t\.csv:4: label '1\.5' is not an integer, unlike 4 of the 5 labels"):
        map_labels([train], classes=None, offset=1)
    # A file of names stays a file of names, digits among them or not.
    (named,) = map_labels([labels_file(tmp_path, "n.csv", ["pos", "neg", "3", "pos"])], classes=None, offset=0)
    assert named.class_names == ["3", "neg", "pos"]


@pytest.mark.parametrize("labels,gap", [(["1", "2", "7", "1"], "leave 4 class(es) without a training row (3, 4, 5, 6"),
                                        (["1", "2", "100000000"], "leave 99999997 class(es)"),
                                        (["1", "2", "1000000000000"], "leave 999999999997 class(es) without a "
                                         "training row (3, 4, 5, 6, 7, ...")])
def test_integer_labels_with_gaps_are_an_error_not_empty_classes(tmp_path, labels, gap):
    train = labels_file(tmp_path, "t.csv", labels)
    with pytest.raises(DataError, match=re.escape(gap)):
        map_labels([train], classes=None, offset=1)  # before allocating anything per class
    with pytest.raises(DataError, match=r"below data.label_offset=1"):
        map_labels([labels_file(tmp_path, "z.csv", ["0", "1", "2"])], classes=None, offset=1)
    # Labels 1..5 read with the default offset 0 would leave class 0 empty: the error says the fix.
    with pytest.raises(DataError, match=r"integer labels run from 1 to 5, .* set data.label_offset=1"):
        map_labels([labels_file(tmp_path, "s.csv", ["1", "2", "3", "4", "5"])], classes=None, offset=0)


def test_training_data_of_one_class_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"t\.csv: every training row has the label 'spam'; .* at least two classes"):
        map_labels([labels_file(tmp_path, "t.csv", ["spam", "spam"])], classes=None, offset=0)
    with pytest.raises(DataError, match="every training row has the label '1'"):
        map_labels([labels_file(tmp_path, "i.csv", ["1", "1", "1"])], classes=None, offset=1)


def test_a_label_outside_the_declared_classes_names_its_line(tmp_path):
    train = read_table(write(tmp_path / "tr.csv", "text,label\na,1\nb,2\n"), fmt="csv", text_columns=["text"],
                       label_column="label", header=True, drop_empty=True)
    test = read_table(write(tmp_path / "te.csv", "text,label\na,1\nb,5\n"), fmt="csv", text_columns=["text"],
                      label_column="label", header=True, drop_empty=True)
    with pytest.raises(DataError, match=r"te\.csv:3: label '5' is outside the declared classes \(integers 1\.\.2\)"):
        map_labels([train, test], classes=None, offset=1)
    with pytest.raises(DataError, match=r"tr\.csv:3: label '2' is outside .*\(integers 0\.\.1\)"):
        map_labels([train], classes=["a", "b"], offset=0)  # two declared classes: labels 0 and 1


def test_ag_news_escapes_are_undone():
    assert unescape_ag_news("dwindling\\band of #36;46\\$ up \\\\eBay #39;s") == "dwindling band of $46$ up   eBay 's"
    assert unescape_ag_news("it#146;s") == "it\u2019s"


def test_ag_news_reads_the_original_layout_and_warns_on_a_non_canonical_copy(tmp_path):
    root = write_ag_news(tmp_path / "ag", train=200, test=40)
    source = AgNews(root=root, download=False, urls={}, md5={"train": "0" * 32, "test": "0" * 32}, clean=True,
                    drop_empty=True)
    raw = source.read()
    assert raw.class_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert len(raw.train_texts) == 200 and len(raw.test_texts) == 40
    assert set(raw.train_labels) == {0, 1, 2, 3}
    assert "\\" not in " ".join(raw.train_texts) and "$5 million" in " ".join(raw.train_texts)
    assert any("200 rows, the canonical AG News train split has 120000" in w for w in raw.warnings)


def test_ag_news_without_files_or_download_says_where_to_put_them(tmp_path):
    source = AgNews(root=tmp_path / "none", download=False, urls={}, md5={"train": "x", "test": "x"}, clean=True,
                    drop_empty=True)
    with pytest.raises(DataError, match=r"put AG News's train.csv and test.csv in .*none or set data.download=true"):
        source.read()


# --- splits and the encoded cache ----------------------------------------------------------------

def table(tmp_path: Path, n: int = 400, test: bool = True) -> Table:
    write_jsonl(tmp_path / "train.jsonl", n, seed=0)
    if test:
        write_jsonl(tmp_path / "test.jsonl", 80, seed=1)
    return Table(train=tmp_path / "train.jsonl", test=tmp_path / "test.jsonl" if test else None, fmt="auto",
                 text_columns=["text"], label_column="label", header=True, label_offset=0, classes=None,
                 drop_empty=True)


def rows_of(split) -> list[tuple[int, ...]]:
    return [tuple(split.ids[a:b].tolist()) for a, b in zip(split.offsets[:-1], split.offsets[1:])]


def test_splits_are_stratified_deterministic_and_part_of_the_fingerprint(tmp_path):
    source = table(tmp_path, n=400, test=False)
    opts = SplitOptions(val_fraction=0.1, test_fraction=0.2, seed=3)
    a = prepare(source, opts, TokenizerOptions(), tmp_path / "c1")
    b = prepare(source, opts, TokenizerOptions(), tmp_path / "c2")
    assert (len(a.train), len(a.val), len(a.test)) == (288, 32, 80)
    assert np.bincount(a.test.labels).tolist() == [20, 20, 20, 20]
    assert np.array_equal(a.val.ids, b.val.ids) and np.array_equal(a.train.labels, b.train.labels)
    assert a.meta["label_mapping"] == {"Business": 0, "Sci/Tech": 1, "Sports": 2, "World": 3}
    other = SplitOptions(val_fraction=0.2, test_fraction=0.2, seed=3)
    assert data_fingerprint(source, opts) != data_fingerprint(source, other)
    assert data_fingerprint(source, opts) != data_fingerprint(source, SplitOptions(0.1, test_fraction=0.2, seed=4))
    limited = prepare(source, SplitOptions(0.1, test_fraction=0.2, limit=100, seed=3), TokenizerOptions(), tmp_path / "c1")
    assert len(limited.train) + len(limited.val) + len(limited.test) == 100


def test_the_vocabulary_is_learnt_from_the_training_split_only(tmp_path):
    source = table(tmp_path)
    s = prepare(source, SplitOptions(0.1, seed=0), TokenizerOptions(), tmp_path / "cache")
    train_words = set(np.asarray(s.train.ids).tolist())
    assert T.UNK_ID not in train_words and set(range(2, s.vocab_size)) == train_words


def test_the_cache_is_reused_and_a_damaged_one_rebuilt(tmp_path):
    source, opts, tok = table(tmp_path), SplitOptions(0.1, seed=0), TokenizerOptions()
    first = prepare(source, opts, tok, tmp_path / "cache")
    again = prepare(source, opts, tok, tmp_path / "cache")
    assert first.built and not again.built and again.directory == first.directory
    assert isinstance(again.train.ids, np.memmap)
    reference = rows_of(first.train)
    ids = first.directory / "train.ids.npy"
    ids.write_bytes(ids.read_bytes()[:-7])  # truncated
    rebuilt = prepare(source, opts, tok, tmp_path / "cache")
    assert rebuilt.built and rows_of(rebuilt.train) == reference
    data = bytearray(ids.read_bytes())
    data[-3] ^= 0xFF  # one flipped byte, same size
    ids.write_bytes(bytes(data))
    rebuilt = prepare(source, opts, tok, tmp_path / "cache")
    assert rebuilt.built and rows_of(rebuilt.train) == reference


@pytest.mark.parametrize("meta", ["[]", "null", '{"vocab_size": 3}', '{"files": []}', '{"files": {}}'])
def test_a_cache_entry_whose_meta_has_the_wrong_shape_is_rebuilt(tmp_path, caplog, meta):
    source, opts, tok = table(tmp_path), SplitOptions(0.1, seed=0), TokenizerOptions()
    first = prepare(source, opts, tok, tmp_path / "cache")
    (first.directory / "meta.json").write_text(meta)
    rebuilt = prepare(source, opts, tok, tmp_path / "cache")
    assert rebuilt.built and rows_of(rebuilt.train) == rows_of(first.train)
    assert "is damaged" in caplog.text


def test_a_failed_load_caches_nothing(tmp_path):
    write(tmp_path / "train.csv", "text,label\nok,1\nbad,7\n")
    write(tmp_path / "test.csv", "text,label\nok,1\n")
    source = Table(train=tmp_path / "train.csv", test=tmp_path / "test.csv", fmt="auto", text_columns=["text"],
                   label_column="label", header=True, label_offset=0, classes=["a", "b"], drop_empty=True)
    with pytest.raises(DataError, match="train.csv:3: label '7'"):
        prepare(source, SplitOptions(0.1, seed=0), TokenizerOptions(), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # no entry, no lock file, not even the directories


PREPARE = """
import json, sys, hashlib
from pathlib import Path
from rnnsweep.data import SplitOptions, TokenizerOptions, prepare
from rnnsweep.data.sources import Table
d = Path(sys.argv[1])
src = Table(train=d / "train.jsonl", test=d / "test.jsonl", fmt="auto", text_columns=["text"], label_column="label",
            header=True, label_offset=0, classes=None, drop_empty=True)
s = prepare(src, SplitOptions(0.1, seed=0), TokenizerOptions(), d / "cache")
h = hashlib.sha256(b"".join(bytes(memoryview(a)) for p in (s.train, s.val, s.test) for a in (p.ids, p.offsets, p.labels)))
print(json.dumps({"built": s.built, "digest": h.hexdigest(), "dir": str(s.directory)}))
"""


def test_four_processes_on_a_cold_cache_build_once_and_load_the_same_arrays(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", 30_000, seed=0)  # big enough that the build takes a while
    write_jsonl(tmp_path / "test.jsonl", 500, seed=1)
    procs = [subprocess.Popen([sys.executable, "-c", PREPARE, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=clean_env(), cwd=REPO) for _ in range(4)]
    results = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(r["built"] for r in results) == 1
    assert len({r["digest"] for r in results}) == 1 and len({r["dir"] for r in results}) == 1
    entries = [p for p in (tmp_path / "cache" / "encoded").iterdir() if not p.name.endswith(".lock")]
    assert len(entries) == 1  # no temporary directory left behind


# --- through the command line --------------------------------------------------------------------

@pytest.mark.slow
def test_rnnsweep_trains_on_an_ag_news_directory(tmp_path):
    root = write_ag_news(tmp_path / "ag", train=600, test=120)
    res = run_cli(["data=ag_news", f"data.root={root}", "model=lstm", "train.epochs=1", *FILE_TINY,
                   "hydra.run.dir=run"], cwd=tmp_path, RNNSWEEP_CACHE_DIR=str(tmp_path / "cache"))
    assert res.returncode == 0, res.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "completed"
    assert record["data"]["classes"] == ["World", "Sports", "Business", "Sci/Tech"]
    assert record["data"]["train"] + record["data"]["val"] == 600 and record["data"]["test"] == 120
    assert 26 <= record["data"]["val"] <= 34  # 5% of each class
    assert any("canonical AG News" in w for w in record["data"]["warnings"])


def test_a_data_error_is_one_line_from_the_command_line_and_writes_no_result(tmp_path):
    write(tmp_path / "train.csv", "text,label\nok,1\nfine,2\n")
    res = run_cli(["data=csv", "data.train=train.csv", "data.text_columns=[body]", *FILE_TINY, "hydra.run.dir=run"],
                  cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("rnnsweep: error: ") and "train.csv:1: no column 'body'" in lines[-1]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_missing_data_file_is_one_line(tmp_path):
    res = run_cli(["data=csv", "data.train=nope.csv", *FILE_TINY], cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == f"rnnsweep: error: {tmp_path / 'nope.csv'}: no such file"
    (tmp_path / "texts").mkdir()
    folder = run_cli(["data=csv", "data.train=texts", *FILE_TINY], cwd=tmp_path)
    assert folder.returncode == 2
    assert folder.stderr.strip().splitlines() == [f"rnnsweep: error: {tmp_path / 'texts'}: a directory, not a file"]


def test_hf_offline_without_a_local_copy_fails_in_one_line(tmp_path):
    pytest.importorskip("datasets")
    res = run_cli(["data=hf", "data.dataset=someone/not-cached-anywhere", *FILE_TINY], cwd=tmp_path,
                  HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    assert res.returncode == 2
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("rnnsweep: error: data.dataset=someone/not-cached-anywhere: cannot load split 'train'")
    assert "offline and not in the local HF cache" in line


@pytest.mark.parametrize("option,key", [("csv", "data.train"), ("hf", "data.dataset")])
def test_a_file_source_without_its_file_says_which_key_to_set(option, key, tmp_path):
    res = run_cli([f"data={option}", *FILE_TINY], cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        f"rnnsweep: error: {key}: required, no default; set it on the command line ({key}=...)")


def test_a_binary_file_is_named_as_one(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"text,label\n" + bytes(range(256)))
    with pytest.raises(DataError, match=r"train\.csv:2: a NUL byte at column 1: not a text file"):
        read_table(path, fmt="csv", text_columns=["text"], label_column="label", header=True, drop_empty=True)
