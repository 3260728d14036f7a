"""Texts -> encoded splits -> batches. No Hydra here: callers pass plain values.

`sources` read texts (embedded generator, AG News, CSV/TSV/JSONL, Hugging Face), `tokenization`
turns them into ids, `pipeline` splits, encodes and caches them once per fingerprint, `batches`
cuts padded batches from the cached arrays, `vectors` reads pretrained word vectors for a
cache entry's vocabulary (once, cached beside it).
"""

from .encoded import EncodedTexts
from .pipeline import SplitOptions, Splits, TokenizerOptions, data_fingerprint, prepare, stratified_split
from .readers import DataError
from .vectors import PretrainedVectors, VectorsFile, load_vectors, vectors_file

__all__ = [
    "DataError", "EncodedTexts", "PretrainedVectors", "SplitOptions", "Splits", "TokenizerOptions", "VectorsFile",
    "data_fingerprint", "load_vectors", "prepare", "stratified_split", "vectors_file",
]
