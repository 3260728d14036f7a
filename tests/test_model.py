"""The classifier: packed and padded agree, padding never reaches the correct poolings."""

from __future__ import annotations

import itertools

import pytest
import torch

from rnnsweep.model import TextClassifier, reverse_within_lengths

VOCAB, CLASSES = 40, 4


def make(arch="lstm", packed=False, **kw) -> TextClassifier:
    torch.manual_seed(0)
    model = TextClassifier(VOCAB, CLASSES, arch=arch, embed_dim=6, hidden_dim=5, packed=packed, **kw)
    return model.eval().double()


def batch(lengths: list[int], width: int | None = None, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    width = width or max(lengths)
    ids = torch.randint(2, VOCAB, (len(lengths), width), generator=g)
    for row, n in enumerate(lengths):
        ids[row, n:] = 0
    return ids, torch.tensor(lengths)


def twin(model: TextClassifier, **changes) -> TextClassifier:
    kw = dict(arch=model.arch, pooling=model.pooling, packed=model.packed, bidirectional=model.bidirectional,
              num_layers=model.num_layers)
    kw.update(changes)
    other = make(**kw)
    other.load_state_dict(model.state_dict())
    return other.eval()


RECURRENT = ("rnn", "lstm", "gru")


@pytest.mark.parametrize("arch", RECURRENT)
@pytest.mark.parametrize("pooling", ["last", "mean", "max", "seed_mean", "seed_hlast"])
def test_packed_equals_padded_for_equal_lengths_unidirectional(arch, pooling):
    padded = make(arch, pooling=pooling)
    packed = twin(padded, packed=True)
    ids, lengths = batch([7, 7, 7])
    torch.testing.assert_close(packed(ids, lengths), padded(ids, lengths))


@pytest.mark.parametrize("arch,layers,bi,pooling", list(itertools.product(RECURRENT, (1, 2), (False, True), ("last", "mean", "max"))))
def test_packed_equals_padded_for_any_lengths_with_correct_pooling(arch, layers, bi, pooling):
    padded = make(arch, pooling=pooling, num_layers=layers, bidirectional=bi)
    packed = twin(padded, packed=True)
    ids, lengths = batch([9, 3, 1, 6])
    torch.testing.assert_close(packed(ids, lengths), padded(ids, lengths))


@pytest.mark.parametrize(
    "arch,layers,bi,pooling,packed",
    [
        *itertools.product(RECURRENT, (1, 2), (False, True), ("last", "mean", "max", "attention"), (False, True)),
        ("bow", 1, False, "mean", False),
        ("bow", 1, False, "max", False),
        ("bow", 1, False, "attention", False),
    ],
)
def test_appending_padding_changes_no_logit(arch, layers, bi, pooling, packed):
    model = make(arch, pooling=pooling, num_layers=layers, bidirectional=bi, packed=packed)
    ids, lengths = batch([5, 2, 4])
    longer = torch.cat([ids, torch.zeros(3, 6, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(longer, lengths), model(ids, lengths), rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch,bi", list(itertools.product(RECURRENT, (False, True))))
def test_last_pooling_equals_each_sequence_read_alone(arch, bi):
    """`last` is the state after the last real token, whatever else shares the batch."""
    model = make(arch, pooling="last", num_layers=2, bidirectional=bi)
    ids, lengths = batch([6, 2, 4])
    batched = model(ids, lengths)
    for row, n in enumerate(lengths.tolist()):
        alone = model(ids[row : row + 1, :n], lengths[row : row + 1])
        torch.testing.assert_close(batched[row : row + 1], alone)


def test_the_lessons_poolings_do_see_padding():
    """seed_mean / seed_hlast reproduce the lesson as written, padding effects included."""
    ids, lengths = batch([5, 2, 4])
    longer = torch.cat([ids, torch.zeros(3, 6, dtype=torch.long)], dim=1)
    for pooling in ("seed_mean", "seed_hlast"):
        model = make("lstm", pooling=pooling)
        assert not torch.allclose(model(longer, lengths), model(ids, lengths))
    packed = make("lstm", pooling="seed_hlast", packed=True)  # the lesson's packed LSTM is exact
    torch.testing.assert_close(packed(longer, lengths), packed(ids, lengths))


def test_reverse_within_lengths_keeps_padding_in_place():
    x = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    out = reverse_within_lengths(x.unsqueeze(2), torch.tensor([3, 2])).squeeze(2)
    assert out.tolist() == [[3, 2, 1, 0], [5, 4, 0, 0]]


def test_gradients_reach_both_directions_of_a_padded_bidirectional_stack():
    model = make("gru", pooling="last", num_layers=2, bidirectional=True).train()
    ids, lengths = batch([5, 3])
    model(ids, lengths).sum().backward()
    for name, p in model.named_parameters():
        if name.startswith("rnn."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    # The single-direction helpers own nothing that trains.
    assert all(not n.startswith("_one_direction") for n, _ in model.named_parameters())


def test_bow_refuses_recurrent_pooling():
    with pytest.raises(ValueError, match="mean, max, attention"):
        TextClassifier(VOCAB, CLASSES, arch="bow", embed_dim=6, hidden_dim=5, pooling="last")


def test_attention_pooling_learns_its_weights_and_sees_only_real_tokens():
    model = make("gru", pooling="attention", bidirectional=True)
    ids, lengths = batch([5, 2, 4])
    x = model.embedding(ids)
    out = model._bidirectional_padded(x, lengths)
    mask = ids != 0
    attention = model.attention
    scores = attention.context(torch.tanh(attention.project(out))).squeeze(2).masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=1)
    assert torch.all(weights[~mask] == 0) and torch.allclose(weights.sum(1), torch.ones(3, dtype=weights.dtype))
    # Its parameters train: they get gradients, and they are the model's own.
    model.train()
    model(ids, lengths).sum().backward()
    assert attention.project.weight.grad.abs().sum() > 0 and attention.context.weight.grad.abs().sum() > 0
    assert {"attention.project.weight", "attention.context.weight"} <= dict(model.named_parameters()).keys()
