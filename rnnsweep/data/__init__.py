"""Texts -> encoded splits -> batches. No Hydra here: callers pass plain values.

`sources` read texts (embedded generator, AG News, CSV/TSV/JSONL, Hugging Face), `tokenization`
turns them into ids, `pipeline` splits, encodes and caches them once per fingerprint, `batches`
cuts padded batches from the cached arrays.
"""

from .encoded import EncodedTexts
from .pipeline import SplitOptions, Splits, TokenizerOptions, data_fingerprint, prepare, stratified_split
from .readers import DataError

__all__ = [
    "DataError", "EncodedTexts", "SplitOptions", "Splits", "TokenizerOptions", "data_fingerprint", "prepare",
    "stratified_split",
]
