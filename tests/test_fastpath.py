"""The fast training path: bucketed batches, Adam implementations, lazy (sparse) Adam, AMP, epoch size."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY
from rnnsweep import config, run
from rnnsweep.data import EncodedTexts, batches
from rnnsweep.data.tokenization import PAD_ID
from rnnsweep.data.batches import batch_rows, collate, num_batches
from rnnsweep.model import TextClassifier
from rnnsweep.fast.optimizers import DenseAdam, LazyAdam, RowAdam, ScatteredGrad, make_optimizer
from rnnsweep.loop import clip_grad_norm


def texts(n: int = 1000, seed: int = 0) -> EncodedTexts:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 80, size=n)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    return EncodedTexts(rng.integers(2, 50, size=int(offsets[-1])), offsets, rng.integers(0, 4, size=n))


def padding(data: EncodedTexts, rows: list[np.ndarray]) -> int:
    return sum(int(data.lengths[r].max()) * len(r) - int(data.lengths[r].sum()) for r in rows)


def test_bucketed_batches_cover_every_row_once_with_far_less_padding():
    data = texts()
    g = torch.Generator().manual_seed(1)
    bucketed = batch_rows(data, 16, shuffle=True, generator=g, bucket_pool=20)
    g.manual_seed(1)
    assert all(np.array_equal(a, b) for a, b in
               zip(bucketed, batch_rows(data, 16, shuffle=True, generator=g, bucket_pool=20)))
    assert sorted(np.concatenate(bucketed).tolist()) == list(range(len(data)))
    assert len(bucketed) == num_batches(data, 16)
    g.manual_seed(1)
    random = batch_rows(data, 16, shuffle=True, generator=g)
    assert padding(data, bucketed) < padding(data, random) / 5
    # Batches are shuffled too: their lengths do not come in sorted order.
    maxima = [int(data.lengths[r].max()) for r in bucketed]
    assert maxima != sorted(maxima)


def test_epoch_size_keeps_the_first_batches():
    data = texts()
    rows = batch_rows(data, 16, shuffle=True, generator=torch.Generator().manual_seed(0), limit=100)
    assert len(rows) == 7 == num_batches(data, 16, limit=100)


def batch_rows_as_defined(data, batch_size, *, shuffle, generator, bucket_pool, limit):
    """batch_rows' order as its docstring defines it, pool by pool: a seed's batches decide a run's
    numbers, so a faster way to cut them must cut the same ones."""
    order = torch.randperm(len(data), generator=generator).numpy() if shuffle else np.arange(len(data))
    if bucket_pool:
        rows, pool = [], batch_size * bucket_pool
        for start in range(0, len(data), pool):
            chunk = order[start:start + pool]
            chunk = chunk[np.argsort(data.lengths[chunk], kind="stable")]
            rows += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        if shuffle:
            rows = [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()]
    else:
        rows = [order[i:i + batch_size] for i in range(0, len(data), batch_size)]
    return rows if limit is None else rows[:-(-limit // batch_size)]


@pytest.mark.parametrize("n", [1, 17, 801, 1000])
@pytest.mark.parametrize("bucket_pool", [None, 1, 4, 50])
def test_batches_are_cut_as_defined_for_every_epoch_size(n, bucket_pool):
    data = texts(n)
    for batch_size in (1, 16):
        for shuffle in (True, False):
            for limit in (None, 1, 50, n, 10 * n):
                ours, defined = (cut(data, batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(3),
                                     bucket_pool=bucket_pool, limit=limit)
                                 for cut in (batch_rows, batch_rows_as_defined))
                assert len(ours) == len(defined) and all(map(np.array_equal, ours, defined))


def padded_as_defined(data: EncodedTexts, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch's (ids padded with PAD_ID to its longest row, lengths, labels), row by row."""
    lengths = data.lengths[rows]
    ids = np.full((len(rows), int(lengths.max(initial=0))), PAD_ID, dtype=np.int64)
    for b, row in enumerate(rows):
        ids[b, : lengths[b]] = data.ids[data.offsets[row] : data.offsets[row + 1]]
    return ids, lengths, data.labels[rows]


@pytest.mark.parametrize("chunk_rows", [1, 40, batches.CHUNK_ROWS])
def test_iterate_cuts_the_batches_batch_rows_names_across_its_chunks(monkeypatch, chunk_rows):
    # iterate cuts many batches per compiled call into views of one buffer: every batch must still
    # be the one batch_rows names, padded as defined, and no two may share memory.
    monkeypatch.setattr(batches, "CHUNK_ROWS", chunk_rows)
    for n in (1, 17, 801):
        data = texts(n)
        for batch_size, shuffle, bucket_pool, limit in [(1, True, None, None), (16, True, 4, None), (16, False, None, 50),
                                                        (16, True, 50, 300), (7, False, 3, None)]:
            order = dict(shuffle=shuffle, bucket_pool=bucket_pool, limit=limit)
            names = batch_rows(data, batch_size, generator=torch.Generator().manual_seed(5), **order)
            cut = list(batches.iterate(data, batch_size, generator=torch.Generator().manual_seed(5), **order))
            assert len(cut) == len(names)
            with_rows = list(batches.iterate_with_rows(data, batch_size, generator=torch.Generator().manual_seed(5),
                                                       **order))
            assert all(np.array_equal(rows, named) and torch.equal(batch.ids, b.ids)
                       for (rows, batch), named, b in zip(with_rows, names, cut, strict=True))
            for batch, rows in zip(cut, names):
                ids, lengths, labels = padded_as_defined(data, rows)
                assert batch.ids.dtype == torch.int64 and batch.ids.is_contiguous()
                assert np.array_equal(batch.ids.numpy(), ids)
                assert np.array_equal(batch.lengths.numpy(), lengths) and np.array_equal(batch.labels.numpy(), labels)
            for k, batch in enumerate(cut):  # a batch sharing memory with an earlier one overwrites it here
                for part in (batch.ids, batch.lengths, batch.labels):
                    part.fill_(-k)
            assert all(bool((part == -k).all()) for k, b in enumerate(cut) for part in (b.ids, b.lengths, b.labels))


def test_iterate_builds_the_epochs_order_at_the_first_batch():
    # fit starts the epoch's clock after asking for the epoch's batches: the shuffle and the
    # pools' sort must happen inside it, at the first batch, not when iterate is called.
    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    epoch = batches.iterate(texts(100), 16, shuffle=True, generator=g, bucket_pool=2)
    assert torch.equal(g.get_state(), before)
    next(epoch)
    assert not torch.equal(g.get_state(), before)


def test_collate_reads_memory_mapped_int32_arrays(tmp_path):
    data = texts(50)
    np.save(tmp_path / "ids.npy", data.ids.astype(np.int32))
    mapped = EncodedTexts(np.load(tmp_path / "ids.npy", mmap_mode="r"), data.offsets, data.labels)
    a, b = collate(data, np.array([3, 1, 7])), collate(mapped, np.array([3, 1, 7]))
    assert torch.equal(a.ids, b.ids) and b.ids.dtype == torch.int64


BATCH_WARM_UP_SCRIPT = """
import json, sys
import numpy as np, torch
from pathlib import Path
from rnnsweep.data import EncodedTexts, batches

root = Path(sys.argv[1])
rng = np.random.default_rng(0)
lengths = rng.integers(1, 30, size=500)
arrays = {"ids": rng.integers(2, 50, size=int(lengths.sum())).astype(np.int32),
          "offsets": np.concatenate(([0], np.cumsum(lengths))), "labels": rng.integers(0, 4, size=500)}
for name, array in arrays.items():
    np.save(root / f"{name}.npy", array)
data = EncodedTexts(*(np.load(root / f"{name}.npy", mmap_mode="r") for name in arrays))
loops = [batches._gather, batches._sort_pools]
batches.warm_up(data)
warmed = [len(loop.signatures) for loop in loops]
for batch in batches.iterate(data, 16, shuffle=True, generator=torch.Generator().manual_seed(0), bucket_pool=5, limit=200):
    pass
for batch in batches.iterate(data, 64, shuffle=False, bucket_pool=8):  # as evaluation cuts them
    pass
print(json.dumps([warmed, [len(loop.signatures) for loop in loops]]))
"""


def test_the_batch_warm_up_readies_the_loops_an_epoch_of_a_memory_mapped_cache_calls(tmp_path):
    res = subprocess.run([sys.executable, "-c", BATCH_WARM_UP_SCRIPT, str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    warmed, cut = json.loads(res.stdout.strip().splitlines()[-1])
    assert all(n >= 1 for n in warmed) and cut == warmed


def model(sparse: bool = False) -> TextClassifier:
    torch.manual_seed(0)
    return TextClassifier(60, 4, arch="lstm", embed_dim=8, hidden_dim=8, pooling="last", sparse_embedding=sparse)


def split_vocab_texts() -> EncodedTexts:
    """64 rows: the first 16 use tokens 2-19 only, the rest tokens 30-49 only."""
    rng = np.random.default_rng(5)
    lengths = rng.integers(3, 20, size=64)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    ids = rng.integers(30, 50, size=int(offsets[-1]))
    ids[: offsets[16]] = rng.integers(2, 20, size=int(offsets[16]))
    return EncodedTexts(ids, offsets, rng.integers(0, 4, size=64))


def train_steps(net, opt, steps: int = 3, data: EncodedTexts | None = None) -> None:
    data = data if data is not None else texts(64)
    for i in range(steps):
        b = collate(data, np.arange(i * 16, i * 16 + 16))
        loss = torch.nn.functional.cross_entropy(net(b.ids, b.lengths), b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@pytest.mark.parametrize("impl", ["fused", "foreach"])
def test_fused_and_foreach_adam_are_the_same_algorithm_as_the_default(impl):
    reference, other = model(), model()
    train_steps(reference, make_optimizer("adam", reference, lr=1e-2, betas=[0.9, 0.999], eps=1e-8, impl="for_loop"))
    opt = make_optimizer("adam", other, lr=1e-2, betas=[0.9, 0.999], eps=1e-8, impl=impl)
    assert opt.defaults["fused" if impl == "fused" else "foreach"] is True
    train_steps(other, opt)
    for p, q in zip(reference.parameters(), other.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["fused", "foreach", "for_loop"])
@pytest.mark.parametrize("decoupled,weight_decay", [(False, 0.0), (True, 0.1)])
@pytest.mark.parametrize("first_missing", [0, 4, None])
def test_dense_adam_gives_torchs_adam_bit_for_bit(impl, decoupled, weight_decay, first_missing):
    """Across a learning-rate change, a parameter without a gradient (from the first step, from a
    later one, never: fused Adam then keeps one step count for all), and a checkpoint."""
    torch.manual_seed(0)
    start = [torch.randn(7, 5), torch.randn(5), torch.randn(3)]
    ours, theirs = ([torch.nn.Parameter(t.clone()) for t in start] for _ in range(2))
    kwargs = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    reference = cls(theirs, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay, **kwargs)
    opt = DenseAdam(ours, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay, decoupled=decoupled,
                    impl=kwargs)
    for step in range(12):
        grads = [torch.randn_like(t) for t in start]
        for o, params in ((opt, ours), (reference, theirs)):
            if step == 6:
                o.param_groups[0]["lr"] = 3e-3
            for p, g in zip(params, grads):
                missing = first_missing is not None and step >= first_missing and step % 3 == 0
                p.grad = None if (missing and p is params[2]) else g.clone()
            o.step()
        if step == 8:  # resume from a copy of the state, as from a checkpoint
            state = copy.deepcopy(opt.state_dict())
            opt = DenseAdam(ours, lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay,
                            decoupled=decoupled, impl=kwargs)
            opt.load_state_dict(state)
        for p, q in zip(ours, theirs):
            assert torch.equal(p, q), f"step {step}"
    assert (opt._fused_kernel is not None) == (impl == "fused" and first_missing is None)


def test_the_separate_adamw_kernel_of_older_torch_gives_the_same_steps(monkeypatch):
    """torch before 2.7 has no `decoupled_weight_decay` in its functional Adam; DenseAdam then
    calls torch.optim.adamw.adamw, which torch still ships: the same call must give the same numbers."""
    from torch.optim.adamw import adamw

    from rnnsweep.fast import optimizers as optim

    def steps(params):
        opt = DenseAdam(params, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, decoupled=True,
                        impl={"fused": True})
        for seed in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(seed))
            if seed == 0:  # a parameter without a gradient: DenseAdam takes the functional path
                params[1].grad = None
            opt.step()
        return params

    start = [torch.randn(6, 4), torch.randn(3)]
    new = steps([torch.nn.Parameter(t.clone()) for t in start])
    monkeypatch.setattr(optim, "_functional_adam", lambda decoupled: adamw)
    old = steps([torch.nn.Parameter(t.clone()) for t in start])
    for a, b in zip(new, old):
        assert torch.equal(a, b)


def test_the_cpu_optimizers_train_without_importing_torch_dynamo():
    """torch.optim's first optimizer imports torch._dynamo (seconds per process); ours must not."""
    script = """
import sys, torch
from rnnsweep.model import TextClassifier
from rnnsweep.fast.optimizers import make_optimizer
for name in ("adam", "sparse_adam"):
    net = TextClassifier(100, 4, arch="lstm", embed_dim=8, hidden_dim=8, pooling="last", sparse_embedding=True)
    opt = make_optimizer(name, net, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, embedding_grad="deferred")
    net(torch.randint(1, 100, (4, 6)), torch.tensor([6, 5, 3, 1])).sum().backward()
    opt.step()
    opt.zero_grad()
    opt.load_state_dict(opt.state_dict())
print(sorted(m for m in sys.modules if m.startswith("torch._dynamo")))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_sparse_adam_is_lazy_adam_and_checkpoints_both_parts():
    lazy, dense = model(sparse=True), model()
    opt = make_optimizer("sparse_adam", lazy, lr=1e-2, betas=[0.9, 0.999], eps=1e-8)
    assert isinstance(opt, LazyAdam)
    data = split_vocab_texts()
    train_steps(lazy, opt, steps=2, data=data)
    train_steps(dense, make_optimizer("adam", dense, lr=1e-2, betas=[0.9, 0.999], eps=1e-8), steps=2, data=data)
    assert lazy.embedding.weight.grad.is_sparse
    row = 5  # used by step 1's batch, not by step 2's
    before = model(sparse=True)
    train_steps(before, make_optimizer("sparse_adam", before, lr=1e-2, betas=[0.9, 0.999], eps=1e-8), steps=1,
                data=data)
    # Lazy: a row absent from step 2 keeps its value; dense Adam keeps moving it (momentum).
    assert torch.equal(lazy.embedding.weight[row], before.embedding.weight[row])
    assert not torch.equal(dense.embedding.weight[row], before.embedding.weight[row])
    # The state dict holds both optimizers and restores them.
    state = copy.deepcopy(opt.state_dict())  # a checkpoint holds copies, not the live moments
    assert set(state) == {"sparse", "dense"}
    clone = model(sparse=True)
    clone.load_state_dict(lazy.state_dict())
    opt2 = make_optimizer("sparse_adam", clone, lr=1e-2, betas=[0.9, 0.999], eps=1e-8)
    opt2.load_state_dict(state)
    train_steps(lazy, opt, steps=1, data=data)
    train_steps(clone, opt2, steps=1, data=data)
    for p, q in zip(lazy.parameters(), clone.parameters()):
        torch.testing.assert_close(p, q)


def test_clipping_sparse_gradients_matches_clipping_their_dense_form():
    sparse, dense = model(sparse=True), model()
    data = texts(16)
    b = collate(data, np.arange(16))
    for net in (sparse, dense):
        torch.nn.functional.cross_entropy(net(b.ids, b.lengths), b.labels).backward()
    clip_grad_norm(list(sparse.parameters()), 0.01)
    torch.nn.utils.clip_grad_norm_(dense.parameters(), 0.01)
    torch.testing.assert_close(sparse.embedding.weight.grad.to_dense(), dense.embedding.weight.grad)
    torch.testing.assert_close(sparse.rnn.weight_hh_l0.grad, dense.rnn.weight_hh_l0.grad)


@pytest.mark.parametrize("extra", [
    ["optimizer=sparse_adam", "train.grad_clip=0.5"],
    ["batching=packed", "batching.bucket=true"],
    ["train.epoch_size=50"],
])
def test_fast_path_options_train_end_to_end(compose_cfg, tmp_path, extra):
    settings = config.validate(compose_cfg([*TINY, *extra]))
    record = run.train(settings, None, tmp_path)
    assert record["status"] == "completed", record["error"]
    assert np.isfinite(record["metrics"]["train/loss"])
    if "train.epoch_size=50" in extra:
        assert record["metrics"]["steps"] == 2  # 50 examples at batch 32


@pytest.mark.parametrize("compiled", [True, False])
def test_runtime_compiled_rnn_picks_the_layer_a_run_trains_and_threads_reach_its_loops(compose_cfg, tmp_path,
                                                                                      monkeypatch, compiled):
    import numba

    from rnnsweep import fast
    calls = []
    real_layer = fast.layer
    monkeypatch.setattr(fast, "layer", lambda *a, **kw: calls.append(1) or real_layer(*a, **kw))  # counts, then computes
    fast.set_threads(2)
    settings = config.validate(compose_cfg([*TINY, "model=lstm", "runtime.device=cpu", "runtime.threads=1",
                                            f"runtime.compiled_rnn={str(compiled).lower()}"]))
    record = run.train(settings, None, tmp_path)
    assert record["status"] == "completed", record["error"]
    assert bool(calls) == compiled
    assert numba.get_num_threads() == 1


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: every thread count is one")
def test_a_fresh_process_trains_on_the_threads_it_was_given_after_numbas_pool_starts(tmp_path):
    # A launcher's worker (submitit, Ray) runs its first job in a process where numba's pool has
    # not started yet; starting it must not hand torch every core again.
    script = ("import sys, torch; from conftest import TINY, compose_config; from rnnsweep import config, run; "
              "from pathlib import Path; "
              "cfg = config.validate(compose_config([*TINY, 'model=lstm', 'runtime.device=cpu', 'runtime.threads=1'])); "
              "record = run.train(cfg, None, Path(sys.argv[1])); "
              "print(record['status'], record['env']['threads'], torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).parent, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split()[-3:] == ["completed", "1", "1"]


def test_amp_on_the_cpu_is_refused_before_training(compose_cfg, tmp_path):
    settings = config.validate(compose_cfg([*TINY, "runtime.amp=true", "runtime.device=cpu"]))
    with pytest.raises(run.RunFailed, match="runtime.amp=true needs a CUDA device"):
        run.train(settings, None, tmp_path)


def test_sparse_adam_has_no_weight_decay(compose_cfg):
    with pytest.raises(config.ConfigError, match="optimizer.weight_decay"):
        config.validate(compose_cfg(["optimizer=sparse_adam", "+optimizer.weight_decay=0.1"]))


def test_scattered_embedding_gradient_is_adams_update():
    dense, scattered = model(), model(sparse=True)
    train_steps(dense, make_optimizer("adam", dense, lr=1e-2, betas=[0.9, 0.999], eps=1e-8, impl="fused"), steps=4)
    opt = make_optimizer("adam", scattered, lr=1e-2, betas=[0.9, 0.999], eps=1e-8, impl="fused")
    assert isinstance(opt, ScatteredGrad)
    train_steps(scattered, opt, steps=4)
    # Rows absent from a batch still decay and move, as under dense Adam (unlike lazy Adam).
    for p, q in zip(dense.parameters(), scattered.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers,bidirectional,pooling", [
    (1, False, "seed_hlast"), (2, False, "seed_hlast"), (1, False, "seed_mean"), (2, False, "last"),
    (1, True, "last"), (2, True, "mean"), (1, True, "max"),
])
def test_packed_batches_on_the_padded_kernel_equal_pytorchs_packed_path(arch, layers, bidirectional, pooling):
    assert_twins_agree("native_packing", 3, 1e-5, arch=arch, num_layers=layers, bidirectional=bidirectional,
                       pooling=pooling, packed=True)


def assert_twins_agree(switch: str, data_seed: int, grad_rtol: float, **model_kw):
    """Two models alike but for `switch` (on, off) give the same outputs and gradients on one batch."""
    b = collate(texts(12, seed=data_seed), np.arange(12))
    nets = []
    for on in (True, False):
        torch.manual_seed(0)
        nets.append(TextClassifier(60, 4, embed_dim=8, hidden_dim=6, **model_kw, **{switch: on}))
    outs = [net(b.ids, b.lengths) for net in nets]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for out in outs:
        out.square().sum().backward()
    for (name, p), q in zip(nets[0].named_parameters(), nets[1].parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=grad_rtol, atol=1e-6, msg=name)
    return nets, b


@pytest.mark.parametrize("overrides,message", [
    (["batching=padded", "batching.native_packing=true"], "batching.native_packing=true: only changes how packed"),
    (["lesson=lstm", "topology=bi"], "model.pooling=seed_hlast, topology.bidirectional=true"),
    (["train.epoch_size=0"], "train.epoch_size=0: must be at least 1"),
])
def test_fast_path_settings_that_would_do_nothing_or_break_are_refused(compose_cfg, overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        config.validate(compose_cfg(overrides))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["compiled", "torch-ops"])
def test_row_adam_is_torchs_sparse_adam(dtype):
    torch.manual_seed(0)
    ours = torch.nn.Embedding(50, 8, sparse=True, dtype=dtype)
    theirs = torch.nn.Embedding(50, 8, sparse=True, dtype=dtype)
    theirs.load_state_dict(ours.state_dict())
    row_adam = RowAdam(list(ours.parameters()), lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    sparse_adam = torch.optim.SparseAdam(list(theirs.parameters()), lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    for _ in range(30):
        ids = torch.randint(0, 50, (4, 7))  # repeated ids: the gradient has duplicate rows
        for emb, opt in ((ours, row_adam), (theirs, sparse_adam)):
            opt.zero_grad()
            (emb(ids) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layers,bidirectional,pooling,packed", [
    (1, False, "last", False), (2, False, "mean", False), (1, False, "seed_hlast", False),
    (1, False, "seed_mean", True), (1, True, "last", False), (2, True, "max", True),
])
@pytest.mark.parametrize("arch", ["gru", "rnn", "lstm"])
def test_the_compiled_cpu_layers_compute_what_torchs_layers_do(arch, layers, bidirectional, pooling, packed):
    nets, b = assert_twins_agree("compiled_rnn", 4, 1e-4, arch=arch, num_layers=layers, bidirectional=bidirectional,
                                 pooling=pooling, packed=packed)
    with torch.inference_mode():  # evaluation runs the same kernel without a graph
        torch.testing.assert_close(nets[0](b.ids, b.lengths), nets[1](b.ids, b.lengths), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", [torch.nn.GRU, torch.nn.RNN, torch.nn.LSTM])
def test_a_compiled_layer_gives_torchs_outputs_and_gradients_at_lesson_sizes(kind):
    from rnnsweep.fast import cpu_rnn
    torch.manual_seed(0)
    rnn = kind(64, 32, batch_first=True)
    x = torch.randn(16, 43, 64, requires_grad=True)
    weights = [rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0]
    grad = torch.randn(16, 43, 32)
    expected = torch.autograd.grad(rnn(x)[0], [x, *weights], grad)
    rnn64, x64 = copy.deepcopy(rnn).double(), x.detach().double().requires_grad_()
    truth = torch.autograd.grad(rnn64(x64)[0], [x64, *rnn64.parameters()], grad.double())
    out = cpu_rnn.layer(rnn, x, *weights)
    torch.testing.assert_close(out, rnn(x)[0], rtol=1e-5, atol=1e-6)
    # A weight's gradient sums 688 float32 products, in an order that differs between BLAS builds:
    # ours must be as close to the float64 gradient as torch's own float32 one is (x4, + 1e-6).
    for ours, theirs, exact in zip(torch.autograd.grad(out, [x, *weights], grad), expected, truth):
        torch_error = (theirs.double() - exact).abs().max().item()
        assert (ours.double() - exact).abs().max().item() <= 4 * torch_error + 1e-6
    relu, projected = torch.nn.RNN(64, 32, nonlinearity="relu"), torch.nn.LSTM(64, 32, proj_size=16)
    assert cpu_rnn.applies(x, rnn) and not cpu_rnn.applies(x.double(), rnn)
    assert not cpu_rnn.applies(x, relu) and not cpu_rnn.applies(x, projected)


@pytest.mark.parametrize("kind", [torch.nn.GRU, torch.nn.RNN, torch.nn.LSTM])
def test_a_compiled_layer_split_over_threads_gives_the_one_thread_numbers_bit_for_bit(kind):
    """Each thread takes whole sequences of the batch: any scratch shared between them would show."""
    from rnnsweep.fast import cpu_rnn
    torch.manual_seed(0)
    rnn = kind(24, 16, batch_first=True)
    x = torch.randn(13, 29, 24, requires_grad=True)  # a batch that two threads split unevenly
    weights = [rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0]
    grad = torch.randn(13, 29, 16)
    results = []
    try:
        for threads in (1, 2):
            if cpu_rnn.set_threads(threads) != threads:
                pytest.skip("numba has one thread here, or a pool the layers do not use")
            out = cpu_rnn.layer(rnn, x, *weights)
            results.append([out, *torch.autograd.grad(out, [x, *weights], grad)])
    finally:
        cpu_rnn.set_threads(torch.get_num_threads())
    for one, two in zip(*results):
        assert torch.equal(one, two)


def test_compiled_layers_stay_on_one_thread_where_numbas_pool_would_not_pay():
    script = ("from rnnsweep.fast import cpu_rnn; import numba; "
              "print(cpu_rnn.set_threads(2), numba.get_num_threads())")
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue", "NUMBA_NUM_THREADS": "2"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert res.stdout.split() == ["1", "1"]


WARM_UP_SCRIPT = """
import json
import sys
import torch
from rnnsweep import fast
from rnnsweep.fast import cpu_rnn, row_adam
from rnnsweep.model import TextClassifier
from rnnsweep.fast.optimizers import make_optimizer

name = sys.argv[1]
loops = [cpu_rnn._lstm_forward, cpu_rnn._lstm_backward, row_adam._merge_rows, cpu_rnn._zero_rows]
if name == "adam":
    loops += [row_adam.adam_rows, row_adam._catch_up]

model = TextClassifier(50, 3, arch="lstm", embed_dim=8, hidden_dim=8, pooling="last", sparse_embedding=True)
opt = make_optimizer(name, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, embedding_grad="deferred")
rng = torch.random.get_rng_state()
fast.warm_up(model, opt, compiled_layers=True)
assert torch.equal(rng, torch.random.get_rng_state()), "the warm-up drew from the run's random stream"
warmed = [len(loop.signatures) for loop in loops]
ids, lengths = torch.randint(1, 50, (3, 5)), torch.tensor([5, 4, 2])
for _ in range(3):
    torch.nn.functional.cross_entropy(model(ids, lengths), torch.tensor([0, 1, 2])).backward()
    opt.step()
    opt.zero_grad()
if name == "adam":
    opt.flush()
with torch.inference_mode():
    model(ids, lengths)
print(json.dumps([warmed, [len(loop.signatures) for loop in loops]]))
"""


@pytest.mark.parametrize("optimizer", ["adam", "sparse_adam"])
def test_the_warm_up_readies_every_loop_training_calls_so_none_compiles_inside_the_timed_epoch(optimizer):
    """A loop that training calls with other argument types than the warm-up did would compile
    anew inside the epoch: then its count of compiled signatures grows after the warm-up."""
    res = subprocess.run([sys.executable, "-c", WARM_UP_SCRIPT, optimizer], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    warmed, trained = json.loads(res.stdout.strip().splitlines()[-1])
    assert all(n >= 1 for n in warmed)
    assert trained == warmed


@pytest.mark.parametrize("name,embedding_grad", [("adam", "deferred"), ("adamw", "deferred"), ("adam", "scattered"),
                                                 ("sparse_adam", "sparse")])
def test_every_fast_optimizer_is_a_torch_optimizer_that_an_lr_scheduler_drives(name, embedding_grad):
    """A scheduler's learning rate reaches every part of the optimizer: ours, stepped by StepLR,
    trains the model as the same optimizer given that learning rate by hand."""
    kw = dict(lr=1e-2, betas=[0.9, 0.999], eps=1e-8, embedding_grad=embedding_grad)
    driven, by_hand = model(sparse=True), model(sparse=True)
    opt = make_optimizer(name, driven, **kw)
    assert isinstance(opt, torch.optim.Optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    reference = make_optimizer(name, by_hand, **kw)
    data = texts(64)
    for step in range(4):
        train_steps(driven, opt, 1, data.subset(np.arange(step * 16, step * 16 + 16)))
        scheduler.step()
        train_steps(by_hand, reference, 1, data.subset(np.arange(step * 16, step * 16 + 16)))
        for group in reference.param_groups:
            group["lr"] = 1e-2 * 0.5 ** (step + 1)
    assert all(g["lr"] == pytest.approx(1e-2 / 16) for g in opt.param_groups)
    for p, q in zip(driven.state_dict().values(), by_hand.state_dict().values()):
        assert torch.equal(p, q)



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["compiled", "torch"])
@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e-6])
def test_sparse_adam_is_torchs_sparse_adam_bit_for_bit(dtype, scale):
    """optimizer=sparse_adam's table takes torch.optim.SparseAdam's steps exactly: with small
    gradients too (where Adam's and SparseAdam's formulas part), repeated rows, a changed lr,
    betas and eps."""
    torch.manual_seed(0)
    ours, theirs = (torch.nn.Embedding(50, 6, sparse=True).to(dtype) for _ in range(2))
    theirs.load_state_dict(ours.state_dict())
    opt = RowAdam(list(ours.parameters()), lr=1e-2, betas=(0.8, 0.99), eps=1e-8)
    reference = torch.optim.SparseAdam(list(theirs.parameters()), lr=1e-2, betas=(0.8, 0.99), eps=1e-8)
    g = torch.Generator().manual_seed(1)
    for step in range(30):
        if step == 15:  # read at every step, as SparseAdam does (a schedule may change any of them)
            for group in (opt.param_groups[0], reference.param_groups[0]):
                group.update(lr=3e-3, betas=(0.85, 0.995), eps=1e-6)
        ids = torch.randint(0, 50, (2, 7), generator=g)
        ids[0, :3] = ids[1, 0]  # a row looked up several times
        weights = torch.randn(2, 7, 6, generator=g, dtype=dtype) * scale
        for emb, o in ((ours, opt), (theirs, reference)):
            o.zero_grad()
            (emb(ids) * weights).sum().backward()
            o.step()
        assert torch.equal(ours.weight, theirs.weight), f"step {step}"
    assert (opt._slots[0] is not None) == (dtype == torch.float32)
