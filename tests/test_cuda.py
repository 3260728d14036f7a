"""The same guarantees on a GPU (cuDNN kernels). Skipped where no CUDA device is visible."""

from __future__ import annotations

import itertools

import pytest
import torch

from conftest import TINY
from rnnsweep import config, run
from rnnsweep.model import TextClassifier

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("arch,bi,pooling", list(itertools.product(("rnn", "lstm", "gru"), (False, True), ("last", "mean", "max"))))
def test_padded_packed_and_padding_invariance_on_cuda(arch, bi, pooling):
    torch.manual_seed(0)
    kw = dict(arch=arch, embed_dim=8, hidden_dim=6, num_layers=2, bidirectional=bi, pooling=pooling)
    # float64: cuDNN's default TF32 arithmetic would blur float32 comparisons to about 1e-3.
    padded = TextClassifier(50, 4, **kw).cuda().double().eval()
    packed = TextClassifier(50, 4, packed=True, **kw).cuda().double().eval()
    packed.load_state_dict(padded.state_dict())
    ids = torch.randint(2, 50, (4, 9), device="cuda")
    lengths = torch.tensor([9, 2, 5, 1])
    for row, n in enumerate(lengths.tolist()):
        ids[row, n:] = 0
    longer = torch.cat([ids, torch.zeros(4, 5, dtype=torch.long, device="cuda")], dim=1)
    ref = padded(ids, lengths)
    torch.testing.assert_close(packed(ids, lengths), ref)
    torch.testing.assert_close(padded(longer, lengths), ref)


@pytest.mark.parametrize("extra", [
    ["batching=padded"],
    ["batching=packed", "topology=deep_bi", "model=gru"],
    ["runtime.amp=true"],
    ["optimizer=sparse_adam", "runtime.amp=true"],
    ["optimizer.embedding_grad=scattered"],
])
def test_auto_device_trains_on_cuda(compose_cfg, tmp_path, extra):
    cfg = compose_cfg([*TINY, "runtime.device=auto", *extra])
    record = run.train(config.validate(cfg), None, tmp_path)
    assert record["status"] == "completed", record["error"]
    assert record["env"]["device"].startswith("cuda")


def test_a_cuda_run_resumes_from_its_checkpoint(compose_cfg, tmp_path):
    overrides = [*TINY, "runtime.device=cuda", "model=gru", "topology=deep"]
    run.train(config.validate(compose_cfg([*overrides, "train.epochs=1", "ledger.keep_checkpoint=true"])), None, tmp_path)
    record = run.train(config.validate(compose_cfg([*overrides, "train.epochs=2"])), None, tmp_path, resume=True)
    assert record["status"] == "completed" and record["resumed_from_epoch"] == 1
    assert [h["epoch"] for h in record["history"]] == [1, 2]
