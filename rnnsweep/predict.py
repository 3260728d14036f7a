"""A completed run's exported model -> predictions on new texts: `load(run)` (and the command
`rnnsweep-predict`, in predict_cli).

    clf = load("outputs/store/1a2b3c4d5e6f7a8b")    # a store entry, its model/, a sweep's job
    clf = load("1a2b")                              # or a run id (a unique prefix will do)
    clf.predict(["Stocks rally as oil falls"])      # -> ["Business"]
    clf.predict_proba(texts)                        # (n, K), columns in clf.classes order

The network is rebuilt from model.json's architecture and weights.npz (read without pickle); new
texts are encoded with the run's own vocabulary by rnnsweep.data.tokenization, the code that
encoded its training data, and cut into batches as the run's evaluation cut its test split. So
the run's test texts get exactly the logits, and the accuracy, its record reports.

No Hydra here: torch, numpy and the model directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from . import __version__
from .data import batches
from .data.encoded import EncodedTexts
from .data.tokenization import load_encoder
from .export import FORMAT
from .model import TextClassifier
from .store import RECORD, STORE_FILE
from .sweep import JOB_FILE

DEFAULT_STORE = "outputs/store"
MODEL_FILE = "model.json"


class LoadError(ValueError):
    """A run that cannot be loaded, in one line: which path or id, and what to do about it."""


# ---------------------------------------------------------------------------------------------
# Which model directory a RUN argument means


def _json(path: Path) -> Any:
    """A JSON file's content; None when it is missing or unreadable (a damaged record is no record)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _record_at(directory: Path) -> dict[str, Any] | None:
    record = _json(directory / RECORD)
    return record if isinstance(record, dict) else None


def _store_entry(run_id: str, store: str | Path | None) -> Path:
    """The store entry a run id, or a prefix of exactly one, names (like git's short hashes)."""
    root = Path(store if store is not None else DEFAULT_STORE).expanduser()
    if not root.is_dir():
        raise LoadError(f"{run_id}: no such directory, and no run store at {root} to look it up in as a run id "
                        "(give the store: --store DIR, or store=...)")
    if (root / run_id).is_dir():
        return root / run_id
    matches = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(run_id)
                     and not p.name.startswith("."))
    if not matches:
        raise LoadError(f"{run_id}: no such directory, and no run with that id in the store {root}")
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (f", ... ({len(matches)} in all)" if len(matches) > 5 else "")
        raise LoadError(f"run id prefix '{run_id}' is ambiguous in the store {root}: {shown}; give more characters")
    return root / matches[0]


def _no_model(path: Path, record: dict[str, Any] | None, job: dict[str, Any] | None) -> LoadError:
    """Why a run's directory has no model, and what to do."""
    run_id = (record or {}).get("id") or (job or {}).get("id") or path.name
    status = (record or {}).get("status") or (job or {}).get("status") or (job or {}).get("outcome")
    if status != "completed":
        why = f": {job['reason']}" if job and job.get("reason") else ""
        advice = {"diverged": "its loss exploded and it kept no model; the same config diverges again, so train "
                              "with a lower optimizer.lr",
                  "running": "wait for it to finish",
                  "interrupted": "run the same command again to resume it"}.get(str(status), "train it to the end first")
        return LoadError(f"{path}: run {run_id} is {status}{why}; only a completed run leaves a model ({advice.strip()})")
    model = (record or {}).get("model")
    if record is not None and not model:
        return LoadError(f"{path}: run {run_id} was trained with ledger.keep_model=false and has no model; "
                         "train it again with ledger.keep_model=true ledger.force=true")
    where = model.get("dir") if isinstance(model, dict) else None
    return LoadError(f"{path}: run {run_id}'s model directory {where or '(unknown)'} is missing "
                     "(moved or deleted? load the model/ directory itself)")


def _kind_of_directory(path: Path) -> str | None:
    """'a run store' or 'a sweep directory' when `path` holds many runs rather than being one."""
    if (path / STORE_FILE).is_file() or any((p / RECORD).is_file() and (p / "model").is_dir()
                                            for p in path.iterdir() if p.is_dir()):
        return "a run store: name one of its runs by id (RUN=ID with --store DIR, or load(ID, store=DIR))"
    if (path / "multirun.yaml").is_file() or any((p / JOB_FILE).is_file() for p in path.iterdir() if p.is_dir()):
        return f"a sweep directory: name one of its jobs (e.g. {path / '0'})"
    return None


def _from_directory(path: Path) -> tuple[Path, dict[str, Any] | None]:
    if (path / MODEL_FILE).is_file():  # the model directory itself: <store>/<id>/model
        return path, _record_at(path.parent)
    if (path / "model" / MODEL_FILE).is_file():  # a store entry (or a job directory of the same shape)
        return path / "model", _record_at(path)
    record, job = _record_at(path), _json(path / JOB_FILE)
    job = job if isinstance(job, dict) else None
    if record is None and job is None:
        many = _kind_of_directory(path)
        raise LoadError(f"{path}: {many}" if many else
                        f"{path}: no model here ({MODEL_FILE}), and not a run's directory (no {RECORD} or {JOB_FILE})")
    # A sweep's job directory: its record (a copy) and job.json point to the store entry.
    candidates = []
    if record is not None and isinstance(record.get("model"), dict) and record["model"].get("dir"):
        candidates.append(Path(record["model"]["dir"]))
    if job is not None and job.get("store_dir"):
        candidates.append(Path(job["store_dir"]) / "model")
    for candidate in candidates:
        if (candidate / MODEL_FILE).is_file():
            return candidate, record or _record_at(candidate.parent)
    raise _no_model(path, record, job)


def resolve(run: str | os.PathLike, store: str | Path | None = None) -> tuple[Path, dict[str, Any] | None]:
    """(model directory, the run's result record if there is one) for `run`: a model directory, a
    store entry, a sweep's job directory or a single run's directory (job.json / metrics.json),
    or a run id looked up in `store` (default outputs/store under the current directory)."""
    text = os.fspath(run)
    if not text:
        raise LoadError("no run given: a run id, a store entry, a job directory or a model directory")
    path = Path(text).expanduser()
    if path.is_file() and path.name in (RECORD, JOB_FILE, MODEL_FILE):
        path = path.parent
    if path.is_dir():
        return _from_directory(path)
    if path.exists():
        raise LoadError(f"{path}: a file; give the run's directory or its id")
    if os.sep in text or text.startswith("."):
        raise LoadError(f"{path}: no such directory")
    return _from_directory(_store_entry(text, store))


# ---------------------------------------------------------------------------------------------
# The classifier


def _as_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts: a list of strings, not one string (wrap it: [text])")
    texts = list(texts)
    for bad in texts:
        if not isinstance(bad, str):
            raise TypeError(f"texts: every text must be a str, not {type(bad).__name__} ({bad!r})")
    return texts


@dataclass
class Classifier:
    """A trained run, ready to classify texts on `device`.

    Texts are encoded with the run's vocabulary: words it never kept are <unk>, and a text with
    no token at all (empty, or only characters the tokenizer drops, such as ';') is one <unk>,
    exactly as the data pipeline encodes such a row, so every text gets a prediction. (Training
    files drop empty texts by default, data.drop_empty=true; here there is nothing to drop to.)

    Batches are cut as the run's evaluation cut its splits: `batch_size` texts (the run's
    train.eval_batch_size), sorted by length when the run bucketed its batches. With the default
    poolings padding never changes a logit; the lesson's `seed_mean`/`seed_hlast` read padding,
    and then a text's logits depend on the batch it lands in, as they did in the run.
    """

    model: TextClassifier
    classes: list[str]
    config: dict[str, Any]  # the run's resolved config (model.json's copy of it)
    record: dict[str, Any] | None  # the run's result record (metrics.json), when it is beside the model
    directory: Path  # the model directory
    tokenizer: dict[str, Any]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 512
    bucket: bool = True  # sort by length before cutting batches (the run's batching.bucket)
    _encoder: Any = field(default=None, repr=False)

    @property
    def id(self) -> str | None:
        """The run id: the record's, else the store entry's name the model directory sits in."""
        if self.record and self.record.get("id"):
            return str(self.record["id"])
        return self.directory.parent.name if self.directory.name == "model" else None

    def encode(self, texts: Sequence[str], labels: Sequence[int] | None = None) -> EncodedTexts:
        """Token ids exactly as the run's data pipeline made them (labels: class indices, or 0s)."""
        texts = _as_texts(texts)
        ids, offsets = self._encoder(texts)
        y = np.zeros(len(texts), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        return EncodedTexts(ids, offsets, y)

    def batches(self, data: EncodedTexts) -> Iterator[tuple[np.ndarray, batches.Batch]]:
        """(row indices, batch) in the order the run's evaluation would cut them from `data`."""
        whole = batches.num_batches(data, self.batch_size) if self.bucket else None
        for rows, batch in batches.iterate_with_rows(data, self.batch_size, shuffle=False, bucket_pool=whole or None):
            yield rows, batch.to(self.device)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """(n, K) float32 logits, rows in the order of `texts`."""
        data = self.encode(texts)
        out = np.empty((len(data), len(self.classes)), dtype=np.float32)
        self.model.eval()
        with torch.inference_mode():
            for rows, batch in self.batches(data):
                out[rows] = self.model(batch.ids, batch.lengths).float().cpu().numpy()
        return out

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n, K) class probabilities (float64; columns in `classes` order; each row sums to 1)."""
        logits = torch.from_numpy(self.logits(texts)).double()
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most probable class name of each text."""
        return [self.classes[i] for i in self.logits(texts).argmax(axis=1)]

    def _label_indices(self, labels: Sequence[int | str], n: int) -> list[int]:
        """Labels as indices into `classes`, from indices or class names; a ValueError that says
        what is expected otherwise."""
        if isinstance(labels, (str, bytes)):
            raise ValueError("labels: a list, one per text, not one string")
        labels = list(labels)
        if len(labels) != n:
            raise ValueError(f"labels: {len(labels)} labels for {n} texts; give one label per text")
        out = []
        for label in labels:
            if isinstance(label, str) and label in self.classes:
                out.append(self.classes.index(label))
            elif isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < len(self.classes):
                out.append(int(label))
            else:
                raise ValueError(f"labels: {label!r} is neither one of the run's classes ({', '.join(self.classes)}) "
                                 f"nor an index 0..{len(self.classes) - 1}")
        return out

    def score(self, texts: Sequence[str], labels: Sequence[int | str]) -> dict[str, float]:
        """acc, macro_f1 and loss on labelled texts (labels: class names, or indices into `classes`), computed by
        the training loop's own `evaluate` on the batches the run's evaluation would cut. The run's
        own test split gives its record's numbers exactly when the run was tested on this kind of
        device without mixed precision (runtime.amp=false): CPU runs, for instance."""
        from .loop import evaluate  # the training loop's module: only scoring needs it

        data = self.encode(texts, self._label_indices(labels, len(_as_texts(texts))))
        return evaluate(self.model, (b for _, b in self.batches(data)), len(self.classes), self.device)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LoadError(f"device={name}: no CUDA device is visible here; use the CPU (--device cpu, or "
                        "device='cpu' from Python)")
    return torch.device(name)


def _build_model(model_dir: Path, meta: dict[str, Any], compiled_rnn: bool) -> TextClassifier:
    shape = dict(meta["architecture"])
    # Building the network draws its random initial weights: keep the caller's random stream as it was.
    with torch.random.fork_rng(devices=[]):
        model = TextClassifier(shape.pop("vocab_size"), shape.pop("num_classes"), **shape, compiled_rnn=compiled_rnn)
    try:
        with np.load(model_dir / "weights.npz", allow_pickle=False) as weights:
            state = {name: torch.from_numpy(weights[name]) for name in weights.files}
    except (OSError, ValueError) as ex:
        raise LoadError(f"{model_dir / 'weights.npz'}: cannot be read ({ex})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as ex:
        first = str(ex).strip().splitlines()
        raise LoadError(f"{model_dir / 'weights.npz'}: does not fit the architecture in {MODEL_FILE} "
                        f"({' '.join(line.strip() for line in first[:2])})") from None
    return model.eval()


def load(run: str | os.PathLike, store: str | Path | None = None, *, device: str = "cpu",
         compiled_rnn: bool | None = None, batch_size: int | None = None) -> Classifier:
    """A completed run's model, ready to predict.

    `run`: a model directory (<store>/<id>/model), a store entry (<store>/<id>), a sweep's job
    directory or a single run's directory (outputs/run/<time>), or a run id, or a prefix of exactly
    one, looked up in `store` (default: outputs/store under the current directory).
    `compiled_rnn`: rnnsweep's compiled CPU layers (True) or torch's (False); None: as the run
    trained. Both compute the same function; they round differently in the last bits, so the
    run's own setting is what reproduces its numbers exactly.
    `batch_size`: texts per batch; None: the run's train.eval_batch_size.
    Raises LoadError (a ValueError) in one line: no such run, an ambiguous prefix, a run without
    a model (not completed, or trained with ledger.keep_model=false).
    """
    model_dir, record = resolve(run, store)
    model_dir = model_dir.absolute()  # the record and the Classifier name it wherever the caller moves to
    meta = _json(model_dir / MODEL_FILE)
    if not isinstance(meta, dict) or not {"architecture", "classes", "tokenizer"} <= meta.keys():
        raise LoadError(f"{model_dir / MODEL_FILE}: not a model description rnnsweep wrote")
    if meta.get("format") != FORMAT:
        raise LoadError(f"{model_dir / MODEL_FILE}: model format {meta.get('format')!r}; this rnnsweep "
                        f"({__version__}) reads format {FORMAT}")
    config = meta.get("config") or {}
    runtime, train, batching = (config.get(k) or {} for k in ("runtime", "train", "batching"))
    compiled = runtime.get("compiled_rnn", True) if compiled_rnn is None else compiled_rnn
    where = _device(device)
    tokenizer = dict(meta["tokenizer"])
    try:
        encoder = load_encoder(model_dir, tokenizer.get("name", "basic_english"))
    except (OSError, ValueError) as ex:
        raise LoadError(f"{model_dir}: the run's vocabulary cannot be read ({ex})") from None
    model = _build_model(model_dir, meta, compiled).to(where)
    size = batch_size or int(train.get("eval_batch_size") or 512)
    if size < 1:
        raise LoadError(f"batch_size={size}: must be at least 1")
    return Classifier(model=model, classes=[str(c) for c in meta["classes"]], config=config, record=record,
                      directory=model_dir, tokenizer=tokenizer, device=where, batch_size=size,
                      bucket=bool(batching.get("bucket", True)), _encoder=encoder)
