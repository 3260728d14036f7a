"""Token ids -> class logits: embedding -> recurrent stack -> pooling -> linear.

One class covers the lesson's RNN, LSTM and packed LSTM, GRUs, bidirectional and stacked
variants, and the bag-of-embeddings baseline, so that a sweep changes arguments, not code.

Padding never reaches the correct poolings (`last`, `mean`, `max`, `attention`). For a unidirectional
stack that is a matter of reading the right positions: padding comes after the real tokens.
A backward direction, though, would read the padding *first* and carry it into every real
position, so with padded batches the bidirectional stack runs each direction itself, the
backward one over sequences reversed within their own lengths. Packed batches get the same
result from PyTorch's packed kernels. The lesson's own poolings (`seed_mean`, `seed_hlast`)
are kept as written, padding effects included, for `experiment=seed_notebook`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.modules import module as torch_module
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from . import fast

RECURRENT = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
ARCHS = ("bow", *RECURRENT)
POOLINGS = ("last", "mean", "max", "attention", "seed_mean", "seed_hlast")
MASKED_POOLINGS = ("mean", "max", "attention")  # what a bag of embeddings can pool with


def _hooked(module: nn.Module) -> bool:
    """Whether calling `module` runs any hook, forward or backward, its own or every module's."""
    return bool(module._forward_pre_hooks or module._forward_hooks or module._backward_pre_hooks
                or module._backward_hooks or torch_module._global_forward_pre_hooks
                or torch_module._global_forward_hooks or torch_module._global_backward_pre_hooks
                or torch_module._global_backward_hooks)


def _run_pre_hooks(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module`'s own forward pre-hooks on input `x`, as calling it would run them; the input they return."""
    args, kwargs = (x,), {}
    for key, hook in module._forward_pre_hooks.items():
        if key in module._forward_pre_hooks_with_kwargs:
            result = hook(module, args, kwargs)
            if result is not None:
                args, kwargs = result
        else:
            result = hook(module, args)
            if result is not None:
                args = result if isinstance(result, tuple) else (result,)
    return args[0]


def reverse_within_lengths(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each row's first `length` steps of a (B, T, ...) tensor, leave padding in place."""
    steps = torch.arange(x.size(1), device=x.device).expand(x.size(0), -1)
    lengths = lengths.to(x.device).unsqueeze(1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


def padding_mask(lengths: torch.Tensor, width: int, device: torch.device) -> torch.Tensor:
    """(B, T) bool, True at real tokens."""
    return torch.arange(width, device=device).unsqueeze(0) < lengths.to(device).unsqueeze(1)


class AttentionPooling(nn.Module):
    """A learned weighted mean over the real positions (hierarchical attention networks, Yang et
    al. 2016): u_t = tanh(W h_t + b), weights = softmax over t of u_t . u_w. Padding gets weight 0."""

    def __init__(self, features: int):
        super().__init__()
        self.project = nn.Linear(features, features)
        self.context = nn.Linear(features, 1, bias=False)  # u_w

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.context(torch.tanh(self.project(x))).squeeze(2).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return (weights.unsqueeze(2) * x.masked_fill(~mask.unsqueeze(2), 0.0)).sum(dim=1)


class TextClassifier(nn.Module):
    """Sizes and choices are the config's (conf/model, conf/topology, conf/batching); the keyword
    defaults below are the plain variant: one unidirectional layer on padded batches."""

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        arch: str,
        embed_dim: int,
        hidden_dim: int,
        pooling: str,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        packed: bool = False,
        embed_init: str = "default",
        pad_id: int = 0,
        sparse_embedding: bool = False,
        native_packing: bool = False,
        compiled_rnn: bool = True,
    ):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, not {arch!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        if arch == "bow" and pooling not in MASKED_POOLINGS:
            raise ValueError(f"a bag of embeddings pools with {', '.join(MASKED_POOLINGS)}")
        self.arch, self.pooling, self.packed = arch, pooling, packed
        self.native_packing = native_packing
        # RNNs, GRUs and LSTMs on the CPU run the compiled layers (same arithmetic); False: torch's own.
        self.compiled_rnn = compiled_rnn
        self.bidirectional, self.num_layers = bidirectional, num_layers
        self.dropout = dropout
        # Sparse gradients: a step touches only the rows of the batch's tokens (optimizer=sparse_adam).
        self.embedding = Lookup(vocab_size, embed_dim, padding_idx=pad_id, sparse=sparse_embedding)
        if embed_init == "shifted_normal":
            with torch.no_grad():  # the lesson's LSTM: randn - 0.5, padding row included
                self.embedding.weight.copy_(torch.randn_like(self.embedding.weight) - 0.5)
        elif embed_init not in ("default", "pretrained"):
            # pretrained: initialised as default here; builders.build_model copies the vectors in.
            # A saved model rebuilt from its architecture gets its rows from its weights instead,
            # so it needs no vectors file.
            raise ValueError(f"embed_init must be default, shifted_normal or pretrained, not {embed_init!r}")
        if arch == "bow":
            self.rnn = None
            features = embed_dim
        else:
            self.rnn = RECURRENT[arch](
                embed_dim,
                hidden_dim,
                num_layers=num_layers,
                bidirectional=bidirectional,
                dropout=dropout if num_layers > 1 else 0.0,
                batch_first=True,
            )
            features = hidden_dim * (2 if bidirectional else 1)
            # Single-layer, single-direction twins of `self.rnn` to run one direction of one
            # layer with `self.rnn`'s own weights (see `_bidirectional_padded`). Kept out of
            # the module tree: they own no parameters that train.
            self._one_direction = [
                RECURRENT[arch](embed_dim if layer == 0 else features, hidden_dim, batch_first=True)
                for layer in range(num_layers)
            ]
            for twin in self._one_direction:
                twin.requires_grad_(False)
            # Each layer's weight names in `self.rnn`, for `_stack` to read them from its parameter
            # dict: a getattr per weight per batch costs a visible part of a small model's step.
            self._layer_weights = [tuple(f"{name}_l{layer}" for name in fast.WEIGHTS) for layer in range(num_layers)]
        self.attention = AttentionPooling(features) if pooling == "attention" else None
        self.fc = nn.Linear(features, num_classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        padding = self._padding_left_to_the_layer(ids)
        x = self.embedding(ids, mask_padding=padding is None)

        def mask() -> torch.Tensor:  # only the poolings that read padding build it
            return padding_mask(lengths, ids.size(1), ids.device)

        if self.rnn is None:
            return self.fc(self._pool_masked(x, mask(), lengths))
        # PyTorch runs packed sequences on the CPU as a loop of single steps; the padded kernel
        # read at each sequence's own end computes the same numbers, much faster (tested).
        # On CUDA, cuDNN's packed kernel is fast: it is used as written.
        # A hooked stack keeps torch's packed path: its hooks are given the PackedSequence.
        packed_on_padded = self.packed and not self.native_packing and x.device.type == "cpu" and not _hooked(self.rnn)
        if self.pooling in ("seed_mean", "seed_hlast"):
            if packed_on_padded:
                out, h_last = self._packed_on_padded(x, lengths, mask(), padding)
            else:
                out, h_last = self._run_as_written(x, lengths, padding)
            return self.fc(out.mean(dim=1) if self.pooling == "seed_mean" else h_last)
        if packed_on_padded:
            out = self._bidirectional_padded(x, lengths) if self.bidirectional else self._stack(x, padding=padding)
        elif self.packed:
            out, _ = self._run_packed(x, lengths)
        elif self.bidirectional:
            out = self._bidirectional_padded(x, lengths)
        else:
            out = self._stack(x, padding=padding)
        if self.pooling == "last":
            return self.fc(self._last(out, lengths))
        return self.fc(self._pool_masked(out, mask(), lengths))

    def _padding_left_to_the_layer(self, ids: torch.Tensor) -> tuple[torch.Tensor, int] | None:
        """(ids, pad id) where the first compiled layer, the only reader of the embedding's output,
        leaves the padding positions' gradient out itself (fast.layer's `padding`); None elsewhere.

        With `padding_idx`, torch's sparse embedding backward selects the other tokens' entries with
        a boolean mask over the batch (some 5% of the lesson's LSTM step); zeroing those positions'
        rows in the layer's own fresh input gradient costs a pass over a few ids. The embedding's
        gradient then holds the same sums for every row, and a zero for the padding row where
        torch's holds no entry (the same dense gradient, the same steps for every optimizer here:
        tested). Only the sparse CPU table on a unidirectional compiled stack takes this way."""
        emb = self.embedding
        if (self.rnn is None or self.bidirectional or (self.packed and self.native_packing) or not emb.sparse
                or emb.padding_idx is None or not emb.weight.requires_grad or not torch.is_grad_enabled()
                or emb.max_norm is not None or emb.scale_grad_by_freq or not self._compiled(emb.weight, self.rnn)):
            return None
        return ids, emb.padding_idx

    def _packed_on_padded(self, x, lengths, mask, padding=None):
        """What a packed run returns, from the padded kernel: outputs zero after each sequence's
        end (as pad_packed_sequence gives them) and h_n[-1] (the last layer's last direction)."""
        out = self._bidirectional_padded(x, lengths) if self.bidirectional else self._stack(x, padding=padding)
        out = out * mask.unsqueeze(2).to(out.dtype)
        if self.bidirectional:  # h_n[-1] is the backward direction's state after position 0
            return out, out[:, 0, out.size(2) // 2 :]
        return out, out[torch.arange(out.size(0), device=out.device), lengths.to(out.device) - 1]

    def _run_as_written(self, x, lengths, padding=None):
        """The outputs and h_n[-1] (the last layer's last direction) of `self.rnn` as the lesson runs it."""
        if self.packed:
            out, h = self._run_packed(x, lengths)
        elif self._compiled(x, self.rnn):  # the last layer's state after the last (padded) step
            out = self._stack(x, compiled=True, padding=padding)
            return out, out[:, -1]
        else:
            out, h = self.rnn(x)
        return out, (h[0] if isinstance(h, tuple) else h)[-1]

    def _compiled(self, x, rnn) -> bool:
        # A hook on self.rnn runs only when it is called, which the compiled stack does not do:
        # torch.nn.utils.prune and the older weight_norm recompute a weight in one, and the stack
        # would train on a stale copy. Then torch's layer runs, hooks and all.
        return self.compiled_rnn and fast.applies(x, rnn) and not _hooked(self.rnn)

    def _stack(self, x: torch.Tensor, compiled: bool | None = None, padding=None) -> torch.Tensor:
        """self.rnn(x)'s outputs for a unidirectional stack; on the CPU, the compiled layers run it.
        `padding`: see _padding_left_to_the_layer (the first layer takes it)."""
        rnn = self.rnn
        if not (self._compiled(x, rnn) if compiled is None else compiled):
            if padding is not None:  # the embedding left its padding mask to a layer that is not here
                raise RuntimeError("the padding positions' gradient was left to a compiled layer torch's layer replaced")
            return rnn(x)[0]
        weights = rnn._parameters
        for layer, names in enumerate(self._layer_weights):
            if layer > 0 and self.dropout > 0:
                x = nn.functional.dropout(x, self.dropout, self.training)
            # A reparametrized weight (torch.nn.utils.parametrize, weight_norm, pruning) is no
            # parameter of its own: getattr computes it.
            x = fast.layer(rnn, x, *(weights[name] if name in weights else getattr(rnn, name) for name in names),
                           padding=padding if layer == 0 else None)
        return x

    def _run_packed(self, x, lengths):
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, h = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        return out, h

    def _bidirectional_padded(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Each direction runs on its own here, with self.rnn's weights and never self.rnn itself:
        # its own forward pre-hooks run first, as a call would run them, since pruning and the
        # older weight_norm recompute the weights read below in one. (Its forward and backward
        # hooks take outputs and gradients it never gives here: they do not run.)
        x = _run_pre_hooks(self.rnn, x)
        for layer, twin in enumerate(self._one_direction):
            if layer > 0 and self.dropout > 0:
                x = nn.functional.dropout(x, self.dropout, self.training)
            directions = []
            for suffix in ("", "_reverse"):
                weights = {
                    name: getattr(self.rnn, f"{name[:-1]}{layer}{suffix}")
                    for name in twin._flat_weights_names  # e.g. weight_ih_l0, bias_hh_l0
                }
                if suffix:
                    rev = self._one_layer(twin, weights, reverse_within_lengths(x, lengths))
                    directions.append(reverse_within_lengths(rev, lengths))
                else:
                    directions.append(self._one_layer(twin, weights, x))
            x = torch.cat(directions, dim=2)
        return x

    def _one_layer(self, twin: nn.Module, weights: dict, x: torch.Tensor) -> torch.Tensor:
        if self._compiled(x, twin):
            return fast.layer(twin, x, *(weights[f"{name}_l0"] for name in fast.WEIGHTS))
        return functional_call(twin, weights, (x,))[0]

    def _last(self, out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(out.size(0), device=out.device)
        last = out[rows, lengths.to(out.device) - 1]
        if not self.bidirectional:
            return last
        # The backward direction has read the whole sequence when it reaches position 0.
        hidden = out.size(2) // 2
        return torch.cat([last[:, :hidden], out[:, 0, hidden:]], dim=1)

    def _pool_masked(self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.attention is not None:
            return self.attention(x, mask)
        m = mask.unsqueeze(2)
        if self.pooling == "max":
            return x.masked_fill(~m, float("-inf")).max(dim=1).values
        return (x * m).sum(dim=1) / lengths.to(x.device).unsqueeze(1).to(x.dtype)

    def _apply(self, fn, recurse=True):
        # The twins hold no trained weights, but .to() / .cuda() / .double() must reach them.
        super()._apply(fn, recurse)
        for twin in getattr(self, "_one_direction", []):
            twin._apply(fn, recurse)
        return self


class Lookup(nn.Embedding):
    """nn.Embedding; `mask_padding=False` leaves the padding row's gradient to the caller, who
    must then zero what reaches the padding positions (TextClassifier's first compiled layer)."""

    def forward(self, ids: torch.Tensor, mask_padding: bool = True) -> torch.Tensor:
        if mask_padding:
            return super().forward(ids)
        return nn.functional.embedding(ids, self.weight, None, self.max_norm, self.norm_type, self.scale_grad_by_freq,
                                       self.sparse)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
