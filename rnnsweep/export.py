"""A trained run as a self-contained model directory: weights, vocabulary, classes, config.

    <store>/<run id>/model/
      weights.npz     every tensor of the model's state dict (numpy: loaded without pickle)
      model.json      what builds the network again, the class names, the tokenizer, the run's config
      vocab.json | tokenizer.json   the vocabulary the run's data was encoded with

Nothing in it points back to the data cache or the store, so the directory can be copied,
uploaded (logger.log_model=true sends it to W&B as an artifact) and loaded anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .store import atomic_write

FORMAT = 1
VOCAB_FILES = ("vocab.json", "tokenizer.json")


def save(directory: Path, model: torch.nn.Module, *, architecture: dict[str, Any], class_names: list[str],
         tokenizer: dict[str, Any], vocabulary_from: Path, config: dict[str, Any]) -> int:
    """Write the model directory (each file whole, or not at all); returns its size in bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.detach().cpu().numpy() for name, tensor in model.state_dict().items()}
    atomic_write(directory / "weights.npz", lambda f: np.savez(f, **weights))
    for name in VOCAB_FILES:
        if (vocabulary_from / name).is_file():
            text = (vocabulary_from / name).read_bytes()
            atomic_write(directory / name, lambda f, text=text: f.write(text))
    meta = {"format": FORMAT, "architecture": architecture, "classes": class_names, "tokenizer": tokenizer,
            "config": config}
    atomic_write(directory / "model.json", lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode()))
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
