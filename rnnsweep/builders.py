"""Config sections -> what a run trains with: the data source, the device, the model, the optimizer.

Each helper takes only the sections it reads, as the validated dataclasses of config.py, and
returns plain objects; none knows Hydra or the rest of the config.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import fast
from .config import (
    AgNewsDataConfig,
    BatchingConfig,
    HfDataConfig,
    ModelConfig,
    RuntimeConfig,
    SyntheticDataConfig,
    TableDataConfig,
    TokenizerConfig,
    TopologyConfig,
)
from .data import PretrainedVectors, SplitOptions, TokenizerOptions, VectorsFile, sources, vectors_file
from .data.pipeline import Source
from .model import TextClassifier


def cache_dir(runtime: RuntimeConfig, base_dir: Path) -> Path:
    """Where encoded data and downloads live: runtime.cache_dir (relative to `base_dir`), else
    $RNNSWEEP_CACHE_DIR or the user's cache directory."""
    if runtime.cache_dir is None:
        return sources.default_cache_dir()
    return base_dir / Path(runtime.cache_dir).expanduser()


def data_source(data, base_dir: Path, cache_root: Path) -> Source:
    """The configured source, with relative paths taken from `base_dir`."""

    def path(value: str) -> Path:
        return base_dir / Path(value).expanduser()

    if isinstance(data, SyntheticDataConfig):
        return sources.Synthetic(variant=data.variant.value, train_size=data.train_size, test_size=data.test_size,
                                 seed=data.seed)
    if isinstance(data, AgNewsDataConfig):
        root = path(data.root) if data.root is not None else cache_root / "ag_news"
        return sources.AgNews(root=root, download=data.download, urls={"train": data.train_url, "test": data.test_url},
                              md5={"train": data.train_md5, "test": data.test_md5}, clean=data.clean,
                              drop_empty=data.drop_empty)
    if isinstance(data, TableDataConfig):
        return sources.Table(train=path(data.train), test=path(data.test) if data.test is not None else None,
                             fmt=data.format.value, text_columns=data.text_columns, label_column=data.label_column,
                             header=data.header, label_offset=data.label_offset, classes=data.classes,
                             drop_empty=data.drop_empty)
    if isinstance(data, HfDataConfig):
        local = path(data.dataset)
        return sources.HuggingFace(dataset=str(local) if local.exists() else data.dataset, subset=data.subset,
                                   revision=data.revision, train_split=data.train_split, test_split=data.test_split,
                                   text_columns=data.text_columns, label_column=data.label_column,
                                   drop_empty=data.drop_empty)
    raise ValueError(f"no loader for data={data.name}")


def pretrained_vectors(model: ModelConfig, base_dir: Path) -> VectorsFile | None:
    """model.vectors (relative to `base_dir`, like data paths), checked against model.embed_dim;
    None unless embed_init=pretrained. Raises DataError for a file that is missing or of another
    dimension, before anything is read in full or written."""
    if model.embed_init.value != "pretrained" or model.vectors is None:
        return None
    return vectors_file(base_dir / Path(model.vectors).expanduser(), model.embed_dim)


def split_options(data) -> SplitOptions:
    # Sources with a test split of their own (synthetic, AG News) have no test_fraction.
    return SplitOptions(val_fraction=data.val_fraction, test_fraction=getattr(data, "test_fraction", None),
                        limit=getattr(data, "limit", None), seed=data.seed)


def tokenizer_options(tokenizer: TokenizerConfig) -> TokenizerOptions:
    return TokenizerOptions(name=tokenizer.name.value, min_freq=tokenizer.min_freq, max_vocab=tokenizer.max_vocab,
                            lowercase=tokenizer.lowercase)


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device=cuda but no CUDA device is visible; use runtime.device=auto or cpu")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def embedding_grad(optimizer, device: torch.device) -> str:
    """How the embedding's gradient reaches the optimizer (see fast.embedding_grad)."""
    choice = getattr(optimizer, "embedding_grad", None)
    return fast.embedding_grad(optimizer.name.value, choice.value if choice is not None else None,
                               getattr(optimizer, "weight_decay", 0.0), device)


def architecture(model: ModelConfig, topology: TopologyConfig, batching: BatchingConfig, *, vocab_size: int,
                 num_classes: int) -> dict:
    """The network's shape and reading: TextClassifier's arguments that a trained model keeps."""
    return {
        "vocab_size": vocab_size,
        "num_classes": num_classes,
        "arch": model.arch.value,
        "embed_dim": model.embed_dim,
        "hidden_dim": model.hidden_dim,
        "num_layers": topology.num_layers,
        "bidirectional": topology.bidirectional,
        "dropout": topology.dropout,
        "pooling": model.pooling.value,
        "packed": batching.mode.value == "packed",
        "embed_init": model.embed_init.value,
        "native_packing": batching.native_packing,
    }


def build_model(model: ModelConfig, topology: TopologyConfig, batching: BatchingConfig, *, vocab_size: int,
                num_classes: int, embedding_grad: str, compiled_rnn: bool,
                vectors: PretrainedVectors | None = None) -> TextClassifier:
    """The network, initialised; `vectors`: the pretrained rows, copied over the usual init (the
    architecture itself never needs them: a saved model's weights carry the rows)."""
    shape = architecture(model, topology, batching, vocab_size=vocab_size, num_classes=num_classes)
    net = TextClassifier(shape.pop("vocab_size"), shape.pop("num_classes"), **shape,
                         sparse_embedding=embedding_grad != "dense", compiled_rnn=compiled_rnn)
    if vectors is not None:
        copy_vectors(net.embedding.weight, vectors)
    if model.freeze_embedding:
        # No gradient at all: fast.make_optimizer leaves the table out of every optimizer.
        net.embedding.weight.requires_grad_(False)
    return net


def copy_vectors(table: torch.Tensor, vectors: PretrainedVectors) -> None:
    """Overwrite the rows `vectors` found; the others (and <pad>, <unk>) keep their init."""
    if tuple(vectors.matrix.shape) != tuple(table.shape):
        raise ValueError(f"the vectors are {tuple(vectors.matrix.shape)}, the embedding {tuple(table.shape)}")
    rows = np.flatnonzero(vectors.found)
    with torch.no_grad():
        table[torch.from_numpy(rows)] = torch.from_numpy(np.asarray(vectors.matrix[rows])).to(table.dtype)


def build_optimizer(optimizer, model: torch.nn.Module, embedding_grad: str) -> torch.optim.Optimizer:
    options = {k: getattr(v, "value", v) for k, v in vars(optimizer).items()
               if k not in ("name", "lr", "weight_decay", "embedding_grad")}
    return fast.make_optimizer(optimizer.name.value, model, lr=optimizer.lr,
                               weight_decay=getattr(optimizer, "weight_decay", 0.0), embedding_grad=embedding_grad,
                               **options)
