"""rnnsweep's embedding (fast/embedding.py): nn.Embedding's forward, its sparse gradient summed per
row and ascending in one pass. The optimizers took torch's per-token entries and summed them in
order of appearance (row_adam._merge_rows); the new gradient must be exactly that sum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnsweep.fast import Embedding
from rnnsweep.fast.row_adam import _merge_rows, gradient_rows

V, D = 40, 6


def pair(padding_idx, **kwargs):
    torch.manual_seed(0)
    ours = Embedding(V, D, padding_idx=padding_idx, sparse=True, **kwargs)
    theirs = torch.nn.Embedding(V, D, padding_idx=padding_idx, sparse=True, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def backward(table, ids, weights):
    out = table(ids)
    (out * weights).sum().backward()
    return out


@pytest.mark.parametrize("padding_idx", [None, 0, 3])
def test_the_gradient_is_torchs_entries_summed_per_row_in_order_of_appearance(padding_idx):
    ours, theirs = pair(padding_idx)
    ids = torch.tensor([[5, 9, 5, 0, 39, 3], [9, 9, 3, 5, 0, 0], [1, 3, 3, 3, 5, 9]])
    weights = torch.randn(*ids.shape, D)
    torch.testing.assert_close(backward(ours, ids, weights), backward(theirs, ids, weights), rtol=0, atol=0)
    got, want = ours.weight.grad, theirs.weight.grad
    assert got.is_sparse  # autograd's accumulation drops the coalesced flag; the rows are so anyway
    rows = got._indices()[0].tolist()
    assert rows == sorted(set(ids.flatten().tolist()) - {padding_idx})
    assert rows == want.coalesce().indices()[0].tolist()
    slot = np.full(V, -1, dtype=np.int64)
    merged_rows, merged = _merge_rows(want._indices()[0].numpy(), want._values().contiguous().numpy(), slot)
    order = merged_rows.argsort()
    assert merged_rows[order].tolist() == rows
    assert np.array_equal(got._values().numpy(), merged[order])  # bit for bit
    torch.testing.assert_close(got.to_dense(), want.to_dense())


def test_the_optimizers_take_its_rows_as_they_are_and_accumulated_gradients_still_sum():
    ours, theirs = pair(0)
    ids = torch.tensor([[7, 2, 7, 0], [2, 2, 11, 0]])
    for _ in range(2):  # no zero_grad between: autograd concatenates the two sparse gradients
        weights = torch.randn(*ids.shape, D)
        backward(ours, ids, weights)
        backward(theirs, ids, weights)
    torch.testing.assert_close(ours.weight.grad.to_dense(), theirs.weight.grad.to_dense())
    rows, values = gradient_rows(ours.weight.grad, np.full(V, -1, dtype=np.int64))
    assert sorted(rows.tolist()) == [2, 7, 11]
    torch.testing.assert_close(torch.from_numpy(values), theirs.weight.grad.coalesce().values()[
        [theirs.weight.grad.coalesce().indices()[0].tolist().index(r) for r in rows]])


@pytest.mark.parametrize("kwargs", [{"sparse": False}, {"max_norm": 1.0}, {"sparse": False, "scale_grad_by_freq": True}])
def test_settings_the_one_pass_does_not_cover_run_nn_embeddings_own_path(kwargs):
    kwargs = {"sparse": True, **kwargs}
    torch.manual_seed(0)
    ours = Embedding(V, D, padding_idx=0, **kwargs)
    theirs = torch.nn.Embedding(V, D, padding_idx=0, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    ids = torch.tensor([[4, 4, 9, 0]])
    weights = torch.randn(*ids.shape, D)
    torch.testing.assert_close(backward(ours, ids, weights), backward(theirs, ids, weights))
    assert ours.weight.grad.is_sparse == theirs.weight.grad.is_sparse
    torch.testing.assert_close(ours.weight.grad.to_dense(), theirs.weight.grad.to_dense())
    torch.testing.assert_close(ours.weight, theirs.weight)  # max_norm renormalised both alike


def test_without_gradients_it_is_a_plain_lookup_and_its_state_is_nn_embeddings():
    ours, theirs = pair(0)
    ids = torch.tensor([[1, 2, 0]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids), rtol=0, atol=0)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight"]
    assert isinstance(ours, torch.nn.Embedding)
