"""From an exported run to predictions (rnnsweep.predict, rnnsweep-predict) and evaluate-only
scoring (rnnsweep.evaluation, rnnsweep-evaluate): the run's own test texts get its record's
numbers exactly, in this process and in a fresh one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TINY, clean_env
from rnnsweep import api, builders, config, evaluation, predict, predict_cli
from rnnsweep.data import DataError
from rnnsweep.data.pipeline import split_texts
from rnnsweep.data.tokenization import UNK_ID

AG_NEWS = REPO / "tests" / "data" / "ag_news_sample.csv"  # 400 rows of AG News's train.csv
AG_CLASSES = ["World", "Sports", "Business", "Sci/Tech"]
AG_DATA = ["data=csv", f"data.train={AG_NEWS}", "data.header=false", "data.label_column=0",
           "data.text_columns=[1,2]", "data.label_offset=1", f"data.classes=[{','.join(AG_CLASSES)}]"]
FAST = ["logger=none", "runtime.progress=off", "runtime.threads=1"]


def _script(name: str) -> list[str]:
    """The installed console script beside this interpreter, else its module (an old install)."""
    exe = Path(sys.executable).with_name(name)
    module = {"rnnsweep-predict": "rnnsweep.predict_cli", "rnnsweep-evaluate": "rnnsweep.evaluation"}[name]
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", module]


@pytest.fixture(scope="module")
def ag_run(tmp_path_factory):
    """A run on real AG News text, 2 epochs: (record, store, base directory)."""
    base = tmp_path_factory.mktemp("ag")
    store = base / "store"
    rec = api.train(*AG_DATA, *FAST, "train.epochs=2", f"ledger.store={store}", base_dir=base)
    assert rec["status"] == "completed"
    return rec, store, base


@pytest.fixture(scope="module")
def test_split(ag_run):
    """The run's test texts and labels, by the data pipeline's own source and splitting."""
    rec, _, base = ag_run
    settings = config.validate(api.compose([*AG_DATA, *FAST]))
    source = builders.data_source(settings.data, base, builders.cache_dir(settings.runtime, base))
    texts, labels = split_texts(source.read(), builders.split_options(settings.data))["test"]
    assert len(texts) == rec["data"]["test"]
    return texts, labels


def _cached(rec: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    cache = Path(rec["data"]["cache"])
    return np.load(cache / f"{split}.ids.npy"), np.load(cache / f"{split}.offsets.npy")


def test_the_run_is_encoded_exactly_as_the_pipeline_encoded_it(ag_run, test_split):
    rec, store, _ = ag_run
    clf = predict.load(rec["id"], store)
    encoded = clf.encode(test_split[0])
    ids, offsets = _cached(rec, "test")
    assert np.array_equal(encoded.ids, ids) and np.array_equal(encoded.offsets, offsets)
    assert clf.classes == AG_CLASSES and clf.id == rec["id"] and clf.record["id"] == rec["id"]
    assert clf.config["data"]["name"] == "csv"


def test_predictions_in_this_process_reproduce_the_records_test_accuracy(ag_run, test_split):
    rec, store, _ = ag_run
    texts, labels = test_split
    clf = predict.load(rec["id"], store)
    predicted = clf.predict(texts)
    acc = sum(p == AG_CLASSES[y] for p, y in zip(predicted, labels)) / len(texts)
    assert acc == rec["metrics"]["test/acc"]
    proba = clf.predict_proba(texts)
    assert proba.shape == (len(texts), 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert predicted == [AG_CLASSES[i] for i in proba.argmax(axis=1)]
    # In any order, alone or in company, a text gets the same class.
    assert clf.predict(texts[::-1]) == predicted[::-1]
    assert [clf.predict([t])[0] for t in texts[:5]] == predicted[:5]


def test_torchs_layers_compute_the_same_function(ag_run, test_split):
    rec, store, _ = ag_run
    texts = test_split[0]
    compiled = predict.load(rec["id"], store, compiled_rnn=True).predict_proba(texts)
    torch_layers = predict.load(rec["id"], store, compiled_rnn=False).predict_proba(texts)
    np.testing.assert_allclose(compiled, torch_layers, rtol=0, atol=1e-5)


def test_unknown_words_are_unk_and_a_text_without_tokens_is_one_unk(ag_run):
    rec, store, _ = ag_run
    clf = predict.load(rec["id"], store)
    vocab = json.loads((clf.directory / "vocab.json").read_text())
    known = vocab[2]
    encoded = clf.encode([f"zzqxv {known} blorfle", "", ";:"])
    rows = [encoded.ids[a:b].tolist() for a, b in zip(encoded.offsets[:-1], encoded.offsets[1:])]
    assert rows == [[UNK_ID, 2, UNK_ID], [UNK_ID], [UNK_ID]]
    assert len(clf.predict(["", ";:", "zzqxv"])) == 3 and clf.predict([]) == []
    assert clf.predict_proba([]).shape == (0, 4)
    with pytest.raises(TypeError, match="not one string"):
        clf.predict("a single text")


def test_a_run_is_found_by_id_prefix_entry_job_and_model_directory(ag_run, tmp_path, monkeypatch):
    rec, store, base = ag_run
    entry = store / rec["id"]
    job_dirs = [p.parent for p in (base / "outputs" / "run").rglob("job.json")]
    assert job_dirs
    for run in (rec["id"], rec["id"][:6], entry, entry / "model", entry / "metrics.json", job_dirs[0]):
        clf = predict.load(run, store)
        assert clf.directory == (entry / "model").absolute() and clf.id == rec["id"], run
    monkeypatch.chdir(base)  # the default store: outputs/store under the current directory
    (base / "outputs" / "store").mkdir(exist_ok=True)
    with pytest.raises(predict.LoadError, match="no run with that id"):
        predict.load(rec["id"][:6])
    assert predict.load(rec["id"][:6], store=store).id == rec["id"]


def _one_line(ex: pytest.ExceptionInfo) -> str:
    message = str(ex.value)
    assert "\n" not in message
    return message


def test_no_such_run_an_ambiguous_prefix_and_runs_without_a_model_are_one_line_errors(ag_run, tmp_path):
    rec, store, _ = ag_run
    with pytest.raises(predict.LoadError) as ex:
        predict.load("0000ffff", store)
    assert "0000ffff" in _one_line(ex) and str(store) in str(ex.value)
    fake = tmp_path / "store"
    for name in ("abc123", "abc456"):
        (fake / name).mkdir(parents=True)
    with pytest.raises(predict.LoadError) as ex:
        predict.load("abc", fake)
    assert "ambiguous" in _one_line(ex) and "abc123, abc456" in str(ex.value)
    with pytest.raises(predict.LoadError, match="no run store"):
        predict.load("abc", tmp_path / "nowhere")
    with pytest.raises(predict.LoadError, match="no such directory"):
        predict.load(tmp_path / "missing" / "run")

    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "metrics.json").write_text(json.dumps({"id": "f00", "status": "failed", "model": None}))
    with pytest.raises(predict.LoadError) as ex:
        predict.load(failed)
    assert "is failed" in _one_line(ex) and str(failed) in str(ex.value)
    with pytest.raises(predict.LoadError, match="a run store"):
        predict.load(store)
    with pytest.raises(predict.LoadError, match="no model here"):
        predict.load(tmp_path)


def test_a_run_trained_without_keeping_its_model_says_how_to_get_one(tmp_path):
    rec = api.train(*TINY, "ledger.keep_model=false", f"ledger.store={tmp_path / 'store'}", base_dir=tmp_path)
    assert rec["status"] == "completed" and rec["model"] is None
    with pytest.raises(predict.LoadError) as ex:
        predict.load(rec["id"], tmp_path / "store")
    assert "ledger.keep_model=false" in _one_line(ex) and "ledger.keep_model=true ledger.force=true" in str(ex.value)


@pytest.mark.parametrize("tokenizer", ["wordpiece", "bpe"])
def test_subword_runs_encode_new_text_as_the_pipeline_did(tmp_path, tokenizer):
    rec = api.train(*TINY, f"tokenizer={tokenizer}", "tokenizer.max_vocab=300", "tokenizer.min_freq=1",
                    f"ledger.store={tmp_path / 'store'}", base_dir=tmp_path)
    settings = config.validate(api.compose(TINY))
    source = builders.data_source(settings.data, tmp_path, builders.cache_dir(settings.runtime, tmp_path))
    texts, labels = split_texts(source.read(), builders.split_options(settings.data))["test"]
    clf = predict.load(rec["id"], tmp_path / "store")
    encoded = clf.encode(texts)
    ids, offsets = _cached(rec, "test")
    assert np.array_equal(encoded.ids, ids) and np.array_equal(encoded.offsets, offsets)
    assert clf.score(texts, labels)["acc"] == rec["metrics"]["test/acc"]
    assert clf.encode([""]).ids.tolist() == [UNK_ID]


def test_evaluate_on_the_runs_own_data_reproduces_its_test_metrics_and_writes_a_record(ag_run, tmp_path):
    rec, store, base = ag_run
    for overrides in ([], AG_DATA):  # the run's own data config, or the same data named again
        ev = evaluation.evaluate_run(rec["id"], overrides, store=store, out=tmp_path / "ev", base_dir=base)
        m = rec["metrics"]
        assert (ev["metrics"]["acc"], ev["metrics"]["macro_f1"], ev["metrics"]["loss"]) == \
               (m["test/acc"], m["test/macro_f1"], m["test/loss"])
        assert ev["data"]["same_as_run"] and ev["data"]["fingerprint"] == rec["data"]["fingerprint"]
        assert ev["data"]["n"] == rec["data"]["test"] == sum(ev["data"]["class_counts"].values())
        assert set(ev["data"]["class_counts"]) == set(AG_CLASSES)
    written = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert written["kind"] == "evaluation" and written["run"]["id"] == rec["id"] and written["env"]["rnnsweep"]
    assert written["data"]["split"] == "test" and written["metrics"]["n"] == rec["data"]["test"]


def test_evaluate_maps_class_names_and_refuses_labels_the_run_does_not_know(ag_run, tmp_path):
    rec, store, base = ag_run
    # The same rows with the classes named in another order: the names, not the indices, count.
    shuffled = ["World", "Business", "Sports", "Sci/Tech"]
    reordered = [o for o in AG_DATA if not o.startswith("data.classes")] + [f"data.classes=[{','.join(shuffled)}]"]
    ev = evaluation.evaluate_run(rec["id"], reordered, store=store, out=tmp_path / "a", base_dir=base)
    assert ev["data"]["class_mapping"]["Business"] == "Business"
    assert not ev["data"]["same_as_run"]  # another labelling: another fingerprint
    plain = [o for o in AG_DATA if not o.startswith("data.classes")]  # classes '0'..'3'
    with pytest.raises(DataError) as ex:
        evaluation.evaluate_run(rec["id"], plain, store=store, out=tmp_path / "b", base_dir=base)
    assert "not among run" in _one_line(ex) and "Sci/Tech" in str(ex.value)
    with pytest.raises(config.ConfigError, match="only data overrides"):
        evaluation.evaluate_run(rec["id"], ["model=gru"], store=store, out=tmp_path / "c", base_dir=base)
    everything = evaluation.evaluate_run(rec["id"], [], split="all", store=store, out=tmp_path / "d", base_dir=base)
    assert everything["data"]["n"] == 400


def _main(module, argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ex:
        module.main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return ex.value.code or 0, out.out, out.err


def test_the_predict_command_reads_files_and_writes_csv_json_and_jsonl(ag_run, tmp_path, capsys):
    rec, store, _ = ag_run
    headlines = tmp_path / "headlines.txt"
    headlines.write_text("Stocks rally as oil falls\n\nLate goal sinks the champions\n")
    code, out, err = _main(predict_cli, [rec["id"][:8], "--store", str(store), "--file", str(headlines)], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "text,label" and len(lines) == 3 and lines[1].startswith("Stocks rally as oil falls,")

    table = tmp_path / "news.csv"
    table.write_text('id,title,body\n1,"Stocks rally","as oil falls"\n2,"Late goal","sinks the champions"\n')
    out_file = tmp_path / "p.json"
    code, out, err = _main(predict_cli, [rec["id"], "--store", str(store), "--file", str(table), "--text-column", "title",
                                     "--text-column", "body", "--proba", "--format", "json", "--output",
                                     str(out_file)], capsys)
    assert code == 0 and out == ""
    rows = json.loads(out_file.read_text())
    assert [r["text"] for r in rows] == ["Stocks rally as oil falls", "Late goal sinks the champions"]
    assert all(r["label"] in AG_CLASSES and abs(sum(r[f"p_{c}"] for c in AG_CLASSES) - 1) < 1e-9 for r in rows)

    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text(json.dumps({"text": "Stocks rally as oil falls"}) + "\n")
    code, out, _ = _main(predict_cli, [rec["id"], "--store", str(store), "--file", str(jsonl), "--format", "jsonl"], capsys)
    assert code == 0 and json.loads(out)["text"] == "Stocks rally as oil falls"

    # Options anywhere; texts as arguments.
    code, out, _ = _main(predict_cli, ["--proba", rec["id"], "--store", str(store), "Stocks rally", "--format", "csv",
                                   "Late goal"], capsys)
    assert code == 0 and out.splitlines()[0] == "text,label," + ",".join(f"p_{c}" for c in AG_CLASSES)
    assert [line.split(",")[0] for line in out.splitlines()[1:]] == ["Stocks rally", "Late goal"]


@pytest.mark.parametrize("argv, expected", [
    (["0000ffff", "x"], "no run with that id"),
    (["{run}", "x", "--file", "f.txt"], "not both"),
    (["{run}", "--file", "{missing}"], "No such file"),
    (["{run}", "--file", "{table}", "--text-column", "body"], "no column 'body'"),
    (["{run}", "x", "--format", "xml"], "invalid choice"),
    (["{run}", "x", "--batch-size", "0"], "at least 1"),
    (["{run}", "--file", "{blank}"], "no texts to classify: the file holds none"),
])
def test_the_predict_commands_errors_are_one_line_and_exit_2(ag_run, tmp_path, capsys, argv, expected):
    rec, store, _ = ag_run
    table = tmp_path / "t.csv"
    table.write_text("text,label\nhello,1\n")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n")
    argv = [a.format(run=rec["id"], missing=tmp_path / "missing.txt", table=table, blank=blank) for a in argv]
    code, out, err = _main(predict_cli, [*argv, "--store", str(store)], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("rnnsweep-predict: error: ") and expected in err, err


@pytest.mark.slow
def test_a_fresh_process_and_the_command_predict_the_test_split_with_the_records_accuracy(ag_run, test_split,
                                                                                          tmp_path):
    rec, store, _ = ag_run
    texts, labels = test_split
    inputs = tmp_path / "test.jsonl"
    inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    truth = [AG_CLASSES[y] for y in labels]

    script = ("import json, sys, rnnsweep\n"
              "clf = rnnsweep.load(sys.argv[1], store=sys.argv[2])\n"
              "texts = [json.loads(line)['text'] for line in open(sys.argv[3])]\n"
              "print(json.dumps(clf.predict(texts)))\n")
    res = subprocess.run([sys.executable, "-c", script, rec["id"][:7], str(store), str(inputs)], cwd=tmp_path,
                         env=clean_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    predicted = json.loads(res.stdout)
    assert sum(p == t for p, t in zip(predicted, truth)) / len(truth) == rec["metrics"]["test/acc"]

    res = subprocess.run([*_script("rnnsweep-predict"), rec["id"], "--store", str(store), "--file", str(inputs),
                          "--format", "jsonl"], cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["text"] for r in rows] == texts and [r["label"] for r in rows] == predicted

    res = subprocess.run([*_script("rnnsweep-predict"), "0000ffff", "x", "--store", str(store)], cwd=tmp_path,
                         env=clean_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


@pytest.mark.slow
def test_the_evaluate_command_scores_a_run_and_writes_its_record(ag_run, tmp_path):
    rec, store, base = ag_run
    res = subprocess.run([*_script("rnnsweep-evaluate"), rec["id"][:8], "--store", str(store), *AG_DATA],
                         cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"acc {rec['metrics']['test/acc']:.4f}" in res.stdout
    [written] = (tmp_path / "outputs" / "evaluate").glob("*/evaluation.json")
    assert json.loads(written.read_text())["metrics"]["acc"] == rec["metrics"]["test/acc"]
    res = subprocess.run([*_script("rnnsweep-evaluate"), rec["id"], "--store", str(store), "model=gru"],
                         cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "only data overrides" in res.stderr


def test_the_classifier_says_what_it_expects_of_texts_and_labels(ag_run):
    rec, store, _ = ag_run
    clf = predict.load(rec["id"], store)
    for texts, message in (([None], "every text must be a str, not NoneType"), ("one text", "not one string")):
        with pytest.raises(TypeError, match=message):
            clf.predict(texts)
    with pytest.raises(ValueError, match="1 labels for 2 texts"):
        clf.score(["a", "b"], [0])
    with pytest.raises(ValueError, match="neither one of the run's classes"):
        clf.score(["a", "b"], [0, 9])
    by_name = clf.score(["a", "b"], [clf.classes[1], clf.classes[2]])
    assert by_name == clf.score(["a", "b"], [1, 2])


def test_the_predict_command_answers_help_and_bad_arguments_without_loading_torch():
    """--help and argument errors come before torch is imported (2 s of a cold start)."""
    code = ("import sys, contextlib, io, rnnsweep.predict_cli as cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: cli.main(['--help'])\n"
            "    except SystemExit: pass\n"
            "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False", res.stderr
