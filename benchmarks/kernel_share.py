"""rnnsweep's share of the bare compiled kernel, taken apart, alternating in one process.

    python benchmarks/kernel_share.py                 # generated AG News-sized data, 5 rounds
    python benchmarks/kernel_share.py --data DIR      # AG News-format train.csv/test.csv
    python benchmarks/kernel_share.py --rounds 9      # more alternating rounds

`make bench` compares whole runs, each in a fresh configuration, and on a shared machine the
load moves between them by more than the few percent in question. Here every variant trains the
same 12,000-example epoch of the lesson's LSTM (embed 64, hidden 32, batch 16, Adam lr 1e-3, the
same length-bucketed batches) in one process, one variant after the other, for `--rounds`
rounds (the order reversed every other round); each variant's share of the bare kernel is the
median over rounds of the kernel's epoch time over its own, taken in the same round:

- bare kernel: `make bench`'s (a 100-word table, torch's fused Adam, batches cut beforehand);
- model, 100 words: rnnsweep's TextClassifier on the same 100-word ids, dense Adam, same loop:
  what the model's own code costs;
- exact Adam / sparse_adam: the real vocabulary, deferred Adam or lazy Adam, same plain loop:
  what the table and its optimizer cost;
- exact Adam through `fit`: rnnsweep's training loop, batches cut as it goes (as a run does).

Every epoch's time includes deferred Adam's end-of-epoch flush, as a run's does.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agnews_like  # noqa: E402

from rnnsweep import loop  # noqa: E402
from rnnsweep.data import SplitOptions, TokenizerOptions, batches, prepare  # noqa: E402
from rnnsweep.data.sources import AgNews  # noqa: E402
from rnnsweep.fast import cpu_rnn, make_optimizer, pending_work, warm_up  # noqa: E402
from rnnsweep.model import TextClassifier  # noqa: E402

BATCH, BUCKET_POOL = 16, 50


def bare_kernel(small: list) -> float:
    """The bare kernel of `make bench` (train_speed.bare_kernel, compiled layer): seconds for the epoch."""
    torch.manual_seed(0)
    emb, lstm, fc = torch.nn.Embedding(100, 64), torch.nn.LSTM(64, 32, batch_first=True), torch.nn.Linear(32, 4)
    opt = torch.optim.Adam([*emb.parameters(), *lstm.parameters(), *fc.parameters()], lr=1e-3, fused=True)
    weights = [getattr(lstm, f"{name}_l0") for name in cpu_rnn.WEIGHTS]
    started = time.perf_counter()
    for b in small:
        loss = torch.nn.functional.cross_entropy(fc(cpu_rnn.layer(lstm, emb(b.ids), *weights)[:, -1]), b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - started


def model_epoch(ready: list, vocab: int, optimizer: str, sparse: bool, epoch_batches=None) -> float:
    """The lesson's LSTM as rnnsweep builds it, one epoch: a plain loop over `ready`, or (with
    `epoch_batches`) rnnsweep's `fit` over the batches it cuts."""
    torch.manual_seed(0)
    net = TextClassifier(vocab, 4, arch="lstm", embed_dim=64, hidden_dim=32, pooling="seed_hlast",
                         embed_init="shifted_normal", sparse_embedding=sparse)
    opt = make_optimizer(optimizer, net, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, embedding_grad="deferred")
    warm_up(net, opt, compiled_layers=True)
    flush = pending_work(opt)
    if epoch_batches is not None:
        state = loop.fit(net, opt, lambda epoch: epoch_batches(), lambda: [], epochs=1, steps_per_epoch=len(ready),
                         num_classes=4, device=torch.device("cpu"), pending_work=flush)
        return state.train_seconds
    started = time.perf_counter()
    for b in ready:
        loss = torch.nn.functional.cross_entropy(net(b.ids, b.lengths), b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if flush is not None:
        flush()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="AG News train.csv/test.csv directory (default: generated)")
    parser.add_argument("--epoch-size", type=int, default=12000, help="training examples per epoch (default 12000)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch's and the compiled loops' threads (default 2)")
    args = parser.parse_args(argv)
    if min(args.epoch_size, args.rounds, args.threads) < 1:
        parser.error("--epoch-size, --rounds and --threads take whole numbers from 1")
    torch.set_num_threads(args.threads)
    cpu_rnn.set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="rnnsweep-bench-share-") as tmp:
        work = Path(tmp)
        data = args.data or agnews_like.write(work / "data")
        source = AgNews(root=data, download=False, urls={}, md5=agnews_like.canonical_md5(), clean=True,
                        drop_empty=True)
        splits = prepare(source, SplitOptions(val_fraction=0.05, seed=1234), TokenizerOptions(), work / "cache")
        compare(splits, args)


def compare(splits, args: argparse.Namespace) -> None:
    """Every variant, `args.rounds` alternating rounds, and the table."""
    train = splits.train

    def cut():
        """The epoch's batches, the same every time (seed 0), cut as they are taken."""
        order = torch.Generator().manual_seed(0)
        return batches.iterate(train, BATCH, shuffle=True, generator=order, bucket_pool=BUCKET_POOL,
                               limit=args.epoch_size)

    ready = list(cut())
    small = [copy.copy(b) for b in ready]
    for b in small:
        b.ids = b.ids.remainder(100)
    vocab = splits.vocab_size
    variants = {
        "bare kernel (100-word table, fused Adam, batches cut beforehand)": lambda: bare_kernel(small),
        "rnnsweep's model, 100-word table, dense Adam": lambda: model_epoch(small, 100, "adam", sparse=False),
        f"rnnsweep's model, {vocab:,}-word table, exact (deferred) Adam": lambda: model_epoch(ready, vocab, "adam", True),
        f"rnnsweep's model, {vocab:,}-word table, sparse_adam": lambda: model_epoch(ready, vocab, "sparse_adam", True),
        "the same exact Adam through rnnsweep's fit, batches cut as it goes": lambda: model_epoch(
            ready, vocab, "adam", True, epoch_batches=cut),
    }

    print(f"lesson LSTM, {len(ready)} batches of {BATCH} ({sum(len(b) for b in ready):,} examples), "
          f"{args.threads} thread(s), {args.rounds} alternating rounds\n", flush=True)
    for run in variants.values():  # compiles or loads every loop before the clock
        run()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for k in range(args.rounds):
        for name, run in (list(variants.items()) if k % 2 == 0 else reversed(list(variants.items()))):
            seconds[name].append(run())
    kernel = seconds[next(iter(variants))]
    print("| variant | epoch (median) | ex/s | share of the bare kernel (median of rounds) |")
    print("|---|---|---|---|")
    examples = sum(len(b) for b in ready)
    for name, runs in seconds.items():
        share = statistics.median(k / s for k, s in zip(kernel, runs))
        print(f"| {name} | {statistics.median(runs) * 1e3:,.0f} ms | {examples / statistics.median(runs):,.0f} | "
              f"{share:.1%} |")


if __name__ == "__main__":
    main()
