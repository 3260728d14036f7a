"""The padding row's sparse gradient left out by the first compiled layer (it zeroes the padding
positions' rows of its own input gradient) instead of torch's mask in the embedding's backward:
the same gradient, and every optimizer giving the numbers it gives with torch's mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.utils.prune

from rnnsweep.data import EncodedTexts
from rnnsweep.data.batches import collate
from rnnsweep.fast.optimizers import make_optimizer
from rnnsweep.loop import clip_grad_norm
from rnnsweep.model import TextClassifier

PAD = 0


def batches(steps: int) -> list:
    """Batches whose padded tails the lesson's padded LSTM reads (seed_hlast): the padding
    positions get a gradient upstream of the embedding, which only the padding row's mask stops."""
    rng = np.random.default_rng(3)
    lengths = rng.integers(2, 12, size=16 * steps)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    data = EncodedTexts(rng.integers(2, 40, size=int(offsets[-1])), offsets, rng.integers(0, 4, size=16 * steps))
    return [collate(data, np.arange(i * 16, i * 16 + 16)) for i in range(steps)]


def classifier(torch_embedding: bool, **kw) -> TextClassifier:
    torch.manual_seed(0)
    net = TextClassifier(40, 4, **{"arch": "lstm", "embed_dim": 8, "hidden_dim": 8, "pooling": "seed_hlast",
                                   "pad_id": PAD, "embed_init": "shifted_normal", "sparse_embedding": True, **kw})
    if torch_embedding:  # the same weights, torch's mask in the embedding's backward
        net._padding_left_to_the_layer = lambda ids: None
    return net


def test_the_padding_rows_gradient_is_zero_and_every_other_rows_is_torchs():
    b = batches(1)[0]
    assert (b.ids == PAD).any()
    grads = {}
    for torch_embedding in (True, False):
        net = classifier(torch_embedding)
        for _ in range(2):  # the second backward accumulates into the first's gradient
            torch.nn.functional.cross_entropy(net(b.ids, b.lengths), b.labels).backward()
        grads[torch_embedding] = net.embedding.weight.grad
    ours, theirs = grads[False], grads[True]
    assert ours.is_sparse and theirs.is_sparse
    # Each way was taken: ours holds the padding row's entries (zero), torch's leaves them out.
    assert (ours.coalesce().indices()[0] == PAD).any() and not (theirs.coalesce().indices()[0] == PAD).any()
    assert torch.equal(ours.to_dense(), theirs.to_dense())
    assert not ours.to_dense()[PAD].any()
    # The test reaches the padding entries: without the mask or the hook they are not zero.
    net = classifier(True)
    net.embedding.padding_idx = None
    torch.nn.functional.cross_entropy(net(b.ids, b.lengths), b.labels).backward()
    assert net.embedding.weight.grad.to_dense()[PAD].abs().sum() > 0


def steps(net: TextClassifier, name: str, embedding_grad: str, clip: float | None, **kw) -> TextClassifier:
    opt = make_optimizer(name, net, lr=5e-2, embedding_grad=embedding_grad, **kw)
    for b in batches(6):
        loss = torch.nn.functional.cross_entropy(net(b.ids, b.lengths), b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            clip_grad_norm([p for p in net.parameters() if p.requires_grad], clip)
        opt.step()
    if hasattr(opt, "flush"):
        opt.flush()
    return net


ADAM = {"betas": (0.9, 0.999), "eps": 1e-8}


@pytest.mark.parametrize("name,embedding_grad,kw", [
    ("adam", "deferred", ADAM),
    ("adamw", "deferred", {**ADAM, "weight_decay": 0.1}),
    ("adam", "scattered", {**ADAM, "impl": "fused"}),
    ("adamw", "scattered", {**ADAM, "weight_decay": 0.1, "impl": "foreach"}),
    ("sparse_adam", "sparse", ADAM),
    ("sgd", "scattered", {"momentum": 0.0, "nesterov": False}),
])
@pytest.mark.parametrize("clip", [None, 0.05])
def test_every_optimizer_trains_as_with_torchs_embedding(name, embedding_grad, kw, clip):
    ours = steps(classifier(False), name, embedding_grad, clip, **kw)
    theirs = steps(classifier(True), name, embedding_grad, clip, **kw)
    for (key, p), q in zip(ours.state_dict().items(), theirs.state_dict().values()):
        if clip is not None:
            # Clipping coalesces the gradient, whose sort sums a row's repeated entries in an order
            # that depends on the entries around them: the padding entries change it in the last bit.
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
        elif name == "adamw" and embedding_grad == "deferred" and key == "embedding.weight":
            # Only the padding row may differ: it now takes each step's decay as it comes (torch's
            # dense AdamW's float32 arithmetic), where without a gradient it was decayed later in
            # closed form (float64, rounded once). Checked against dense AdamW below.
            assert torch.equal(p[1:], q[1:])
            torch.testing.assert_close(p[PAD], q[PAD], rtol=1e-6, atol=0)
        else:
            assert torch.equal(p, q), key


def test_deferred_adamws_padding_row_decays_as_dense_adamws():
    ours = steps(classifier(False), "adamw", "deferred", None, **ADAM, weight_decay=0.1)
    torch.manual_seed(0)
    dense = TextClassifier(40, 4, arch="lstm", embed_dim=8, hidden_dim=8, pooling="seed_hlast", pad_id=PAD,
                           embed_init="shifted_normal")
    dense = steps(dense, "adamw", "dense", None, **ADAM, weight_decay=0.1, impl="foreach")
    assert torch.equal(ours.embedding.weight[PAD], dense.embedding.weight[PAD])


def test_torch_autograd_grad_sees_the_same_gradient():
    """The padding positions are left out inside the graph, not by a hook on .grad: autograd.grad agrees."""
    b = batches(1)[0]
    grads = []
    for torch_embedding in (True, False):
        net = classifier(torch_embedding)
        loss = torch.nn.functional.cross_entropy(net(b.ids, b.lengths), b.labels)
        grads.append(torch.autograd.grad(loss, net.embedding.weight)[0].to_dense())
    assert torch.equal(*grads) and not grads[0][PAD].any()


@pytest.mark.parametrize("kw", [
    {"pooling": "last"}, {"pooling": "mean", "num_layers": 2}, {"pooling": "seed_hlast", "packed": True},
    {"pooling": "max", "bidirectional": True}, {"pooling": "mean", "arch": "bow"}, {"pooling": "last", "arch": "gru"},
    {"pooling": "last", "compiled_rnn": False}, {"pooling": "attention", "arch": "rnn"},
])
def test_every_model_gives_torchs_embedding_gradient(kw):
    b = batches(1)[0]
    grads = []
    for torch_embedding in (True, False):
        net = classifier(torch_embedding, **kw)
        torch.nn.functional.cross_entropy(net(b.ids, b.lengths), b.labels).backward()
        grads.append(net.embedding.weight.grad.to_dense())
    assert torch.equal(*grads) and not grads[0][PAD].any()


def test_a_reparametrized_recurrent_weight_is_read_through_its_parametrization():
    b = batches(1)[0]
    outputs = []
    for compiled in (True, False):
        net = classifier(False, pooling="last", compiled_rnn=compiled)
        torch.nn.utils.parametrizations.orthogonal(net.rnn, "weight_hh_l0")
        outputs.append(net(b.ids, b.lengths))
    torch.testing.assert_close(*outputs)


def pruned_then_moved(net: TextClassifier, name: str) -> TextClassifier:
    """`net` with `name` of its recurrent stack pruned (half its entries masked), then trained
    once, the way a step moves it: weight_orig changes, and the pruned weight is recomputed
    from it by prune's forward pre-hook on `net.rnn`."""
    torch.nn.utils.prune.random_unstructured(net.rnn, name, amount=0.5)
    with torch.no_grad():
        getattr(net.rnn, f"{name}_orig").add_(0.5)
    return net


@pytest.mark.parametrize("kw", [{}, {"pooling": "last", "num_layers": 2}, {"pooling": "mean", "bidirectional": True},
                                {"pooling": "last", "packed": True}])
def test_a_pruned_recurrent_weight_is_recomputed_for_every_forward(kw):
    # The compiled stack never calls net.rnn, so prune's pre-hook did not run: it read the pruned
    # weight as computed at pruning time, not from the weights training had moved since.
    b = batches(1)[0]
    torch.manual_seed(1)
    pruned = pruned_then_moved(classifier(False, **kw), "weight_hh_l0")
    plain = classifier(False, **kw)
    with torch.no_grad():  # the weights pruned's forward should see, as ordinary parameters
        for name, value in pruned.rnn.named_buffers():
            getattr(plain.rnn, name.removesuffix("_mask")).copy_(getattr(pruned.rnn, name.replace("_mask", "_orig"))
                                                                 * value)
    torch.testing.assert_close(pruned(b.ids, b.lengths), plain(b.ids, b.lengths))


def test_forward_hooks_on_the_recurrent_stack_run():
    b = batches(1)[0]
    net = classifier(False, pooling="last")
    seen = []
    net.rnn.register_forward_hook(lambda module, args, out: seen.append(out[0].shape))
    net(b.ids, b.lengths)
    assert seen == [(16, b.ids.size(1), 8)]


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_kwargs", [False, True])
def test_an_input_a_pre_hook_returns_is_the_one_the_stack_reads(bidirectional, with_kwargs):
    # As torch calls a module: a pre-hook's returned arguments replace the input.
    b = batches(1)[0]
    kw = {"pooling": "mean", "bidirectional": bidirectional}
    hooked, doubled = classifier(False, **kw), classifier(False, **kw)
    if with_kwargs:
        hooked.rnn.register_forward_pre_hook(lambda module, args, kwargs: ((args[0] * 2,), kwargs), with_kwargs=True)
    else:
        hooked.rnn.register_forward_pre_hook(lambda module, args: args[0] * 2)
    with torch.no_grad():
        doubled.embedding.weight.mul_(2)  # the padding row is zero either way
    torch.testing.assert_close(hooked(b.ids, b.lengths), doubled(b.ids, b.lengths))


def test_backward_hooks_on_the_recurrent_stack_run():
    b = batches(1)[0]
    net = classifier(False, pooling="last")
    fired = []
    net.rnn.register_full_backward_hook(lambda module, grad_in, grad_out: fired.append(len(grad_out)))
    torch.nn.functional.cross_entropy(net(b.ids, b.lengths), b.labels).backward()
    assert fired


def test_a_hooked_packed_stack_is_given_the_packed_sequence():
    b = batches(1)[0]
    net = classifier(False, pooling="last", packed=True)
    seen = []
    net.rnn.register_forward_pre_hook(lambda module, args: seen.append(type(args[0]).__name__))
    reference = classifier(False, pooling="last", packed=True)(b.ids, b.lengths)
    torch.testing.assert_close(net(b.ids, b.lengths), reference)
    assert seen == ["PackedSequence"]
