"""The experiment space as typed schemas, and the checks a composed config must pass.

Values live in `conf/` (YAML); types and ranges live here. Hydra checks types while it composes
(the root schema is registered in its ConfigStore); `validate` adds what composing cannot see —
keys added with `+`, the options of groups whose keys differ per option (optimizer, data), value
ranges and combinations that would silently do nothing — and returns plain dataclasses, so
nothing downstream of the entrypoint needs OmegaConf.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from .wandb_mode import wandb_mode_env_problem


class ConfigError(ValueError):
    """A composed config that cannot be run; the message names the key and what is expected."""


class Arch(Enum):
    bow = "bow"
    rnn = "rnn"
    lstm = "lstm"
    gru = "gru"


class Pooling(Enum):
    last = "last"  # state after the last real token (forward) / first token (backward)
    mean = "mean"  # masked mean over real positions
    max = "max"  # masked max over real positions
    seed_mean = "seed_mean"  # the lesson's RNN: mean over all positions, padding included
    seed_hlast = "seed_hlast"  # the lesson's LSTM: h_n[-1], whatever it read last


class EmbedInit(Enum):
    default = "default"  # torch's N(0, 1)
    shifted_normal = "shifted_normal"  # the lesson's LSTM: N(0, 1) - 0.5


class BatchMode(Enum):
    padded = "padded"
    packed = "packed"


class OptimizerName(Enum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"
    sparse_adam = "sparse_adam"


class EmbeddingGrad(Enum):
    auto = "auto"  # deferred on the CPU (scattered for Adam with L2 weight decay), dense elsewhere
    dense = "dense"  # torch's dense embedding gradient, a fresh table-sized tensor every step
    scattered = "scattered"  # sparse gradient scattered into one persistent dense buffer: same values
    deferred = "deferred"  # sparse gradient; an unused row's Adam steps replayed when it is next read


class AdamImpl(Enum):
    auto = "auto"  # fused where torch has a fused kernel for the device, else foreach
    fused = "fused"
    foreach = "foreach"
    for_loop = "for_loop"


class SyntheticVariant(Enum):
    order = "order"
    long_range = "long_range"


class TokenizerName(Enum):
    basic_english = "basic_english"
    wordpiece = "wordpiece"
    bpe = "bpe"


class DataFormat(Enum):
    auto = "auto"  # from the file name: .csv, .tsv, .jsonl
    csv = "csv"
    tsv = "tsv"
    jsonl = "jsonl"


class Device(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Progress(Enum):
    auto = "auto"  # a bar only when stderr is a terminal
    on = "on"
    off = "off"


class LoggerBackend(Enum):
    wandb = "wandb"
    none = "none"


class WandbMode(Enum):
    auto = "auto"  # WANDB_MODE if set, else online with an API key, else offline
    online = "online"
    offline = "offline"
    disabled = "disabled"


SEED_POOLINGS = (Pooling.seed_mean, Pooling.seed_hlast)


@dataclass
class ModelConfig:
    arch: Arch = MISSING
    embed_dim: int = 64
    hidden_dim: int = 64
    pooling: Pooling = Pooling.last
    embed_init: EmbedInit = EmbedInit.default


@dataclass
class BatchingConfig:
    mode: BatchMode = BatchMode.padded
    # On the CPU, packed batches run the padded kernel, read at each sequence's own end: the same
    # numbers as pack_padded_sequence, whose CPU path is a slow loop of single steps. True forces
    # PyTorch's packed path on the CPU too. CUDA always uses cuDNN's packed kernel.
    native_packing: bool = False
    # Length-bucketed batches: shuffle, sort pools of `bucket_pool` batches by length, cut them
    # into batches and shuffle the batches; far less padding (and packing work) per batch.
    bucket: bool = True
    bucket_pool: int = 50


@dataclass
class TopologyConfig:
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0


@dataclass
class AdamConfig:
    name: OptimizerName = OptimizerName.adam
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    impl: AdamImpl = AdamImpl.auto  # the same algorithm either way; fused is fastest on CPU and GPU
    embedding_grad: EmbeddingGrad = EmbeddingGrad.auto  # how the embedding's gradient reaches Adam


@dataclass
class AdamWConfig(AdamConfig):
    name: OptimizerName = OptimizerName.adamw
    weight_decay: float = 0.01


@dataclass
class SGDConfig:
    name: OptimizerName = OptimizerName.sgd
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0


@dataclass
class SparseAdamConfig:
    """Lazy Adam: sparse embedding gradients, and moments updated only for the rows a batch uses.

    Not identical to Adam: a row's moments do not decay while it is absent from batches. The rest
    of the model uses (dense, fused) Adam with the same lr, betas and eps."""

    name: OptimizerName = OptimizerName.sparse_adam
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class SyntheticDataConfig:
    name: str = "synthetic"
    variant: SyntheticVariant = SyntheticVariant.order
    train_size: int = 6000
    test_size: int = 1000
    val_fraction: float = 0.1
    # The data seed is separate from the run seed: seed repeats vary initialisation and batch
    # order over the same data, which is what "mean over seeds" should measure.
    seed: int = 1234


@dataclass
class AgNewsDataConfig:
    name: str = "ag_news"
    root: Optional[str] = None  # null: <runtime.cache_dir>/ag_news
    download: bool = True
    clean: bool = True  # undo the dataset's escapes ('\\' line breaks, '#36;' entities)
    train_url: str = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/train.csv"
    test_url: str = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/test.csv"
    train_md5: str = "b1a00f826fdfbd249f79597b59e1dc12"
    test_md5: str = "d52ea96a97a2d943681189a97654912d"
    val_fraction: float = 0.05
    limit: Optional[int] = None
    drop_empty: bool = True
    seed: int = 1234


@dataclass
class LabelledTextsConfig:
    """What the user's own files and Hugging Face datasets share: columns, splitting, cleaning."""

    text_columns: List[str] = field(default_factory=lambda: ["text"])  # several are joined by a space
    label_column: str = "label"
    val_fraction: float = 0.1
    test_fraction: float = 0.1  # of train, as the test split, when there is no test split
    limit: Optional[int] = None
    drop_empty: bool = True
    seed: int = 1234


@dataclass
class TableDataConfig(LabelledTextsConfig):
    name: str = "csv"
    train: str = MISSING
    test: Optional[str] = None  # null: test_fraction of train is held out as the test split
    format: DataFormat = DataFormat.auto
    header: bool = True  # without one, name columns by position: text_columns=[1,2] label_column=0
    label_offset: int = 0  # integer labels: the value of the first class (1 for labels 1..K)
    classes: Optional[List[str]] = None  # class names in index order; null: taken from train


@dataclass
class HfDataConfig(LabelledTextsConfig):
    name: str = "hf"
    dataset: str = MISSING  # a hub name ("ag_news") or a local directory of files
    subset: Optional[str] = None
    revision: Optional[str] = None
    train_split: str = "train"
    test_split: Optional[str] = "test"  # null: test_fraction of train is held out


@dataclass
class TokenizerConfig:
    name: TokenizerName = TokenizerName.basic_english
    min_freq: int = 1  # fewer occurrences in the training split: <unk> (subword: not merged)
    max_vocab: Optional[int] = None  # including <pad> and <unk>; subword tokenizers need one
    lowercase: bool = True  # subword tokenizers; basic_english always lowercases


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 32
    eval_batch_size: int = 512
    grad_clip: Optional[float] = 1.0
    epoch_size: Optional[int] = None  # at most this many training examples per epoch (the lesson's epoch_size)


@dataclass
class RuntimeConfig:
    device: Device = Device.auto
    threads: int = 0  # 0: leave torch's default (all cores)
    # On the CPU, RNN, GRU and LSTM layers run rnnsweep's compiled kernels (rnnsweep/cpu_rnn.py,
    # PyTorch's arithmetic); false: PyTorch's own layers.
    compiled_rnn: bool = True
    progress: Progress = Progress.auto
    cache_dir: Optional[str] = None  # encoded data and downloads; null: $RNNSWEEP_CACHE_DIR or ~/.cache/rnnsweep
    amp: bool = False  # mixed precision: bfloat16 autocast (float16 with loss scaling on GPUs without bf16)


@dataclass
class LoggerConfig:
    backend: LoggerBackend = LoggerBackend.none
    project: str = "rnnsweep"
    entity: Optional[str] = None
    mode: WandbMode = WandbMode.auto
    log_every: int = 50  # optimizer steps between step-level metric logs
    tags: List[str] = field(default_factory=list)


@dataclass
class LedgerConfig:
    store: str = "outputs/store"  # relative paths are taken from the directory rnnsweep runs in
    force: bool = False  # retrain even when the store holds a finished run of this identity
    plan: bool = False  # list what each job would do (train / resume / skip / invalid), train nothing
    fail_on_error: bool = True  # a sweep with a failed job exits non-zero
    keep_checkpoint: bool = False  # keep each finished run's last epoch checkpoint in the store


@dataclass
class RootConfig:
    seed: int = 0
    model: ModelConfig = MISSING
    batching: BatchingConfig = MISSING
    topology: TopologyConfig = MISSING
    # Options of these groups differ in their keys: each is checked against the schema its
    # `name` selects (OPTIMIZERS, DATA_SOURCES) by `validate`.
    optimizer: Any = MISSING
    data: Any = MISSING
    tokenizer: TokenizerConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    logger: LoggerConfig = MISSING
    ledger: LedgerConfig = field(default_factory=LedgerConfig)


OPTIMIZERS = {"adam": AdamConfig, "adamw": AdamWConfig, "sgd": SGDConfig, "sparse_adam": SparseAdamConfig}
DATA_SOURCES = {
    "synthetic": SyntheticDataConfig,
    "ag_news": AgNewsDataConfig,
    "csv": TableDataConfig,
    "hf": HfDataConfig,
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
    unions = {"optimizer": OPTIMIZERS, "data": DATA_SOURCES} if schema is RootConfig else {}
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


def unknown_key_hint(key: str, *, list_section: bool = True) -> str:
    """For a dotted key the schema lacks: the keys it may have meant (`train.batch` ->
    train.batch_size, `batching.batch_size` -> train.batch_size, `lr` -> optimizer.lr) and the keys
    of its section; '' when there is nothing to say."""
    leaves, sections = _schema_keys()
    section, _, leaf = key.rpartition(".")
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
        tr.grad_clip is None or tr.grad_clip > 0,
        "train.grad_clip",
        tr.grad_clip,
        "must be positive, or null to disable clipping",
    )
    _require(root.runtime.threads >= 0, "runtime.threads", root.runtime.threads, "must be >= 0")
    _require(root.logger.log_every >= 1, "logger.log_every", root.logger.log_every, "must be >= 1")
    if root.logger.backend is LoggerBackend.wandb:
        problem = wandb_mode_env_problem()
        if problem:
            raise ConfigError(problem)
    _require(o.lr > 0, "optimizer.lr", o.lr, "must be positive")
    _require(getattr(o, "weight_decay", 0) >= 0, "optimizer.weight_decay", getattr(o, "weight_decay", 0), "must be >= 0")
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
        _require(d.train_size >= 10, "data.train_size", d.train_size, "must be at least 10")
        _require(d.test_size >= 1, "data.test_size", d.test_size, "must be at least 1")
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

    if m.pooling in SEED_POOLINGS and t.bidirectional:
        raise ConfigError(
            f"model.pooling={m.pooling.value}, topology.bidirectional=true: the lesson's poolings read one "
            "direction's state; use model.pooling=last, mean or max with a bidirectional stack"
        )
    if m.arch is Arch.bow:
        # No recurrence: the recurrent knobs would be silently ignored, so refuse them.
        _require(
            m.pooling in (Pooling.mean, Pooling.max),
            "model.pooling",
            m.pooling,
            "model=bow pools embeddings: use mean or max",
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
