"""Pretrained word vectors: the file formats, the rows they give the model, freezing under every
optimizer, the cache that reads a file once, the record's coverage, the identity, and the errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, run_cli
from rnnsweep import builders, config, run, store
from rnnsweep.config import to_plain
from rnnsweep.data import DataError, load_vectors, prepare, vectors_file
from rnnsweep.data import vectors as vectors_module
from rnnsweep.data.vectors import read_vectors
from rnnsweep.model import TextClassifier

DIM = 8  # TINY's model.embed_dim
# Words of the synthetic data's vocabulary (the news-like templates), and one it does not have.
KNOWN = ("by", "said", "reuters", "not")
PRETRAINED = ["model.embed_init=pretrained", f"model.embed_dim={DIM}"]


def vector(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def write_vectors(path: Path, rows: list[tuple[str, np.ndarray]], *, header: bool = False,
                  gz: bool = False) -> Path:
    """A word2vec/GloVe/fastText text file; float32 values written so that they read back exactly."""
    lines = [f"{len(rows)} {len(rows[0][1])}"] if header else []
    lines += [" ".join([word, *(repr(float(v)) for v in values)]) for word, values in rows]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def sample_rows() -> list[tuple[str, np.ndarray]]:
    # "BY" before "by": the exact word wins whatever the order; "Said" only in capitals: the
    # lowercasing tokenizer's fallback gives it to "said".
    return [("BY", vector(0)), ("by", vector(1)), ("Said", vector(2)), ("reuters", vector(3)),
            ("not-in-the-vocabulary", vector(4))]


def settings(compose_cfg, *overrides: str):
    return config.validate(compose_cfg([*TINY, *overrides]))


def splits_of(s):
    cache = builders.cache_dir(s.runtime, Path.cwd())
    return prepare(builders.data_source(s.data, Path.cwd(), cache), builders.split_options(s.data),
                   builders.tokenizer_options(s.tokenizer), cache)


def model_at_seed(s, data, vectors=None) -> TextClassifier:
    run.seed_everything(s.seed)
    return builders.build_model(s.model, s.topology, s.batching, vocab_size=data.vocab_size,
                                num_classes=data.num_classes, embedding_grad="dense", compiled_rnn=True,
                                vectors=vectors)


def vocab_index(data) -> dict[str, int]:
    return {w: i for i, w in enumerate(json.loads((data.directory / "vocab.json").read_text()))}


# --- the file formats, and the rows the model starts from --------------------------------------


@pytest.mark.parametrize("name,header,gz", [
    ("plain.txt", False, False), ("fasttext.vec", True, False), ("glove.txt.gz", False, True),
    ("fasttext.vec.gz", True, True),
    ("gzipped-without-the-name.txt", False, True),  # told by its first bytes, not its name
    ("plain-named.gz", True, False),
])
def test_the_file_s_vectors_are_the_rows_and_the_rest_is_the_usual_init(compose_cfg, tmp_path, name, header, gz):
    path = write_vectors(tmp_path / name, sample_rows(), header=header, gz=gz)
    s = settings(compose_cfg, *PRETRAINED, f"model.vectors={path}")
    data = splits_of(s)
    source = builders.pretrained_vectors(s.model, Path.cwd())
    assert (source.dim, source.header) == (DIM, header)
    vectors = load_vectors(source, data)
    pretrained = model_at_seed(s, data, vectors).embedding.weight.detach()
    plain = model_at_seed(settings(compose_cfg), data).embedding.weight.detach()  # embed_init=default

    index = vocab_index(data)
    expected = {"by": vector(1), "said": vector(2), "reuters": vector(3)}
    assert set(expected) <= set(index)
    for word, row in expected.items():
        assert torch.equal(pretrained[index[word]], torch.from_numpy(row)), word
    covered = np.zeros(data.vocab_size, dtype=bool)
    covered[[index[w] for w in expected]] = True
    assert np.array_equal(vectors.found, covered)
    assert torch.equal(pretrained[~torch.from_numpy(covered)], plain[~torch.from_numpy(covered)])
    assert torch.equal(pretrained[0], torch.zeros(DIM))  # <pad>: as the model makes it


def test_the_rest_of_the_model_is_what_the_same_seed_gives_without_vectors(compose_cfg, tmp_path):
    path = write_vectors(tmp_path / "v.txt", sample_rows())
    s = settings(compose_cfg, *PRETRAINED, f"model.vectors={path}")
    data = splits_of(s)
    with_vectors = model_at_seed(s, data, load_vectors(builders.pretrained_vectors(s.model, Path.cwd()), data))
    without = model_at_seed(settings(compose_cfg), data)
    theirs = without.state_dict()
    for key, tensor in with_vectors.state_dict().items():
        if key != "embedding.weight":
            assert torch.equal(tensor, theirs[key]), key


def test_lookup_is_exact_first_then_lowercased_only_for_lowercasing_tokenizers(tmp_path):
    path = write_vectors(tmp_path / "v.txt", [("Apple", vector(0)), ("apple", vector(1)), ("Pear", vector(2)),
                                              ("PEAR", vector(3)), ("Plum", vector(4))])
    source = vectors_file(path)
    vocab = ["<pad>", "<unk>", "apple", "pear", "Plum", "fig"]
    matrix, found, counts = read_vectors(source, vocab, lowercase=True)
    assert found.tolist() == [False, False, True, True, True, False]
    assert np.array_equal(matrix[2], vector(1))  # exact, though "Apple" came first
    assert np.array_equal(matrix[3], vector(2))  # no exact "pear": the first case variant in the file
    assert np.array_equal(matrix[4], vector(4))
    assert counts == {"words": 5, "lowercase_matches": 1}
    matrix, found, _ = read_vectors(source, vocab, lowercase=False)
    assert found.tolist() == [False, False, True, False, True, False]


def test_the_specials_keep_the_model_s_rows_even_when_the_file_has_them(tmp_path):
    path = write_vectors(tmp_path / "v.txt", [("<pad>", vector(0)), ("<unk>", vector(1)), ("fig", vector(2))])
    _, found, _ = read_vectors(vectors_file(path), ["<pad>", "<unk>", "fig"], lowercase=True)
    assert found.tolist() == [False, False, True]


def test_a_word_with_spaces_inside_is_read_as_one_word(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("fig 1 2\nat example.com 3 4\nplum 5 6 \n")  # GloVe 840B has such lines; fastText a trailing space
    matrix, found, counts = read_vectors(vectors_file(path), ["<pad>", "<unk>", "fig", "plum"], lowercase=True)
    assert found.tolist() == [False, False, True, True] and counts["words"] == 3
    assert matrix[3].tolist() == [5.0, 6.0]


# --- the errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("text,message", [
    ("fig 1 2 3\nplum 1 2\n", ":2: 'plum' has 2 values, the first vector has 3"),
    ("2 3\nfig 1 2 3\nplum 1 2 3 4\n", ":3: 'plum' has 4 values, the header gives 3"),
    ("fig 1 2 3\nby 1 x 3\n", ":2: value 2 of 'by' is 'x', not a number"),
    ("fig 1 2 3\nby 1 nan 3\n", ":2: 'by' has a value that is not a finite number"),
    ("fig\n", ":1: a word without values"),
    ("2 3\n", ": the file holds no vectors (only its header line)"),
    ("\n\n", ": the file holds no vectors"),
    ("2 300\nfig 1 2 3\nplum 1 2 3\n", ":1: the header says 300 dimensions, but line 2 has 3 values"),
])
def test_a_malformed_file_is_one_line_naming_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "v.txt"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_vectors(vectors_file(path), ["<pad>", "<unk>", "by", "fig", "plum"], lowercase=True)
    assert str(err.value).startswith(str(path)) and message in str(err.value), err.value
    assert "\n" not in str(err.value)


def test_a_broken_gzip_file_is_one_line(tmp_path):
    path = tmp_path / "v.txt.gz"
    whole = gzip.compress(b"".join(b"fig%d 1 2 %d\n" % (i, i * i) for i in range(2000)))
    path.write_bytes(whole[: len(whole) // 2])  # cut short, as an interrupted download is
    with pytest.raises(DataError, match="not a readable gzip file"):
        read_vectors(vectors_file(path), ["<pad>", "<unk>", "fig"], lowercase=True)


def test_the_dimension_is_checked_against_the_model(tmp_path):
    path = write_vectors(tmp_path / "v.txt", sample_rows())
    with pytest.raises(DataError) as err:
        vectors_file(path, 64)
    assert str(err.value) == f"{path}: vectors have {DIM} dimensions, model.embed_dim=64: set model.embed_dim={DIM}"


def cli_work(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A directory of the user's own holding nothing but what the test puts there; the data cache elsewhere."""
    work = tmp_path / "work"
    work.mkdir()
    return work, {"RNNSWEEP_CACHE_DIR": str(tmp_path / "cache")}


@pytest.mark.parametrize("case", ["dimension", "malformed", "missing", "without_pretrained", "without_vectors"])
def test_bad_vectors_fail_through_the_cli_with_one_line_and_nothing_written(tmp_path, case):
    work, env = cli_work(tmp_path)
    good = write_vectors(work / "vectors.txt", sample_rows())
    args = {
        "dimension": [*PRETRAINED, "model.embed_dim=16", "model.vectors=vectors.txt"],
        "malformed": [*PRETRAINED, "model.vectors=vectors.txt"],
        "missing": [*PRETRAINED, "model.vectors=glove.6B.8d.txt.gz"],
        "without_pretrained": ["model.vectors=vectors.txt"],
        "without_vectors": ["model.embed_init=pretrained"],
    }[case]
    expected = {
        "dimension": f"{good}: vectors have {DIM} dimensions, model.embed_dim=16: set model.embed_dim={DIM}",
        "malformed": f"{good}:3: value 4 of 'Said' is '0.x', not a number",
        "missing": f"{work / 'glove.6B.8d.txt.gz'}: no such file (model.vectors)",
        "without_pretrained": "model.vectors=vectors.txt: is only read with model.embed_init=pretrained",
        "without_vectors": "model.embed_init=pretrained: needs model.vectors=PATH",
    }[case]
    if case == "malformed":
        lines = good.read_text().splitlines()
        fields = lines[2].split(" ")  # "Said ...": the vocabulary's "said" needs its values
        fields[4] = "0.x"
        lines[2] = " ".join(fields)
        good.write_text("\n".join(lines) + "\n")
    res = run_cli([*TINY, *args], cwd=work, **env)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnsweep: error: "), res.stderr
    assert expected in lines[0], lines[0]
    assert sorted(p.name for p in work.iterdir()) == ["vectors.txt"]  # no outputs/, no store, no .lock


def test_bow_takes_vectors_too(compose_cfg):
    s = settings(compose_cfg, "model=bow", "model.pooling=mean", *PRETRAINED, "model.vectors=v.txt")
    assert s.model.vectors == "v.txt" and s.model.embed_init is config.EmbedInit.pretrained


# --- freezing, under every optimizer ------------------------------------------------------------

OPTIMIZERS = [
    ["optimizer=adam"],  # auto: deferred on the CPU
    ["optimizer=adam", "optimizer.embedding_grad=dense"],
    ["optimizer=adam", "optimizer.embedding_grad=scattered"],
    ["optimizer=adamw", "optimizer.weight_decay=0.1"],  # deferred AdamW: its catch-up decays the rows it reads
    ["optimizer=adamw", "optimizer.weight_decay=0.1", "optimizer.embedding_grad=dense"],
    ["optimizer=sgd", "optimizer.momentum=0.9", "optimizer.weight_decay=0.1"],
    ["optimizer=sparse_adam"],
]


@pytest.mark.parametrize("freeze", [True, False], ids=["frozen", "trained"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=[" ".join(o) for o in OPTIMIZERS])
def test_a_frozen_table_is_bit_identical_after_training(compose_cfg, tmp_path, optimizer, freeze):
    path = write_vectors(tmp_path / "v.txt", sample_rows())
    s = settings(compose_cfg, *PRETRAINED, f"model.vectors={path}", f"model.freeze_embedding={str(freeze).lower()}",
                 "runtime.device=cpu", f"ledger.store={tmp_path / 'store'}", *optimizer)
    data = splits_of(s)
    start = model_at_seed(s, data, load_vectors(builders.pretrained_vectors(s.model, Path.cwd()), data))
    result = run.run_job(s, run.Job(dir=tmp_path / "job"), tmp_path / "store", raise_on_failure=True)
    record = result.record
    assert record["status"] == "completed" and record["metrics"]["steps"] > 0
    weights = np.load(Path(record["model"]["dir"]) / "weights.npz")
    table = torch.from_numpy(weights["embedding.weight"])
    assert torch.equal(table, start.embedding.weight.detach()) is freeze
    # The rest of the model trained either way.
    assert not torch.equal(torch.from_numpy(weights["fc.weight"]), start.fc.weight.detach())
    trainable = sum(p.numel() for p in start.parameters()) - (start.embedding.weight.numel() if freeze else 0)
    assert record["metrics"]["params"] == trainable


# --- the record, the cache, the identity, the saved model ---------------------------------------


def test_the_record_has_the_coverage(compose_cfg, tmp_path):
    path = write_vectors(tmp_path / "v.txt.gz", sample_rows(), header=True, gz=True)
    s = settings(compose_cfg, *PRETRAINED, f"model.vectors={path}", f"ledger.store={tmp_path / 'store'}")
    record = run.run_job(s, run.Job(dir=tmp_path / "job"), tmp_path / "store", raise_on_failure=True).record
    data = splits_of(s)
    index = vocab_index(data)
    rows = [index["by"], index["said"], index["reuters"]]
    counts = np.bincount(np.asarray(data.train.ids), minlength=data.vocab_size)
    info = record["data"]["vectors"]
    assert info["path"] == str(path) and info["digest"] == vectors_file(path).digest
    assert (info["dim"], info["header"], info["words_in_file"]) == (DIM, True, 5)
    assert (info["vocab_size"], info["vocab_tokens"], info["covered"]) == (data.vocab_size, data.vocab_size - 2, 3)
    assert info["lowercase_matches"] == 1  # "Said"
    assert info["coverage"] == pytest.approx(3 / (data.vocab_size - 2))
    assert (info["train_tokens"], info["train_tokens_covered"]) == (int(counts.sum()), int(counts[rows].sum()))
    assert info["token_coverage"] == pytest.approx(counts[rows].sum() / counts.sum())
    assert "vectors" not in run.run_job(settings(compose_cfg, f"ledger.store={tmp_path / 'store'}"),
                                        run.Job(dir=tmp_path / "plain"), tmp_path / "store",
                                        raise_on_failure=True).record["data"]


def test_the_file_is_read_once_into_the_data_cache(compose_cfg, tmp_path, monkeypatch):
    path = write_vectors(tmp_path / "v.txt", sample_rows())
    reads = []
    real = vectors_module.read_vectors
    monkeypatch.setattr(vectors_module, "read_vectors", lambda *a, **k: reads.append(1) or real(*a, **k))

    def job(seed: int):
        s = settings(compose_cfg, *PRETRAINED, f"model.vectors={path}", f"seed={seed}",
                     f"runtime.cache_dir={tmp_path / 'cache'}", f"ledger.store={tmp_path / 'store'}")
        return run.run_job(s, run.Job(dir=tmp_path / f"job{seed}"), tmp_path / "store", raise_on_failure=True)

    first = job(0)
    (cached,) = (Path(first.record["data"]["cache"]) / "vectors").glob("*.json")
    assert cached.parent.parent.parent == tmp_path / "cache" / "encoded"
    files = {p: p.stat().st_mtime_ns for p in cached.parent.glob("*.npy")}
    assert len(files) == 2 and reads == [1]
    second = job(1)
    assert second.job["outcome"] == "trained" and reads == [1]  # the second job read the cache, not the file
    assert {p: p.stat().st_mtime_ns for p in cached.parent.glob("*.npy")} == files
    assert second.record["data"]["vectors"] == first.record["data"]["vectors"]
    s = settings(compose_cfg, *PRETRAINED, f"model.vectors={path}", f"runtime.cache_dir={tmp_path / 'cache'}")
    loaded = load_vectors(builders.pretrained_vectors(s.model, Path.cwd()), splits_of(s))
    assert isinstance(loaded.matrix, np.memmap)  # memory-mapped: every job shares one copy


def test_the_identity_follows_the_file_s_content(compose_cfg, tmp_path):
    path = write_vectors(tmp_path / "v.txt", sample_rows())

    def plan() -> tuple[str, str]:
        s = settings(compose_cfg, *PRETRAINED, f"model.vectors={path}", "ledger.plan=true")
        job = run.run_job(s, run.Job(dir=tmp_path / "plan"), tmp_path / "store", raise_on_failure=True).job
        return job["id"], job["group_id"]

    before = plan()
    assert plan() == before
    rows = sample_rows()
    rows[1] = ("by", vector(1) + np.float32(1))  # the same path, another vector
    write_vectors(path, rows)
    after = plan()
    assert after[0] != before[0] and after[1] != before[1]
    path = path.rename(tmp_path / "moved.txt")  # the same content elsewhere: the same run
    assert plan() == after


def test_runs_without_vectors_keep_their_ids(compose_cfg):
    plain = to_plain(settings(compose_cfg))
    assert plain["model"]["vectors"] is None and plain["model"]["freeze_embedding"] is False
    older = json.loads(json.dumps(plain))
    del older["model"]["vectors"], older["model"]["freeze_embedding"]  # the config before these keys
    assert store.run_identity(plain, "data") == store.run_identity(older, "data")
    frozen = to_plain(settings(compose_cfg, "model.freeze_embedding=true"))
    assert store.run_identity(frozen, "data") != store.run_identity(plain, "data")


def test_a_saved_model_rebuilds_without_the_vectors_file(compose_cfg, tmp_path):
    path = write_vectors(tmp_path / "v.txt", sample_rows())
    s = settings(compose_cfg, *PRETRAINED, f"model.vectors={path}", "model.freeze_embedding=true",
                 f"ledger.store={tmp_path / 'store'}")
    record = run.run_job(s, run.Job(dir=tmp_path / "job"), tmp_path / "store", raise_on_failure=True).record
    path.unlink()
    model_dir = Path(record["model"]["dir"])
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["architecture"]["embed_init"] == "pretrained"
    arch = dict(meta["architecture"])
    net = TextClassifier(arch.pop("vocab_size"), arch.pop("num_classes"), **arch)
    weights = np.load(model_dir / "weights.npz")
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    index = vocab_index(splits_of(s))
    assert torch.equal(net.embedding.weight[index["by"]].detach(), torch.from_numpy(vector(1)))
