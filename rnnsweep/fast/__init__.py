"""The CPU speed path: compiled recurrent layers, and Adam without a pass over the embedding table.

Everything outside this package goes through the names below; nothing here imports from the
rest of rnnsweep. The training loop knows none of it: it gets a `torch.optim.Optimizer` and, from
`pending_work`, an optional callable that finishes deferred updates before an epoch's clock stops.

- `embedding_grad`: how the embedding's gradient reaches the optimizer, decided once per run; the
  model (sparse embedding or not) and the optimizer are both built from that one answer.
- `make_optimizer`: torch's optimizers, or ours (optimizers.py), for a model.
- `layer`, `applies`, `WEIGHTS`: one compiled RNN/GRU/LSTM layer (cpu_rnn.py), for the model.
- `warm_up`, `set_threads`: compile (or load) the loops before training; their thread count.
- `ThreadGovernor`: trains on all the run's threads or on one, whichever is faster right now.
"""

from __future__ import annotations

from typing import Callable

import torch

from .cpu_rnn import WEIGHTS, applies, kind_of, layer, set_threads
from .optimizers import DeferredAdam, LazyAdam, make_optimizer
from .threads import ThreadGovernor

__all__ = ["WEIGHTS", "ThreadGovernor", "applies", "embedding_grad", "layer", "make_optimizer", "pending_work",
           "set_threads", "warm_up"]


def embedding_grad(optimizer: str, choice: str | None, weight_decay: float, device: torch.device) -> str:
    """`dense`, `scattered`, `deferred` (see make_optimizer) or `sparse` (lazy Adam).

    `choice` is optimizer.embedding_grad (None for optimizers without one). `auto` takes deferred
    Adam on the CPU, where a pass over the whole table dominates a step, except for Adam's L2
    decay, which it cannot defer (every row then has a gradient)."""
    if optimizer == "sparse_adam":
        return "sparse"
    if choice is None:
        return "dense"
    if choice != "auto":
        if choice == "deferred" and device.type != "cpu":
            raise ValueError(f"optimizer.embedding_grad=deferred runs on the CPU; this run is on {device.type} "
                             "(use optimizer.embedding_grad=auto)")
        return choice
    if device.type != "cpu":
        return "dense"
    return "deferred" if optimizer == "adamw" or weight_decay == 0 else "scattered"


def warm_up(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, compiled_layers: bool,
            sweep: bool = False) -> None:
    """numba compiles each loop at its first call: seconds, the first time after an install. Make
    those calls here, on tiny tensors, so that the timed epoch (and the examples/s a report
    compares across runs) does not include them; a cold cache is announced and compiled in
    parallel (compile.prepare). `compiled_layers`: the model runs `layer`; `sweep`: other jobs
    follow, which may need the other layers' loops: a cold cache compiles them too, side by side."""
    groups = sorted({kind_of(m) for m in model.modules() if kind_of(m) is not None}) if compiled_layers else []
    if isinstance(optimizer, DeferredAdam):
        groups.append("adam")
    elif isinstance(optimizer, LazyAdam):
        groups.append("lazy_adam")
    if groups:
        from .compile import prepare

        prepare(groups, also=["lstm", "gru", "rnn", "adam"] if sweep else [])


def pending_work(optimizer: torch.optim.Optimizer) -> Callable[[], None] | None:
    """What the optimizer left for later (deferred Adam's replays of unused rows), as a callable the
    training loop runs before it stops an epoch's clock: that work is the epoch's. None if nothing."""
    return optimizer.flush if isinstance(optimizer, DeferredAdam) else None
