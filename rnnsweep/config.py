"""The experiment space as typed schemas, and the checks a composed config must pass.

Values live in `conf/` (YAML), and only there: no field below has a default (OmegaConf reads a
field without one as missing), so the Python side and the command line cannot disagree about one,
and a field conf/ leaves unset is an error that names it. Types and ranges live here. Hydra checks types while it composes (the root schema is
registered in its ConfigStore); `validate` adds what composing cannot see —
keys added with `+`, the options of groups whose keys differ per option (optimizer, data), value
ranges and combinations that would silently do nothing — and returns plain dataclasses, so
nothing downstream of the entrypoint needs OmegaConf.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from .tracking import wandb_mode_env_problem


class ConfigError(ValueError):
    """A composed config that cannot be run; the message names the key and what is expected."""


class Choice(Enum):
    """A value from a fixed set, written as itself: `${model.arch}` in a config reads `gru`."""

    def __str__(self) -> str:
        return self.value


def _choices(name: str, values: str) -> type[Enum]:
    """A Choice whose members are named by their values, e.g. _choices("Device", "auto cpu cuda")."""
    return Choice(name, [(v, v) for v in values.split()], module=__name__, qualname=name)


Arch = _choices("Arch", "bow rnn lstm gru")
# last: the state after the last real token (forward) / the first (backward); mean, max,
# attention (learned weights, as in hierarchical attention networks): over the real positions only;
# seed_mean: the lesson's RNN, the mean over all positions, padding included; seed_hlast: the
# lesson's LSTM, h_n[-1], whatever it read last.
Pooling = _choices("Pooling", "last mean max attention seed_mean seed_hlast")
# default: torch's N(0, 1); shifted_normal: the lesson's LSTM, N(0, 1) - 0.5; pretrained: default,
# then the rows of the vocabulary's words found in model.vectors (a word2vec/GloVe/fastText text file).
EmbedInit = _choices("EmbedInit", "default shifted_normal pretrained")
BatchMode = _choices("BatchMode", "padded packed")
OptimizerName = _choices("OptimizerName", "adam adamw sgd sparse_adam")
# How the embedding's gradient reaches Adam. auto: deferred on the CPU (scattered for Adam with L2
# weight decay), dense elsewhere; dense: torch's dense gradient, a fresh table-sized tensor every
# step; scattered: the sparse gradient scattered into one persistent dense buffer (same values);
# deferred: sparse gradient, an unused row's Adam steps replayed when it is next read.
EmbeddingGrad = _choices("EmbeddingGrad", "auto dense scattered deferred")
# auto: fused where torch has a fused kernel for the device, else foreach. The same algorithm.
AdamImpl = _choices("AdamImpl", "auto fused foreach for_loop")
SyntheticVariant = _choices("SyntheticVariant", "order long_range")
TokenizerName = _choices("TokenizerName", "basic_english wordpiece bpe")
DataFormat = _choices("DataFormat", "auto csv tsv jsonl")  # auto: from the file name
Device = _choices("Device", "auto cpu cuda")
Progress = _choices("Progress", "auto on off")  # auto: a bar only when stderr is a terminal
LoggerBackend = _choices("LoggerBackend", "wandb none")
# auto: WANDB_MODE if set, else online with an API key, else offline.
WandbMode = _choices("WandbMode", "auto online offline disabled")
# last: the test metrics of the last epoch trained; best_val: those of the epoch with the best
# validation accuracy (its weights are the run's model).
Select = _choices("Select", "last best_val")
SchedulerName = _choices("SchedulerName", "constant cosine linear_warmup plateau")


# Bounds beyond which a value fails (or hangs) at run time rather than trains.
MAX_THREADS = 1024
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
MAX_SYNTHETIC_ROWS = 2_000_000

SEED_POOLINGS = (Pooling.seed_mean, Pooling.seed_hlast)


@dataclass
class ModelConfig:
    arch: Arch
    embed_dim: int
    hidden_dim: int
    pooling: Pooling
    embed_init: EmbedInit
    # Pretrained word vectors (embed_init=pretrained): a text file of "word v1 v2 ...", optionally
    # gzipped; relative paths are taken from the directory rnnsweep runs in.
    vectors: Optional[str]
    freeze_embedding: bool  # the embedding table is not trained (requires_grad=False)


@dataclass
class BatchingConfig:
    mode: BatchMode
    # On the CPU, packed batches run the padded kernel, read at each sequence's own end: the same
    # numbers as pack_padded_sequence, whose CPU path is a slow loop of single steps. True forces
    # PyTorch's packed path on the CPU too. CUDA always uses cuDNN's packed kernel.
    native_packing: bool
    # Length-bucketed batches: shuffle, sort pools of `bucket_pool` batches by length, cut them
    # into batches and shuffle the batches; far less padding (and packing work) per batch.
    bucket: bool
    bucket_pool: int


@dataclass
class TopologyConfig:
    num_layers: int
    bidirectional: bool
    dropout: float


@dataclass
class AdamConfig:
    name: OptimizerName
    lr: float
    betas: List[float]
    eps: float
    weight_decay: float
    impl: AdamImpl  # the same algorithm either way; fused is fastest on CPU and GPU
    embedding_grad: EmbeddingGrad  # how the embedding's gradient reaches Adam


@dataclass
class AdamWConfig(AdamConfig):
    """Adam with decoupled weight decay: the same keys."""


@dataclass
class SGDConfig:
    name: OptimizerName
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float


@dataclass
class SparseAdamConfig:
    """Lazy Adam: sparse embedding gradients, and moments updated only for the rows a batch uses.

    Not identical to Adam: a row's moments do not decay while it is absent from batches. The rest
    of the model uses (dense, fused) Adam with the same lr, betas and eps."""

    name: OptimizerName
    lr: float
    betas: List[float]
    eps: float


@dataclass
class SyntheticDataConfig:
    name: str
    variant: SyntheticVariant
    train_size: int
    test_size: int
    val_fraction: float
    # The data seed is separate from the run seed: seed repeats vary initialisation and batch
    # order over the same data, which is what "mean over seeds" should measure.
    seed: int


@dataclass
class AgNewsDataConfig:
    name: str
    root: Optional[str]  # null: <runtime.cache_dir>/ag_news
    download: bool
    clean: bool  # undo the dataset's escapes ('\\' line breaks, '#36;' entities)
    train_url: str
    test_url: str
    train_md5: str
    test_md5: str
    val_fraction: float
    limit: Optional[int]
    drop_empty: bool
    seed: int


@dataclass
class LabelledTextsConfig:
    """What the user's own files and Hugging Face datasets share: columns, splitting, cleaning."""

    text_columns: List[str]  # several are joined by a space
    label_column: str
    val_fraction: float
    test_fraction: float  # of train, as the test split, when there is no test split
    limit: Optional[int]
    drop_empty: bool
    seed: int


@dataclass
class TableDataConfig(LabelledTextsConfig):
    name: str
    train: str
    test: Optional[str]  # null: test_fraction of train is held out as the test split
    format: DataFormat
    header: bool  # without one, name columns by position: text_columns=[1,2] label_column=0
    label_offset: int  # integer labels: the value of the first class (1 for labels 1..K)
    classes: Optional[List[str]]  # class names in index order; null: taken from train


@dataclass
class HfDataConfig(LabelledTextsConfig):
    name: str
    dataset: str  # a hub name ("ag_news") or a local directory of files
    subset: Optional[str]
    revision: Optional[str]
    train_split: str
    test_split: Optional[str]  # null: test_fraction of train is held out


@dataclass
class TokenizerConfig:
    name: TokenizerName
    min_freq: int  # fewer occurrences in the training split: <unk> (subword: not merged)
    max_vocab: Optional[int]  # including <pad> and <unk>; subword tokenizers need one
    lowercase: bool  # subword tokenizers; basic_english always lowercases


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    eval_batch_size: int
    grad_clip: Optional[float]
    epoch_size: Optional[int]  # at most this many training examples per epoch (the lesson's epoch_size)
    select: Select  # which epoch's model and test metrics are the run's
    patience: Optional[int]  # stop after this many epochs without a better validation accuracy; null: never


@dataclass
class ConstantScheduleConfig:
    """The optimizer's learning rate throughout."""

    name: SchedulerName


@dataclass
class CosineScheduleConfig:
    """torch's CosineAnnealingLR over every optimizer step of the run (T_max = epochs x steps)."""

    name: SchedulerName
    eta_min: float  # the learning rate at the last step


@dataclass
class LinearWarmupScheduleConfig:
    """torch's SequentialLR of two LinearLRs, stepped per optimizer step: from start_factor x lr
    up to lr over warmup_steps, then linearly to end_factor x lr at the run's last step."""

    name: SchedulerName
    warmup_steps: int
    start_factor: float
    end_factor: float  # 1.0: constant after the warm-up


@dataclass
class PlateauScheduleConfig:
    """torch's ReduceLROnPlateau on the validation accuracy, stepped after each epoch."""

    name: SchedulerName
    factor: float  # the learning rate is multiplied by this ...
    patience: int  # ... after this many epochs without improvement
    threshold: float  # relative improvement that counts
    min_lr: float


@dataclass
class RuntimeConfig:
    device: Device
    threads: int  # 0: leave torch's default (all cores)
    # On the CPU, RNN, GRU and LSTM layers run rnnsweep's compiled kernels (rnnsweep/fast/,
    # PyTorch's arithmetic); false: PyTorch's own layers.
    compiled_rnn: bool
    progress: Progress
    cache_dir: Optional[str]  # encoded data and downloads; null: $RNNSWEEP_CACHE_DIR or ~/.cache/rnnsweep
    amp: bool  # mixed precision: bfloat16 autocast (float16 with loss scaling on GPUs without bf16)


@dataclass
class LoggerConfig:
    backend: LoggerBackend
    project: str
    entity: Optional[str]
    mode: WandbMode
    log_every: int  # optimizer steps between step-level metric logs
    log_model: bool  # upload each completed run's model directory to W&B as an artifact
    tags: List[str]


@dataclass
class LedgerConfig:
    store: str  # relative paths are taken from the directory rnnsweep runs in
    force: bool  # retrain even when the store holds a finished run of this identity
    plan: bool  # list what each job would do (train / resume / skip / invalid), train nothing
    fail_on_error: bool  # a sweep with a failed job exits non-zero
    keep_checkpoint: bool  # keep each finished run's last epoch checkpoint in the store
    busy_wait: float  # seconds a job waits for its run to finish in another process before calling it busy
    keep_model: bool  # a completed run leaves its model (weights, vocabulary, classes, config) in the store


@dataclass
class RootConfig:
    seed: int
    model: ModelConfig
    batching: BatchingConfig
    topology: TopologyConfig
    # Options of these groups differ in their keys: each is checked against the schema its
    # `name` selects (OPTIMIZERS, DATA_SOURCES) by `validate`.
    optimizer: Any
    data: Any
    scheduler: Any
    tokenizer: TokenizerConfig
    train: TrainConfig
    runtime: RuntimeConfig
    logger: LoggerConfig
    ledger: LedgerConfig




OPTIMIZERS = {"adam": AdamConfig, "adamw": AdamWConfig, "sgd": SGDConfig, "sparse_adam": SparseAdamConfig}
DATA_SOURCES = {
    "synthetic": SyntheticDataConfig,
    "ag_news": AgNewsDataConfig,
    "csv": TableDataConfig,
    "hf": HfDataConfig,
}
SCHEDULERS = {
    "constant": ConstantScheduleConfig,
    "cosine": CosineScheduleConfig,
    "linear_warmup": LinearWarmupScheduleConfig,
    "plateau": PlateauScheduleConfig,
}


def to_plain(value: Any) -> Any:
    """Dataclasses and enums -> JSON-ready dicts, lists and strings (for records and W&B)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def register_schemas() -> None:
    """Make the root schema visible to Hydra; conf/config.yaml names it in its defaults list."""
    ConfigStore.instance().store(name="rnnsweep_schema", node=RootConfig)


def _typed_option(node: Any, group: str, schemas: dict[str, type]) -> Any:
    """The group's options as the dataclass its `name` selects; type and key errors name the key."""
    name = node.get("name") if isinstance(node, DictConfig) else None
    if name not in schemas:
        raise ConfigError(f"{group}.name={name}: expected one of {', '.join(schemas)}")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schemas[name]), node))
    except MissingMandatoryValue as ex:
        key = f"{group}.{ex.full_key}"
        raise ConfigError(f"{key}: required, no default; set it on the command line ({key}=...)") from ex
    except OmegaConfBaseException as ex:
        key = f"{group}.{ex.full_key}" if getattr(ex, "full_key", None) else group
        raise ConfigError(f"{key}: {str(ex).splitlines()[0]}") from ex


def _reject_unknown_keys(node: DictConfig, schema: type, prefix: str) -> None:
    """Hydra lets `+key=value` add keys the schema does not have; refuse them by name."""
    fields = typing.get_type_hints(schema)
    for key in node.keys():
        if key not in fields:
            where = prefix.rstrip(".") or "the config"
            near = unknown_key_hint(f"{prefix}{key}", list_section=False)
            raise ConfigError(f"{prefix}{key}: not a key of {where} ({near + ' ' if near else ''}"
                              f"expected one of: {', '.join(fields)})")
        sub = fields[key]
        if dataclasses.is_dataclass(sub) and not OmegaConf.is_missing(node, key):
            _reject_unknown_keys(node[key], sub, f"{prefix}{key}.")


def _schema_keys(schema: type = RootConfig, prefix: str = "") -> tuple[list[str], dict[str, type | None]]:
    """The schema's dotted leaf keys, and its sections with their dataclass (None for optimizer and
    data, whose keys depend on the option chosen; their leaves are those of every option)."""
    unions = {"optimizer": OPTIMIZERS, "data": DATA_SOURCES, "scheduler": SCHEDULERS} if schema is RootConfig else {}
    leaves: list[str] = []
    sections: dict[str, type | None] = {}
    for name, hint in typing.get_type_hints(schema).items():
        options = list(unions[name].values()) if name in unions else [hint] if dataclasses.is_dataclass(hint) else []
        if not options:
            leaves.append(prefix + name)
            continue
        sections[prefix + name] = options[0] if len(options) == 1 else None
        for option in options:
            more_leaves, more_sections = _schema_keys(option, f"{prefix}{name}.")
            leaves += [k for k in more_leaves if k not in leaves]
            sections.update(more_sections)
    return leaves, sections


def fixed_choices() -> str:
    """One line per key whose value is one of a fixed set, with the set (for `rnnsweep --help`)."""
    lines = {}

    def walk(schema: type, prefix: str) -> None:
        unions = {"optimizer": OPTIMIZERS, "data": DATA_SOURCES, "scheduler": SCHEDULERS} if schema is RootConfig else {}
        for name, hint in typing.get_type_hints(schema).items():
            options = list(unions[name].values()) if name in unions else [hint] if dataclasses.is_dataclass(hint) else []
            for option in options:
                walk(option, f"{prefix}{name}.")
            if isinstance(hint, type) and issubclass(hint, Enum) and name != "name":
                lines[prefix + name] = ", ".join(e.value for e in hint)

    walk(RootConfig, "")
    return "\n".join(f"  {key}: {values}" for key, values in lines.items())


def unknown_key_hint(key: str, *, list_section: bool = True) -> str:
    """For a dotted key the schema lacks: the keys it may have meant (`train.batch` ->
    train.batch_size, `batching.batch_size` -> train.batch_size, `lr` -> optimizer.lr) and the keys
    of its section; '' when there is nothing to say."""
    leaves, sections = _schema_keys()
    section, _, leaf = key.rpartition(".")
    options = {"optimizer": OPTIMIZERS, "data": DATA_SOURCES, "scheduler": SCHEDULERS}.get(section, {})
    owners = [name for name, schema in options.items() if leaf in typing.get_type_hints(schema)]
    if owners:  # a key of another option of the group than the one chosen
        return (f"{key} is a key of {section}={' or '.join(owners)}, not of the {section} chosen: add "
                f"{section}={owners[0]}")
    near = [k for k in leaves if k.rpartition(".")[2] == leaf]  # the same name in another section
    siblings = {k.rpartition(".")[2]: k for k in leaves if k.rpartition(".")[0] == section}
    near += [siblings[n] for n in difflib.get_close_matches(leaf, list(siblings), n=2, cutoff=0.6)]
    hint = f"did you mean {' or '.join(dict.fromkeys(near[:3]))}? " if near else ""
    if list_section and (section in sections or not section):
        schema = sections[section] if section else RootConfig
        hint += (f"({section or 'the config'} has: {', '.join(typing.get_type_hints(schema))})" if schema else
                 f"({section}'s keys depend on the {section} chosen; `rnnsweep --cfg job` prints them)")
    return hint.strip()


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        shown = value.name if isinstance(value, Enum) else value
        raise ConfigError(f"{key}={shown}: {expected}")


def _check_schedule(s: Any, lr: float) -> None:
    if isinstance(s, CosineScheduleConfig):
        _require(0 <= s.eta_min < math.inf, "scheduler.eta_min", s.eta_min, "must be a number >= 0")
        _require(s.eta_min <= lr, "scheduler.eta_min", s.eta_min,
                 f"is where the rate ends; it must be at most optimizer.lr={lr} (where it starts)")
    if isinstance(s, LinearWarmupScheduleConfig):
        _require(s.warmup_steps >= 1, "scheduler.warmup_steps", s.warmup_steps, "must be at least 1 step")
        _require(0 < s.start_factor <= 1, "scheduler.start_factor", s.start_factor, "must be in (0, 1]")
        _require(0 <= s.end_factor <= 1, "scheduler.end_factor", s.end_factor, "must be in [0, 1]")
    if isinstance(s, PlateauScheduleConfig):
        _require(0 < s.factor < 1, "scheduler.factor", s.factor, "must be in (0, 1)")
        _require(s.patience >= 0, "scheduler.patience", s.patience, "must be 0 epochs or more")
        _require(0 <= s.threshold < math.inf, "scheduler.threshold", s.threshold, "must be a number >= 0")
        _require(0 <= s.min_lr < math.inf, "scheduler.min_lr", s.min_lr, "must be a number >= 0")
        _require(s.min_lr < lr, "scheduler.min_lr", s.min_lr,
                 f"must be below optimizer.lr={lr}, or the rate is never reduced")


def _validate_vectors(m: ModelConfig) -> None:
    """model.vectors is read by embed_init=pretrained and by nothing else: either alone would
    silently train something else than asked."""
    if m.embed_init is EmbedInit.pretrained:
        _require(m.vectors is not None, "model.embed_init", m.embed_init,
                 "needs model.vectors=PATH (a word2vec, GloVe or fastText text file, optionally .gz)")
        _require(m.vectors.strip() != "", "model.vectors", "''", "must name a file of word vectors")
    elif m.vectors is not None:
        _require(False, "model.vectors", m.vectors, "is only read with model.embed_init=pretrained: add "
                 "model.embed_init=pretrained (or drop model.vectors)")


def validate(cfg: DictConfig) -> RootConfig:
    """Range and cross-field checks; returns the config as plain dataclasses."""
    _reject_unknown_keys(cfg, RootConfig, "")
    try:
        root: RootConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except MissingMandatoryValue as ex:  # e.g. data=csv without data.train
        raise ConfigError(f"{ex.full_key}: required, no default; set it on the command line ({ex.full_key}=...)") from ex
    except OmegaConfBaseException as ex:  # unknown key, unresolvable interpolation
        key = getattr(ex, "full_key", None)
        raise ConfigError(f"{key}: {str(ex).splitlines()[0]}" if key else str(ex).splitlines()[0]) from ex
    root.optimizer = _typed_option(cfg.optimizer, "optimizer", OPTIMIZERS)
    root.data = _typed_option(cfg.data, "data", DATA_SOURCES)
    root.scheduler = _typed_option(cfg.scheduler, "scheduler", SCHEDULERS)
    m, t, tr, d, o = root.model, root.topology, root.train, root.data, root.optimizer

    _require(m.embed_dim >= 1, "model.embed_dim", m.embed_dim, "must be at least 1")
    _require(m.hidden_dim >= 1, "model.hidden_dim", m.hidden_dim, "must be at least 1")
    _require(t.num_layers >= 1, "topology.num_layers", t.num_layers, "must be at least 1")
    _require(0.0 <= t.dropout < 1.0, "topology.dropout", t.dropout, "must be in [0, 1)")
    _require(
        t.dropout == 0.0 or t.num_layers > 1,
        "topology.dropout",
        t.dropout,
        "acts between recurrent layers; it needs topology.num_layers >= 2 (or set it to 0)",
    )
    _require(tr.epochs >= 1, "train.epochs", tr.epochs, "must be at least 1")
    if tr.patience is not None:
        _require(tr.patience >= 1, "train.patience", tr.patience, "must be at least 1 epoch, or null for no early stop")
    if tr.epoch_size is not None:
        _require(tr.epoch_size >= 1, "train.epoch_size", tr.epoch_size, "must be at least 1, or null for all")
    _require(
        not root.batching.native_packing or root.batching.mode is BatchMode.packed,
        "batching.native_packing",
        "true",
        "only changes how packed batches run; it needs batching=packed",
    )
    _require(root.batching.bucket_pool >= 1, "batching.bucket_pool", root.batching.bucket_pool, "must be at least 1")
    _require(tr.batch_size >= 1, "train.batch_size", tr.batch_size, "must be at least 1")
    _require(
        tr.eval_batch_size >= 1, "train.eval_batch_size", tr.eval_batch_size, "must be at least 1"
    )
    _require(
        tr.grad_clip is None or 0 < tr.grad_clip < math.inf,
        "train.grad_clip",
        tr.grad_clip,
        "must be a positive number, or null to disable clipping",
    )
    _require(0 <= root.runtime.threads <= MAX_THREADS, "runtime.threads", root.runtime.threads,
             f"must be 0 (the launcher's share of the cores) to {MAX_THREADS}")
    _require(0 <= root.seed <= MAX_SEED, "seed", root.seed, f"must be in [0, {MAX_SEED}]")
    _require(0 <= d.seed <= MAX_SEED, "data.seed", d.seed, f"must be in [0, {MAX_SEED}]")
    _require(0 <= root.ledger.busy_wait < math.inf, "ledger.busy_wait", root.ledger.busy_wait,
             "must be a number of seconds >= 0")
    _require(root.ledger.store.strip() != "", "ledger.store", "''", "must name a directory (relative paths start "
             "where rnnsweep runs)")
    _require(root.logger.log_every >= 1, "logger.log_every", root.logger.log_every, "must be >= 1")
    if root.logger.log_model:
        _require(root.ledger.keep_model, "logger.log_model", "true", "uploads the model a run keeps: it needs "
                 "ledger.keep_model=true")
        _require(root.logger.backend is LoggerBackend.wandb, "logger.log_model", "true",
                 "uploads to W&B: it needs logger=wandb")
    if root.logger.backend is LoggerBackend.wandb:
        problem = wandb_mode_env_problem()
        if problem:
            raise ConfigError(problem)
    _require(0 < o.lr < math.inf, "optimizer.lr", o.lr, "must be a positive number")
    _check_schedule(root.scheduler, o.lr)
    wd = getattr(o, "weight_decay", 0.0)
    _require(0 <= wd < math.inf, "optimizer.weight_decay", wd, "must be a number >= 0")
    if hasattr(o, "eps"):
        _require(0 < o.eps < math.inf, "optimizer.eps", o.eps, "must be a positive number (it keeps Adam's "
                 "denominator above 0)")
    if isinstance(o, (AdamConfig, SparseAdamConfig)):
        ok = len(o.betas) == 2 and all(0.0 <= b < 1.0 for b in o.betas)
        _require(ok, "optimizer.betas", list(o.betas), "must be two numbers in [0, 1)")
    if isinstance(o, AdamConfig) and o.embedding_grad is EmbeddingGrad.deferred:
        _require(
            o.name is OptimizerName.adamw or o.weight_decay == 0,
            "optimizer.weight_decay",
            o.weight_decay,
            "must be 0 with embedding_grad=deferred: Adam's L2 decay gives every row a gradient "
            "(use optimizer=adamw, or embedding_grad=scattered)",
        )
    if isinstance(o, SGDConfig):
        _require(0.0 <= o.momentum < 1.0, "optimizer.momentum", o.momentum, "must be in [0, 1)")
    if isinstance(d, SyntheticDataConfig):
        _require(10 <= d.train_size <= MAX_SYNTHETIC_ROWS, "data.train_size", d.train_size,
                 f"must be in [10, {MAX_SYNTHETIC_ROWS:,}] (the generator holds every text in memory)")
        _require(1 <= d.test_size <= MAX_SYNTHETIC_ROWS, "data.test_size", d.test_size,
                 f"must be in [1, {MAX_SYNTHETIC_ROWS:,}]")
    _require(0.0 < d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "must be in (0, 1)")
    if hasattr(d, "test_fraction"):
        _require(0.0 < d.test_fraction < 1.0, "data.test_fraction", d.test_fraction, "must be in (0, 1)")
    if getattr(d, "limit", None) is not None:
        _require(d.limit >= 10, "data.limit", d.limit, "must be at least 10 rows, or null for all")
    if isinstance(d, LabelledTextsConfig):
        _require(len(d.text_columns) >= 1, "data.text_columns", list(d.text_columns), "must name at least one column")
    tk = root.tokenizer
    _require(tk.min_freq >= 1, "tokenizer.min_freq", tk.min_freq, "must be at least 1")
    if tk.max_vocab is not None:
        _require(tk.max_vocab >= 3, "tokenizer.max_vocab", tk.max_vocab,
                 "must be at least 3 (<pad>, <unk> and one token), or null for no limit")
    _require(
        tk.lowercase or tk.name is not TokenizerName.basic_english,
        "tokenizer.lowercase",
        "false",
        "basic_english always lowercases (torchtext's rules); use tokenizer=wordpiece or bpe to keep case",
    )

    _validate_vectors(m)
    if m.pooling in SEED_POOLINGS and t.bidirectional:
        raise ConfigError(
            f"model.pooling={m.pooling.value}, topology.bidirectional=true: the lesson's poolings read one "
            "direction's state; use model.pooling=last, mean or max with a bidirectional stack"
        )
    if m.arch is Arch.bow:
        # No recurrence: the recurrent knobs would be silently ignored, so refuse them.
        _require(
            m.pooling in (Pooling.mean, Pooling.max, Pooling.attention),
            "model.pooling",
            m.pooling,
            "model=bow pools embeddings: use mean, max or attention",
        )
        if t.num_layers != 1 or t.bidirectional:
            raise ConfigError(
                f"topology.num_layers={t.num_layers}, topology.bidirectional={str(t.bidirectional).lower()}: "
                "model=bow has no recurrent stack: use topology=uni"
            )
        _require(
            root.batching.mode is BatchMode.padded,
            "batching.mode",
            root.batching.mode,
            "model=bow reads no sequence order, packing changes nothing: use batching=padded",
        )
    return root
