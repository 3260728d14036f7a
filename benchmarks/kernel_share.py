"""rnnsweep's share of the bare compiled kernel, taken apart, interleaved in one process.

    python benchmarks/kernel_share.py                 # generated AG News-sized data, 5 rounds
    python benchmarks/kernel_share.py --data DIR      # AG News-format train.csv/test.csv
    python benchmarks/kernel_share.py --rounds 9      # more rounds
    python benchmarks/kernel_share.py --chunk 50      # variants take turns every 50 batches

`make bench` compares whole runs, each in a fresh configuration, and on a shared machine the
load moves between them by more than the few percent in question: within a second, this
machine's speed for the same work can change by half (`make bench` therefore also prints the
bare kernel and fit's share measured as here, the other variants left out). Here every variant trains the same
12,000-example epoch of the lesson's LSTM (embed 64, hidden 32, batch 16, Adam lr 1e-3, the same
length-bucketed batches) in one process, and the variants take turns every `--chunk` batches
(a few dozen milliseconds each), so that each meets the same load; each variant's share of the
bare kernel is the median over `--rounds` rounds of the kernel's epoch time over its own:

- bare kernel: `make bench`'s (a 100-word table, torch's fused Adam, batches cut beforehand);
- model, 100 words: rnnsweep's TextClassifier on the same 100-word ids, dense Adam, same loop:
  what the model's own code costs;
- exact Adam / sparse_adam: the real vocabulary, deferred Adam or lazy Adam, same plain loop:
  what the table and its optimizer cost;
- exact Adam through `fit`: rnnsweep's training loop, batches cut as it goes (as a run does).
  The other variants take their turns from inside its batch iterator; the time they take there
  is subtracted from its epoch's.

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
from typing import Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agnews_like  # noqa: E402

from rnnsweep import loop  # noqa: E402
from rnnsweep.data import batches  # noqa: E402
from rnnsweep.fast import cpu_rnn, make_optimizer, pending_work, warm_up  # noqa: E402
from rnnsweep.model import TextClassifier  # noqa: E402

BATCH, BUCKET_POOL = 16, 50


def bare_kernel(small: list, chunk: int) -> Iterator[float]:
    """The bare kernel of `make bench` (train_speed.bare_kernel, compiled layer), `chunk` batches at a time."""
    torch.manual_seed(0)
    emb, lstm, fc = torch.nn.Embedding(100, 64), torch.nn.LSTM(64, 32, batch_first=True), torch.nn.Linear(32, 4)
    opt = torch.optim.Adam([*emb.parameters(), *lstm.parameters(), *fc.parameters()], lr=1e-3, fused=True)
    weights = [getattr(lstm, f"{name}_l0") for name in cpu_rnn.WEIGHTS]

    def step(b) -> None:
        loss = torch.nn.functional.cross_entropy(fc(cpu_rnn.layer(lstm, emb(b.ids), *weights)[:, -1]), b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _in_chunks(small, chunk, step, None)


def _in_chunks(batches: list, chunk: int, step, flush) -> Iterator[float]:
    """Seconds for each `chunk` batches of `step`, the last with the end-of-epoch `flush`."""
    for start in range(0, len(batches), chunk):
        started = time.perf_counter()
        for b in batches[start:start + chunk]:
            step(b)
        if start + chunk >= len(batches) and flush is not None:
            flush()
        yield time.perf_counter() - started


def _model(vocab: int, optimizer: str, sparse: bool):
    """The lesson's LSTM as rnnsweep builds it, its optimizer (loops loaded) and its end-of-epoch work."""
    torch.manual_seed(0)
    net = TextClassifier(vocab, 4, arch="lstm", embed_dim=64, hidden_dim=32, pooling="seed_hlast",
                         embed_init="shifted_normal", sparse_embedding=sparse)
    opt = make_optimizer(optimizer, net, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, embedding_grad="deferred")
    warm_up(net, opt, compiled_layers=True)
    return net, opt, pending_work(opt)


def model_epoch(ready: list, vocab: int, optimizer: str, sparse: bool, chunk: int) -> Iterator[float]:
    """One epoch of the model in a plain loop over `ready`, `chunk` batches at a time."""
    net, opt, flush = _model(vocab, optimizer, sparse)

    def step(b) -> None:
        loss = torch.nn.functional.cross_entropy(net(b.ids, b.lengths), b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _in_chunks(ready, chunk, step, flush)


def fit_epoch(vocab: int, steps: int, epoch_batches, chunk: int, others: Callable[[], None]) -> float:
    """Seconds of one epoch of exact Adam through rnnsweep's `fit` over the batches `epoch_batches()`
    cuts, with `others()` called every `chunk` batches from inside its batch iterator, its time
    taken out."""
    net, opt, flush = _model(vocab, "adam", True)
    paused = 0.0

    def paced():
        nonlocal paused
        for i, b in enumerate(epoch_batches()):
            if i and i % chunk == 0:
                started = time.perf_counter()
                others()
                paused += time.perf_counter() - started
            yield b

    state = loop.fit(net, opt, lambda epoch: paced(), lambda: [], epochs=1, steps_per_epoch=steps,
                     num_classes=4, device=torch.device("cpu"), pending_work=flush)
    return state.train_seconds - paused


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="AG News train.csv/test.csv directory (default: generated)")
    parser.add_argument("--epoch-size", type=int, default=12000, help="training examples per epoch (default 12000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--chunk", type=int, default=25, help="batches per turn of each variant (default 25)")
    parser.add_argument("--threads", type=int, default=2, help="torch's and the compiled loops' threads (default 2)")
    args = parser.parse_args(argv)
    if min(args.epoch_size, args.rounds, args.threads, args.chunk) < 1:
        parser.error("--epoch-size, --rounds, --threads and --chunk take whole numbers from 1")
    torch.set_num_threads(args.threads)
    cpu_rnn.set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="rnnsweep-bench-share-") as tmp:
        work = Path(tmp)
        data = args.data or agnews_like.write(work / "data")
        compare(agnews_like.encoded(data, work / "cache"), args)


KERNEL = "bare kernel (100-word table, fused Adam, batches cut beforehand)"
FIT = "the same exact Adam through rnnsweep's fit, batches cut as it goes"


def variant_names(vocab: int) -> list[str]:
    return [KERNEL, "rnnsweep's model, 100-word table, dense Adam",
            f"rnnsweep's model, {vocab:,}-word table, exact (deferred) Adam",
            f"rnnsweep's model, {vocab:,}-word table, sparse_adam", FIT]


def interleaved(splits, epoch_size: int, rounds: int, chunk: int, only_kernel_and_fit: bool = False,
                announce: Callable[[int, int], None] | None = None,
                batch_size: int = BATCH) -> tuple[int, dict[str, list[float]]]:
    """(examples per epoch, each variant's epoch seconds over `rounds` rounds), the variants taking
    turns every `chunk` batches; `only_kernel_and_fit`: the bare kernel and fit alone.
    `announce(batches, examples)` is called before the first (untimed) round."""
    train = splits.train

    def cut():
        """The epoch's batches, the same every time (seed 0), cut as they are taken."""
        order = torch.Generator().manual_seed(0)
        return batches.iterate(train, batch_size, shuffle=True, generator=order, bucket_pool=BUCKET_POOL,
                               limit=epoch_size)

    ready = list(cut())
    small = [copy.copy(b) for b in ready]
    for b in small:
        b.ids = b.ids.remainder(100)
    vocab = splits.vocab_size
    names = variant_names(vocab)
    plain = dict(zip(names, [
        lambda: bare_kernel(small, chunk),
        lambda: model_epoch(small, 100, "adam", False, chunk),
        lambda: model_epoch(ready, vocab, "adam", True, chunk),
        lambda: model_epoch(ready, vocab, "sparse_adam", True, chunk),
    ]))
    if only_kernel_and_fit:
        plain = {KERNEL: plain[KERNEL]}
        names = [KERNEL, FIT]

    def one_round(reverse: bool) -> dict[str, float]:
        """Every variant's epoch, taking turns every `chunk` batches."""
        turns = {name: make() for name, make in (reversed(plain.items()) if reverse else plain.items())}
        seconds = dict.fromkeys(plain, 0.0)

        def others() -> None:
            for name, turn in turns.items():
                seconds[name] += next(turn, 0.0)

        seconds[FIT] = fit_epoch(vocab, len(ready), cut, chunk, others)
        for name, turn in turns.items():  # the chunks left after fit's last turn, and the flushes
            seconds[name] += sum(turn)
        return seconds

    examples = sum(len(b) for b in ready)
    if announce:
        announce(len(ready), examples)
    one_round(False)  # compiles or loads every loop before the clock
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for k in range(rounds):
        for name, spent in one_round(reverse=k % 2 == 1).items():
            seconds[name].append(spent)
    return examples, seconds


def share(seconds: dict[str, list[float]], name: str) -> float:
    """`name`'s share of the bare kernel: the median over rounds of the kernel's epoch time over its own."""
    return statistics.median(k / s for k, s in zip(seconds[KERNEL], seconds[name]))


def compare(splits, args: argparse.Namespace) -> None:
    """Every variant, `args.rounds` alternating rounds, and the table."""
    def announce(count: int, examples: int) -> None:
        print(f"lesson LSTM, {count} batches of {BATCH} ({examples:,} examples), {args.threads} thread(s), "
              f"{args.rounds} rounds, variants taking turns every {args.chunk} batches\n", flush=True)

    examples, seconds = interleaved(splits, args.epoch_size, args.rounds, args.chunk, announce=announce)
    print("| variant | epoch (median) | ex/s | share of the bare kernel (median of rounds) |")
    print("|---|---|---|---|")
    for name, runs in seconds.items():
        print(f"| {name} | {statistics.median(runs) * 1e3:,.0f} ms | {examples / statistics.median(runs):,.0f} | "
              f"{share(seconds, name):.1%} |")


if __name__ == "__main__":
    main()
