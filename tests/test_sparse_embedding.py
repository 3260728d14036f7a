"""fast.Embedding: the padding row's sparse gradient zeroed in place instead of masked out, with
every optimizer that reads it giving the numbers it gives with torch's own nn.Embedding."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch

from rnnsweep import fast
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


def classifier(torch_embedding: bool) -> TextClassifier:
    torch.manual_seed(0)
    net = TextClassifier(40, 4, arch="lstm", embed_dim=8, hidden_dim=8, pooling="seed_hlast", pad_id=PAD,
                         embed_init="shifted_normal", sparse_embedding=True)
    if torch_embedding:  # the same weights, torch's forward and backward (the mask)
        net.embedding.__class__ = torch.nn.Embedding
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


@pytest.mark.parametrize("copy_how", ["deepcopy", "torch.save"])
def test_a_copied_embedding_still_zeroes_the_padding_rows_gradient(copy_how):
    """A deep copy or a pickle drops tensor hooks: the lookup puts the hook back."""
    b = batches(1)[0]
    net = classifier(False)
    net(b.ids, b.lengths)
    if copy_how == "deepcopy":
        other = copy.deepcopy(net)
    else:
        buf = io.BytesIO()
        torch.save(net, buf)
        buf.seek(0)
        other = torch.load(buf, weights_only=False)
    assert not other.embedding.weight._post_accumulate_grad_hooks
    torch.nn.functional.cross_entropy(other(b.ids, b.lengths), b.labels).backward()
    assert not other.embedding.weight.grad.to_dense()[PAD].any()
    assert len(other.embedding.weight._post_accumulate_grad_hooks) == 1
    other(b.ids, b.lengths)  # one hook, however many lookups
    assert len(other.embedding.weight._post_accumulate_grad_hooks) == 1


@pytest.mark.parametrize("case", ["dense", "float64", "no padding row"])
def test_elsewhere_it_is_torchs_embedding(case):
    ids = torch.tensor([[3, 1, 0, 0], [2, 2, 1, 0]])
    kw = {"sparse": case != "dense", "padding_idx": None if case == "no padding row" else 0}
    dtype = torch.float64 if case == "float64" else torch.float32
    torch.manual_seed(1)
    ours = fast.Embedding(5, 3, dtype=dtype, **kw)
    theirs = torch.nn.Embedding(5, 3, dtype=dtype, **kw)
    theirs.load_state_dict(ours.state_dict())
    for emb in (ours, theirs):
        (emb(ids) * torch.arange(3, dtype=dtype)).sum().backward()
    g, h = ours.weight.grad, theirs.weight.grad
    assert torch.equal(g.to_dense() if g.is_sparse else g, h.to_dense() if h.is_sparse else h)
    assert not ours.weight._post_accumulate_grad_hooks
