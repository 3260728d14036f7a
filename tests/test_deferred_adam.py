"""Deferred Adam: Adam's update for every embedding row, applied when the row is next read."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch

from rnnsweep import builders, config
from rnnsweep.data.batches import collate
from rnnsweep.fast.optimizers import DeferredAdam
from rnnsweep.fast.row_adam import gradient_rows
from rnnsweep.fast.optimizers import ScatteredGrad, make_optimizer
from test_fastpath import model, split_vocab_texts, texts, train_steps

V, D = 1500, 16


def zipf_gradients(steps: int, seed: int = 0):
    """Sparse gradients over a Zipf-distributed vocabulary: a few rows every step, most rarely."""
    g = torch.Generator().manual_seed(seed)
    probs = 1 / torch.arange(1, V + 1).float()
    for _ in range(steps):
        rows = torch.multinomial(probs, 20, replacement=False, generator=g)
        values = torch.randn(20, D, generator=g) * 1e-2
        yield rows, torch.sparse_coo_tensor(rows[None], values, (V, D), check_invariants=False)


def dense_adam(decoupled: bool, wd: float, steps: int, dtype, lr_at=lambda step: 1e-2, **impl) -> torch.Tensor:
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(V, D).to(dtype))
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = cls([p], lr=lr_at(0), weight_decay=wd, **impl)
    for step, (_, grad) in enumerate(zipf_gradients(steps)):
        opt.param_groups[0]["lr"] = lr_at(step)
        p.grad = grad.to_dense().to(dtype)
        opt.step()
    return p.detach()


def deferred_adam(decoupled: bool, wd: float, steps: int, lr_at=lambda step: 1e-2):
    torch.manual_seed(0)
    start = torch.randn(V, D)  # as dense_adam's
    emb = torch.nn.Embedding(V, D, sparse=True)
    with torch.no_grad():
        emb.weight.copy_(start)
    opt = DeferredAdam([emb], [], lr=lr_at(0), betas=(0.9, 0.999), eps=1e-8, weight_decay=wd, decoupled=decoupled)
    for step, (rows, grad) in enumerate(zipf_gradients(steps)):
        opt.param_groups[0]["lr"] = lr_at(step)
        emb(rows)  # the lookup brings these rows up to date, as a forward pass does
        emb.weight.grad = grad
        opt.step()
    return emb, opt


@pytest.mark.parametrize("decoupled,wd", [(False, 0.0), (True, 0.05)], ids=["adam", "adamw"])
def test_deferred_adam_is_as_close_to_float64_adam_as_torchs_float32_adam(decoupled, wd):
    truth = dense_adam(decoupled, wd, 1500, torch.float64)
    torch_error = (dense_adam(decoupled, wd, 1500, torch.float32, foreach=False).double() - truth).abs()
    emb, _ = deferred_adam(decoupled, wd, 1500)
    ours = emb.state_dict()["weight"]  # reading the weights out brings every row up to date
    our_error = (ours.double() - truth).abs()
    # Replaying a missed step wrongly (bias correction, decay, moments) costs orders of magnitude more.
    assert our_error.max() <= 2 * torch_error.max()
    assert our_error.mean() <= 2 * torch_error.mean()
    assert (truth - torch.randn(V, D, generator=torch.Generator().manual_seed(0)).double()).abs().mean() > 1e3 * our_error.mean()


def adam_table(steps: int, dtype, *, lr: float, beta2: float, wd: float, clip: float | None,
               deferred: bool = False) -> torch.Tensor:
    """The table after `steps` Zipf-sparse steps of AdamW (wd > 0) or Adam: torch's single-tensor
    implementation, or (`deferred`) rnnsweep's; `clip` scales every gradient as clipping would."""
    torch.manual_seed(0)
    start = torch.randn(V, D)
    if deferred:
        emb = torch.nn.Embedding(V, D, sparse=True)
        with torch.no_grad():
            emb.weight.copy_(start)
        opt = DeferredAdam([emb], [], lr=lr, betas=(0.9, beta2), eps=1e-8, weight_decay=wd, decoupled=wd > 0)
        for rows, grad in zipf_gradients(steps):
            emb(rows)
            emb.weight.grad = grad * clip if clip else grad
            opt.step()
        return emb.state_dict()["weight"]
    p = torch.nn.Parameter(start.to(dtype))
    cls = torch.optim.AdamW if wd > 0 else torch.optim.Adam
    opt = cls([p], lr=lr, betas=(0.9, beta2), eps=1e-8, weight_decay=wd, foreach=False)
    for _, grad in zipf_gradients(steps):
        p.grad = (grad * clip if clip else grad).to_dense().to(dtype)
        opt.step()
    return p.detach()


@pytest.mark.parametrize("beta2", [0.999, 0.9999, 0.99999])
@pytest.mark.parametrize("lr", [1e-2, 0.1])
@pytest.mark.parametrize("wd", [0.0, 0.05], ids=["adam", "adamw"])
@pytest.mark.parametrize("clip", [None, 0.37], ids=["unclipped", "clipped"])
def test_deferred_adam_error_is_torchs_own_within_ten_percent(beta2, lr, wd, clip):
    """Against float64 Adam, deferred Adam's float32 error is at most 1.1x torch's float32 Adam's,
    at the max and on average: (1 - beta) and the bias corrections are rounded once, from float64,
    and every step is torch's arithmetic in torch's order."""
    settings = dict(lr=lr, beta2=beta2, wd=wd, clip=clip)
    truth = adam_table(300, torch.float64, **settings)
    torch_error = (adam_table(300, torch.float32, **settings).double() - truth).abs()
    our_error = (adam_table(300, torch.float32, deferred=True, **settings).double() - truth).abs()
    assert our_error.max() <= 1.1 * torch_error.max()
    assert our_error.mean() <= 1.1 * torch_error.mean()


def torch_idle_steps(p0, m0, v0, s0, s1, lr_at, betas, wd, dtype):
    """torch's single-tensor Adam/AdamW from a state at step s0, through steps s0+1..s1 with a zero
    gradient: what deferred Adam's replay must give."""
    p = torch.nn.Parameter(torch.tensor(p0, dtype=dtype))
    cls = torch.optim.AdamW if wd else torch.optim.Adam
    opt = cls([p], lr=lr_at(s0 + 1), betas=betas, eps=1e-8, weight_decay=wd, foreach=False)
    opt.state[p] = {"step": torch.tensor(float(s0)), "exp_avg": torch.tensor(m0, dtype=dtype),
                    "exp_avg_sq": torch.tensor(v0, dtype=dtype)}
    for t in range(s0 + 1, s1 + 1):
        opt.param_groups[0]["lr"] = lr_at(t)
        p.grad = torch.zeros_like(p)
        opt.step()
    return p.detach().double(), opt.state[p]["exp_avg"].double(), opt.state[p]["exp_avg_sq"].double()


def served_by_a_series(x, m0, s0, s1, betas, horizon):
    """Which elements of a row idle from s0 to s1 (x = sqrt(v)) the closed form computes by a
    series (float64 Adam, rounded once) rather than step by step, by replay's rules. Near eps (x
    g_min within a factor of two of it), 1 / (eps + x g_t) is expanded around the middle of g_t's
    range over the window, while its ratio x |g_t - g_mid| / (eps + x g_mid) is at most 1/2 and
    the rounding its highest term carries, growth^(terms - 1), at most 2^20."""
    from rnnsweep.fast import row_adam

    window = min(s1 - s0, horizon)
    g_first, g_last = (betas[1] ** (j / 2) / math.sqrt(1 - betas[1] ** (s0 + j)) for j in (1, window))
    g_mid, half_width = (g_first + g_last) / 2, (g_first - g_last) / (g_first + g_last)
    near = (x <= 2 * 1e-8 / g_last) & (m0 != 0)
    ratio = x * half_width * g_mid / (1e-8 + x * g_mid)
    widest = max(ratio[near & (ratio <= 0.5)], default=0.0)
    terms = 1 if widest == 0.0 else min(row_adam.N_TERMS, max(1, math.ceil(-32 / math.log2(widest))))
    growth = (2 + half_width) * x * g_mid / (1e-8 + x * g_mid)
    centred = near & (ratio <= 0.5) & ((growth <= 1) | ((terms - 1) * np.log2(np.maximum(growth, 1.0)) <= 20))
    return (~near | centred) & (s1 - s0 >= row_adam._FEW_STEPS)


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.8, 0.99), (0.95, 0.99999), (0.0, 0.999)])
@pytest.mark.parametrize("wd", [0.0, 0.05], ids=["adam", "adamw"])
def test_a_rows_missed_steps_in_closed_form_are_float64_adam_rounded_once(betas, wd):
    """Rows idle for a few steps, for up to the horizon, beyond it, and since step 0, under a
    cosine schedule: where the series serve (sqrt(v) well above eps; near it or below it, where
    the window's spread of g_t allows the series around its middle), the weight is float64 Adam's
    rounded once; otherwise (step by step in float32) within a few ulps of torch's own float32
    error; the moments decay as Adam's."""
    import math

    from rnnsweep.fast import row_adam

    def lr_at(step):
        return 1e-3 + 0.5 * (1e-2 - 1e-3) * (1 + math.cos(math.pi * step / 1500))
    steps = row_adam.Steps(*betas, capacity=16)  # grows as it records
    for t in range(1, 1501):
        steps.record(t, lr_at(t), wd)
    assert steps.horizon > 0
    # From the fourth: sqrt(v) near eps or below it (3e-7 and 2e-7: the centred series' ratio
    # near 1/2 for rows that last moved about step 20, where its rounding grows fastest); a
    # coordinate without a gradient beside the others (m = v = 0).
    grads = np.array([1e-2, -3e-3, 1e-4, 1e-6, 3e-7, -2e-7, -1e-8, 1e-12, 3e-8, -2e-8, 5e-9, 1.5e-8, 0.0])
    windows = [(137, 140), (137, 148), (137, 149), (137, 200), (5, 300), (20, 300), (3, 1500), (600, 1400), (0, 1000)]
    # Weights at zero too: there an error is as large as the update, in ulps of the weight.
    for (s0, s1), start in itertools.product(windows, ("spread", "zero")):
        p0 = (np.linspace(-0.7, 0.9, len(grads)) if start == "spread" else np.zeros(len(grads))).astype(np.float32)
        m0 = (grads * (1 - betas[0]) if s0 else 0 * grads).astype(np.float32)
        v0 = (grads ** 2 * (1 - betas[1]) if s0 else 0 * grads).astype(np.float32)
        p, m, v = p0[None].copy(), m0[None].copy(), v0[None].copy()
        row_adam.catch_up(p, m, v, np.array([s0]), np.array([0]), s1, *steps.scalars(1e-8, wd))
        truth, truth_m, truth_v = torch_idle_steps(p0, m0, v0, s0, s1, lr_at, betas, wd, torch.float64)
        theirs = torch_idle_steps(p0, m0, v0, s0, s1, lr_at, betas, wd, torch.float32)[0]
        ours = torch.from_numpy(p[0]).double()
        ulp = torch.from_numpy(np.spacing(np.abs(p[0]))).double()
        # The series serves rows idle for more than a few steps (fewer are cheaper step by step).
        x = np.sqrt(v0.astype(np.float64))
        series = served_by_a_series(x, m0, s0, s1, betas, steps.horizon)
        assert ((ours - truth).abs()[series] <= 0.5 * ulp[series]).all(), (s0, s1, start)
        assert torch.isfinite(torch.from_numpy(p)).all()
        # Step by step, float32 rounds each step as torch's does, not in the same places, and the
        # replay stops once every update rounds away (what float32 Adam drops, to a few ulps).
        assert ((ours - truth).abs() <= (theirs - truth).abs() + 16 * ulp).all(), (s0, s1)
        for mine, exact in ((m[0], truth_m), (v[0], truth_v)):
            # At most one float32 rounding per step (the series rounds once); the moments of long
            # idle rows reach float32's subnormals, whose steps are absolute.
            error = (torch.from_numpy(mine).double() - exact).abs()
            assert (error <= (s1 - s0) * 2**-24 * exact.abs() + 2**-144).all(), (s0, s1)


@pytest.mark.parametrize("s0", [10, 20, 40])
def test_the_centred_series_near_its_limits_is_float64_adam_rounded_once_or_not_used(s0):
    """Rows that last moved early (a wide window of g_t) and whose sqrt(v) g is a few eps: where
    the centred series' sums cancel most. Weights at zero, so that the error is the update's.
    Where the series serves, float64 Adam rounded once (its rounding, growing with each term, held
    below 2^-33 of the update); elsewhere step by step, within torch's own float32 error."""
    from rnnsweep.fast import row_adam

    betas, s1 = (0.9, 0.999), s0 + 300
    steps = row_adam.Steps(*betas, capacity=16)
    for t in range(1, s1 + 1):
        steps.record(t, 1e-3, 0.0)
    g_mid = 0.5 * (math.sqrt(betas[1]) / math.sqrt(1 - betas[1] ** (s0 + 1))
                   + betas[1] ** 150 / math.sqrt(1 - betas[1] ** (s0 + 300)))
    u = np.linspace(0.3, 8.0, 40)  # x g_mid / eps
    v0 = ((u * 1e-8 / g_mid) ** 2).astype(np.float32)
    m0 = (3.16 * np.sqrt(v0.astype(np.float64))).astype(np.float32)
    p0 = np.zeros(len(u), dtype=np.float32)
    p, m, v = p0[None].copy(), m0[None].copy(), v0[None].copy()
    row_adam.catch_up(p, m, v, np.array([s0]), np.array([0]), s1, *steps.scalars(1e-8, 0.0))
    truth = torch_idle_steps(p0, m0, v0, s0, s1, lambda t: 1e-3, betas, 0.0, torch.float64)[0]
    theirs = torch_idle_steps(p0, m0, v0, s0, s1, lambda t: 1e-3, betas, 0.0, torch.float32)[0]
    ulp = torch.from_numpy(np.spacing(np.abs(p[0]))).double()
    error = (torch.from_numpy(p[0]).double() - truth).abs()
    series = torch.from_numpy(served_by_a_series(np.sqrt(v0.astype(np.float64)), m0, s0, s1, betas, steps.horizon))
    assert series.any() and not series.all()  # both kinds are here
    assert (error[series] <= 0.5 * ulp[series]).all(), (error / ulp)[series].max()
    assert (error <= (theirs - truth).abs() + 16 * ulp).all()
    # The others are exactly the step-by-step replay's (not a series off by several ulps).
    stepwise = p0[None].copy()
    row_adam.catch_up(stepwise, m0[None].copy(), v0[None].copy(), np.array([s0]), np.array([0]), s1,
                      *steps.scalars(1e-8, 0.0, False))
    assert np.array_equal(p[0][~series.numpy()], stepwise[0][~series.numpy()])


def test_the_sums_of_long_idle_rows_are_kept_for_one_epochs_steps():
    """Deferred Adam keeps per-step sums for rows idle past the horizon; a flush (every epoch's
    end) makes every row current and drops them, so they never grow with a run's length."""
    emb, opt = deferred_adam(False, 0.0, 800)
    assert opt.steps[0].horizon < 800 and np.isfinite(opt.steps[0].settled[:, 0]).any()
    opt.flush()
    assert opt.steps[0].settled_base == 800 and not np.isfinite(opt.steps[0].settled[:, 0]).any()
    assert len(opt.steps[0].settled) <= len(opt.steps[0].table) - 800


def test_a_changed_learning_rate_applies_from_the_next_step_as_in_dense_adam():
    def lr_at(step):
        return 1e-2 if step < 300 else 3e-3
    truth = dense_adam(False, 0.0, 600, torch.float64, lr_at=lr_at)
    torch_error = (dense_adam(False, 0.0, 600, torch.float32, lr_at=lr_at, foreach=False).double() - truth).abs()
    emb, _ = deferred_adam(False, 0.0, 600, lr_at=lr_at)
    assert (emb.state_dict()["weight"].double() - truth).abs().max() <= 2 * torch_error.max()


@pytest.mark.parametrize("decoupled,wd", [(False, 0.0), (True, 0.05)], ids=["adam", "adamw"])
def test_a_rate_that_changes_every_step_is_replayed_at_each_steps_own_rate(decoupled, wd):
    """A cosine schedule sets a new rate every step: a row's missed steps are replayed each at the
    rate it had (and AdamW's decay with it), as dense Adam applied them, without a flush per step."""
    import math

    def lr_at(step):
        return 1e-3 + 0.5 * (1e-2 - 1e-3) * (1 + math.cos(math.pi * step / 600))
    truth = dense_adam(decoupled, wd, 600, torch.float64, lr_at=lr_at)
    torch_error = (dense_adam(decoupled, wd, 600, torch.float32, lr_at=lr_at, foreach=False).double() - truth).abs()
    emb, opt = deferred_adam(decoupled, wd, 600, lr_at=lr_at)
    assert (opt.current[0] < 600).sum() > V // 2  # most rows were not brought up to date along the way
    our_error = (emb.state_dict()["weight"].double() - truth).abs()
    assert our_error.max() <= 1.1 * torch_error.max()
    assert our_error.mean() <= 1.1 * torch_error.mean()


@pytest.mark.parametrize("decoupled,wd", [(False, 0.0), (True, 0.05)], ids=["adam", "adamw"])
@pytest.mark.parametrize("zero_from,zero_to", [(0, 40), (100, 110)], ids=["warm-up-from-zero", "a-pause"])
def test_a_rate_that_rises_again_after_a_stretch_at_zero_replays_every_step(decoupled, wd, zero_from, zero_to):
    """Once float32 rounds a replayed row's updates away, later updates only shrink, unless the rate
    rises: after steps at lr 0, a row's missed steps move it again, as in dense Adam."""
    def lr_at(step):
        return 0.0 if zero_from <= step < zero_to else 1e-2
    truth = dense_adam(decoupled, wd, 300, torch.float64, lr_at=lr_at)
    torch_error = (dense_adam(decoupled, wd, 300, torch.float32, lr_at=lr_at, foreach=False).double() - truth).abs()
    emb, _ = deferred_adam(decoupled, wd, 300, lr_at=lr_at)
    assert (emb.state_dict()["weight"].double() - truth).abs().max() <= 2 * torch_error.max()


def test_rows_a_batch_skips_still_move_and_are_current_when_read():
    data = split_vocab_texts()  # batch 1 uses tokens 2-19, later batches 30-49
    dense, deferred = model(), model(sparse=True)
    train_steps(dense, make_optimizer("adam", dense, lr=1e-2, betas=[0.9, 0.999], eps=1e-8, impl="fused"), 4, data)
    opt = make_optimizer("adam", deferred, lr=1e-2, betas=[0.9, 0.999], eps=1e-8, embedding_grad="deferred")
    assert isinstance(opt, DeferredAdam)
    train_steps(deferred, opt, 4, data)
    row = 5  # in batch 1 only: not yet replayed
    assert opt.current[0][row] == 1
    # Evaluating reads the row through the lookup, which replays its three missed steps first.
    b = collate(data, torch.arange(16).numpy())
    with torch.no_grad():
        dense.eval(), deferred.eval()
        torch.testing.assert_close(deferred(b.ids, b.lengths), dense(b.ids, b.lengths), rtol=1e-5, atol=1e-6)
    assert opt.current[0][row] == 4
    for (name, p), q in zip(deferred.state_dict().items(), dense.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_a_checkpoint_in_the_middle_continues_exactly():
    data = texts(96)
    whole, first = model(sparse=True), model(sparse=True)

    def opt_for(net):
        return make_optimizer("adamw", net, lr=1e-2, weight_decay=0.01, betas=[0.9, 0.999], eps=1e-8,
                              embedding_grad="deferred")

    opt = opt_for(whole)
    train_steps(whole, opt, 6, data)
    opt_first = opt_for(first)
    train_steps(first, opt_first, 3, data)
    saved = copy.deepcopy({"model": first.state_dict(), "optimizer": opt_first.state_dict()})
    resumed = model(sparse=True)
    resumed.load_state_dict(saved["model"])
    opt_resumed = opt_for(resumed)
    opt_resumed.load_state_dict(saved["optimizer"])
    for i in range(3, 6):  # the remaining batches of the uninterrupted run
        b = collate(data, torch.arange(i * 16, i * 16 + 16).numpy())
        loss = torch.nn.functional.cross_entropy(resumed(b.ids, b.lengths), b.labels)
        opt_resumed.zero_grad()
        loss.backward()
        opt_resumed.step()
    for p, q in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(p, q)


def test_auto_picks_deferred_on_the_cpu_except_for_adams_l2_decay(compose_cfg):
    def resolved(overrides, device="cpu"):
        return builders.embedding_grad(config.validate(compose_cfg(overrides)).optimizer, torch.device(device))

    assert resolved([]) == "deferred"
    assert resolved(["optimizer=adamw"]) == "deferred"
    assert resolved(["optimizer.weight_decay=0.01"]) == "scattered"
    assert resolved([], "cuda") == "dense"
    assert resolved(["optimizer=sparse_adam"]) == "sparse"
    assert resolved(["optimizer.embedding_grad=scattered"]) == "scattered"
    with pytest.raises(ValueError, match="embedding_grad=deferred runs on the CPU"):
        resolved(["optimizer.embedding_grad=deferred"], "cuda")
    with pytest.raises(config.ConfigError, match="optimizer.weight_decay=0.01: must be 0 with embedding_grad=deferred"):
        config.validate(compose_cfg(["optimizer.embedding_grad=deferred", "optimizer.weight_decay=0.01"]))
    net = model(sparse=True)
    assert isinstance(make_optimizer("adam", net, lr=1e-3, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.01,
                                     embedding_grad="scattered"), ScatteredGrad)


def test_a_second_optimizer_on_the_same_model_takes_over_the_table():
    data = split_vocab_texts()  # batch 1 alone uses tokens 2-19: later steps leave them behind
    net, fresh = model(sparse=True), model(sparse=True)

    def opt_for(m):
        return make_optimizer("adam", m, lr=1e-2, betas=[0.9, 0.999], eps=1e-8, embedding_grad="deferred")

    first = opt_for(net)
    train_steps(net, first, 3, data)  # leaves rows behind, and its hooks on the embedding
    pending = net.embedding.weight.detach().clone()
    second = opt_for(net)  # the first applies the steps its rows still miss, as torch's Adam had
    assert not torch.equal(net.embedding.weight.detach(), pending)
    with torch.no_grad():
        for p, q in zip(net.parameters(), fresh.parameters()):
            q.copy_(p)
    train_steps(net, second, 3, data)
    train_steps(fresh, opt_for(fresh), 3, data)
    taken_over = net.embedding.weight.detach().clone()
    first.flush()  # a stale reference to the first writes nothing to a table it gave up
    first.state_dict()
    assert torch.equal(net.embedding.weight.detach(), taken_over)
    for p, q in zip(net.state_dict().values(), fresh.state_dict().values()):
        torch.testing.assert_close(p, q)


def test_gradient_rows_sum_an_embeddings_repeated_tokens_as_coalesce_does():
    emb = torch.nn.Embedding(V, D, sparse=True)
    ids = torch.tensor([[5, 9, 5, 0, 1499], [9, 9, 3, 5, 0]])
    (emb(ids) * torch.randn(2, 5, D)).sum().backward()
    assert not emb.weight.grad.is_coalesced() and emb.weight.grad._nnz() == ids.numel()
    slot = torch.full((V,), -1, dtype=torch.int64).numpy()
    rows, values = gradient_rows(emb.weight.grad, slot)
    want = emb.weight.grad.coalesce()
    order = rows.argsort()
    assert rows[order].tolist() == want.indices()[0].tolist() == [0, 3, 5, 9, 1499]
    torch.testing.assert_close(torch.from_numpy(values[order]), want.values())
    assert (slot == -1).all()  # left ready for the next step


def test_deferred_adam_split_over_threads_gives_the_one_thread_table_bit_for_bit():
    """Rows are replayed and stepped on whichever thread takes them; a batch naming a row twice must
    still replay it once."""
    from rnnsweep.fast import cpu_rnn
    tables = []
    try:
        for threads in (1, 2):
            if cpu_rnn.set_threads(threads) != threads:
                pytest.skip("numba has one thread here, or a pool the loops do not use")
            torch.manual_seed(0)
            emb = torch.nn.Embedding(V, D, sparse=True)
            opt = DeferredAdam([emb], [], lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
            for rows, grad in zipf_gradients(40):
                emb(torch.cat([rows, rows[:5]]))  # repeats, as a batch's tokens have them
                emb.weight.grad = grad
                opt.step()
            opt.flush()
            tables.append((emb.weight.detach().clone(), opt.exp_avg[0].clone(), opt.exp_avg_sq[0].clone()))
    finally:
        cpu_rnn.set_threads(torch.get_num_threads())
    for one, two in zip(*tables):
        assert torch.equal(one, two)


def test_the_closed_forms_scratch_holds_the_centred_series_on_narrow_tables():
    """The centred series keeps up to N_TERMS sums in the replay's float64 scratch: on a table
    narrower than that (embed_dim 4), a scratch the width of a row would be written past its end.
    The catch-up sizes it to both; a scratch too narrow is refused, not overrun."""
    from rnnsweep.fast import row_adam

    steps = row_adam.Steps(0.9, 0.999, capacity=16)
    for t in range(1, 301):
        steps.record(t, 1e-3, 0.0)
    grads = np.array([1e-8, 3e-8, -2e-8, 1e-2])  # near eps, and one well above it
    p0 = np.linspace(-0.5, 0.5, 4).astype(np.float32)
    m0, v0 = (grads * 0.1).astype(np.float32), (grads ** 2 * 1e-3).astype(np.float32)
    p, m, v = p0[None].copy(), m0[None].copy(), v0[None].copy()
    row_adam.catch_up(p, m, v, np.array([5]), np.array([0]), 300, *steps.scalars(1e-8, 0.0))
    truth = torch_idle_steps(p0, m0, v0, 5, 300, lambda t: 1e-3, (0.9, 0.999), 0.0, torch.float64)[0]
    ulp = torch.from_numpy(np.spacing(np.abs(p[0]))).double()
    assert ((torch.from_numpy(p[0]).double() - truth).abs() <= 0.5 * ulp).all()

    lrs, bc1, bc2s, table, powers, settled, base, work, b1, b2, eps, wd, horizon, _ = steps.scalars(1e-8, 0.0)
    recent = row_adam._prepare(table, powers, settled, base, work, 300, np.array([6]), 1, horizon, b1, b2)
    p, m, v = p0[None].copy(), m0[None].copy(), v0[None].copy()
    with pytest.raises(ValueError, match="scratch narrower"):
        row_adam.replay(p, m, v, 0, 5, 300, table, recent, settled, base, horizon, lrs, bc1, bc2s, b1, b2, eps, wd,
                        np.empty((3, 4)), np.empty((3, 4), np.float32), np.empty(4, np.int64))


@pytest.mark.parametrize("bad", [V, V + 7, -1])
def test_a_token_id_outside_the_table_is_refused_before_anything_is_written(bad):
    """The catch-up runs before torch's lookup checks the ids, in loops that check no bounds: an
    id past the table (or negative) would write past its arrays. It is refused, and nothing moves."""
    emb, opt = deferred_adam(False, 0.0, 5)
    before = (emb.weight.detach().clone(), opt.exp_avg[0].clone(), opt.current[0].copy())
    with pytest.raises(IndexError, match="outside the embedding table"):
        emb(torch.tensor([[3, 7, bad, 2]]))
    assert torch.equal(emb.weight.detach(), before[0]) and torch.equal(opt.exp_avg[0], before[1])
    assert (opt.current[0] == before[2]).all()


@pytest.mark.parametrize("change", [{"betas": (0.8, 0.999)}, {"eps": 1e-6}, {"weight_decay": 0.1}])
def test_deferred_adam_refuses_settings_changed_mid_run_that_its_replays_would_apply_to_the_past(change):
    emb, opt = deferred_adam(True, 0.01, 3)
    opt.param_groups[0].update(lr=3e-3)  # the rate may change: each step's is kept
    emb.weight.grad = next(zipf_gradients(1))[1]
    opt.step()
    opt.param_groups[0].update(change)
    emb.weight.grad = next(zipf_gradients(1))[1]
    with pytest.raises(ValueError, match="fixed for a run"):
        opt.step()


@pytest.mark.parametrize("lazy", [False, True], ids=["deferred", "sparse_adam"])
def test_a_hand_made_gradient_naming_a_row_outside_the_table_is_refused(lazy):
    """torch does not check a sparse tensor's indices; the row loops check no bounds: the row must
    be refused, not written past the table or dropped."""
    from rnnsweep.fast.optimizers import RowAdam

    emb = torch.nn.Embedding(V, D, sparse=True)
    opt = (RowAdam(list(emb.parameters()), lr=1e-2, betas=(0.9, 0.999), eps=1e-8) if lazy
           else DeferredAdam([emb], [], lr=1e-2, betas=(0.9, 0.999), eps=1e-8))
    before = emb.weight.detach().clone()
    emb.weight.grad = torch.sparse_coo_tensor(torch.tensor([[1, V + 3]]), torch.ones(2, D), (V, D),
                                              check_invariants=False)
    with pytest.raises(IndexError, match="outside its table"):
        opt.step()
    assert torch.equal(emb.weight.detach(), before)


def test_zero_grad_keeping_gradients_steps_a_parameter_missing_from_the_graph_as_torch_does():
    """zero_grad(set_to_none=False) leaves zero gradients: a parameter the next graph does not use
    still takes Adam's step (its moments decay, it moves), as with torch's Adam."""
    from rnnsweep.fast.optimizers import DenseAdam

    torch.manual_seed(0)
    ours, theirs = [torch.nn.Parameter(torch.randn(5)) for _ in range(2)], None
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = DenseAdam(ours, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False)
    reference = torch.optim.Adam(theirs, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, fused=True)
    for step in range(4):
        for params, o in ((ours, opt), (theirs, reference)):
            o.zero_grad(set_to_none=False)
            used = params if step == 0 else params[:1]  # the second parameter only in step 0
            sum((p ** 2).sum() for p in used).backward()
            o.step()
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)


def two_tables_steps(opt_for, sparse: bool, steps: int = 40, dtype=torch.float32):
    """Two embedding tables; the second is used by every third step only, zero_grad(set_to_none)
    between steps, so on the others it has no gradient at all. Returns both tables' weights."""
    torch.manual_seed(0)
    tables = [torch.nn.Embedding(V, D, sparse=sparse).to(dtype), torch.nn.Embedding(V // 3, D, sparse=sparse).to(dtype)]
    opt = opt_for(tables)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        opt.zero_grad()
        ids = [torch.randint(0, V, (30,), generator=g), torch.randint(0, V // 3, (30,), generator=g)]
        used = tables if step % 3 == 0 else tables[:1]
        sum((t(i) * torch.randn(30, D, generator=g).to(dtype)).sum() for t, i in zip(used, ids)).backward()
        opt.step()
    return [t.state_dict()["weight"].double() for t in tables], opt


@pytest.mark.parametrize("wd", [0.0, 0.05], ids=["adam", "adamw"])
def test_a_table_without_a_gradient_takes_no_step_as_in_torchs_adam(wd):
    """torch's Adam skips a parameter whose gradient is None: no decay of its moments, no step in
    its count. Deferred Adam counts steps per table, so the second table's rows replay only the
    steps that gave it a gradient."""
    cls = torch.optim.AdamW if wd else torch.optim.Adam

    def torch_adam(tables):
        return cls([t.weight for t in tables], lr=1e-2, weight_decay=wd, foreach=False)

    truth, _ = two_tables_steps(torch_adam, sparse=False, dtype=torch.float64)
    theirs, _ = two_tables_steps(torch_adam, sparse=False)
    ours, opt = two_tables_steps(lambda ts: DeferredAdam(ts, [], lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
                                                         weight_decay=wd, decoupled=wd > 0), sparse=True)
    assert opt.step_counts == [40, 14]
    for mine, reference, exact in zip(ours, theirs, truth):
        # Steps replayed that torch skipped would move rows by about lr, 1e4 times torch's rounding.
        assert (mine - exact).abs().max() <= 2 * (reference - exact).abs().max()


def test_sparse_adam_counts_steps_per_table_as_torchs_sparse_adam():
    from rnnsweep.fast.optimizers import RowAdam

    def ours_for(tables):
        return RowAdam([t.weight for t in tables], lr=1e-2, betas=(0.9, 0.999), eps=1e-8)

    def theirs_for(tables):
        return torch.optim.SparseAdam([t.weight for t in tables], lr=1e-2, betas=(0.9, 0.999), eps=1e-8)

    ours, opt = two_tables_steps(ours_for, sparse=True)
    theirs, reference = two_tables_steps(theirs_for, sparse=True)
    assert opt.step_counts == [reference.state[p]["step"] for p in reference.param_groups[0]["params"]] == [40, 14]
    for mine, expected in zip(ours, theirs):
        torch.testing.assert_close(mine, expected, rtol=0, atol=5e-7)  # repeated rows: summed in another order


@pytest.mark.parametrize("lazy", [False, True], ids=["deferred", "sparse_adam"])
def test_optimizer_state_for_another_table_size_is_refused_before_anything_is_loaded(lazy):
    from rnnsweep.fast.optimizers import RowAdam

    def build(rows):
        emb = torch.nn.Embedding(rows, D, sparse=True)
        return emb, (RowAdam([emb.weight], lr=1e-2, betas=(0.9, 0.999), eps=1e-8) if lazy
                     else DeferredAdam([emb], [], lr=1e-2, betas=(0.9, 0.999), eps=1e-8))

    small, small_opt = build(1)
    small(torch.tensor([0])).sum().backward()
    small_opt.step()
    emb, opt = build(V)
    with pytest.raises(ValueError, match=r"shape \(1, 16\) cannot be loaded for a parameter of shape \(1500, 16\)"):
        opt.load_state_dict(small_opt.state_dict())  # copy_ would have broadcast the one row over all
    assert opt.step_counts == [0] and not opt.exp_avg[0].any()


def test_a_state_saved_with_one_step_count_for_all_tables_still_loads():
    """0.2.1 and before saved deferred Adam's step as one number."""
    emb, opt = deferred_adam(False, 0.0, 30)
    state = opt.state_dict()
    state["step"] = 30
    _, resumed = deferred_adam(False, 0.0, 5)
    resumed.load_state_dict(state)
    assert resumed.step_counts == [30] and (resumed.current[0] == 30).all()


def test_a_gradient_on_rows_no_forward_pass_read_first_replays_their_missed_steps():
    """A gradient set by hand names rows the lookup hook never brought up to date: the step
    catches them up first, so the table is the one a forward pass before each step would give."""
    def table(look_up: bool) -> torch.Tensor:
        torch.manual_seed(0)
        emb = torch.nn.Embedding(V, D, sparse=True)
        opt = DeferredAdam([emb], [], lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
        for rows, grad in zipf_gradients(300):
            if look_up:
                emb(rows)
            emb.weight.grad = grad
            opt.step()
        return emb.state_dict()["weight"]

    assert torch.equal(table(look_up=False), table(look_up=True))


def test_weights_moved_to_new_memory_mid_run_are_the_ones_updated():
    """The optimizer keeps numpy views of the table between steps; a `.data` assignment moves the
    weights, and the views must follow them (else steps land in memory the model no longer reads)."""
    def table(move: bool) -> torch.Tensor:
        torch.manual_seed(0)
        emb = torch.nn.Embedding(V, D, sparse=True)
        opt = DeferredAdam([emb], [], lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
        for step, (rows, grad) in enumerate(zipf_gradients(60)):
            if move and step == 30:
                emb.weight.data = emb.weight.data.clone()
            emb(rows)
            emb.weight.grad = grad
            opt.step()
        return emb.state_dict()["weight"]

    assert torch.equal(table(move=True), table(move=False))


@pytest.mark.parametrize("rows", [V // 3, V + 10])
def test_a_table_resized_under_the_optimizer_is_refused_before_anything_is_written(rows):
    """Its moments and row steps keep the old size: ids within them but outside the new table would
    be written past it (the catch-up runs before torch's lookup checks the ids)."""
    emb = torch.nn.Embedding(V, D, sparse=True)
    opt = DeferredAdam([emb], [], lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    for rows_, grad in zipf_gradients(3):
        emb(rows_)
        emb.weight.grad = grad
        opt.step()
    buffer = torch.zeros(V + 10, D)
    emb.weight.data = buffer[:rows]
    with pytest.raises(ValueError, match="build a new optimizer for a resized table"):
        emb(torch.tensor([rows - 1]))
    assert not buffer.any()


@pytest.mark.parametrize("lazy", [False, True], ids=["deferred", "sparse_adam"])
def test_a_state_whose_dense_part_does_not_fit_leaves_the_optimizer_as_it_was(lazy):
    from rnnsweep.fast.optimizers import LazyAdam

    def build(n):
        torch.manual_seed(0)
        emb, lin = torch.nn.Embedding(50, 4, sparse=True), torch.nn.Parameter(torch.randn(n))
        opt = (LazyAdam([emb.weight], [lin], lr=1e-2, betas=(0.9, 0.999), eps=1e-8) if lazy
               else DeferredAdam([emb], [lin], lr=1e-2, betas=(0.9, 0.999), eps=1e-8))
        return emb, lin, opt

    emb, lin, source = build(3)
    for _ in range(5):
        (emb(torch.tensor([1, 2])).sum() + lin.sum()).backward()
        source.step()
        source.zero_grad()
    _, _, target = build(4)
    with pytest.raises(ValueError, match=r"shape \(3,\) cannot be loaded for a parameter of shape \(4,\)"):
        target.load_state_dict(source.state_dict())
    table = target.sparse if lazy else target
    assert table.step_counts == [0] and not table.exp_avg[0].any()
