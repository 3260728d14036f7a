"""Deferred Adam's catch-up on a real run's inputs: the closed form against step-by-step replay.

Trains the lesson's LSTM (embed 64, hidden 32, batch 16, length-bucketed batches, deferred Adam)
on generated AG News-sized data for `--warm-steps` steps, then records the next `--steps` steps:
each batch's token ids, and the embedding's gradient rows. It then replays that stretch from the
same state, alternating two ways of bringing the rows a batch reads up to date:

- closed form: rnnsweep's default (series over the missed steps, rounded once; row_adam.py);
- step by step: every missed zero-gradient step replayed in float32, as torch's Adam would run
  it on that row (the reference: what the catch-up costs without the closed form).

Only the catch-up calls are timed (the per-batch one, before the lookup); the row step that
follows is the same for both. Prints microseconds a step for each, their ratio (median over the
alternating pairs), and how far apart the two leave the weights.

    python benchmarks/catch_up.py [--warm-steps 400] [--steps 100] [--repeats 10] [--data DIR]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agnews_like  # noqa: E402

from rnnsweep.data import batches  # noqa: E402
from rnnsweep.fast import cpu_rnn, make_optimizer, row_adam, warm_up  # noqa: E402
from rnnsweep.model import TextClassifier  # noqa: E402


def record(data: Path, cache: Path, warm_steps: int, steps: int) -> tuple[dict, list]:
    """The optimizer's state after `warm_steps` steps, and the next `steps` steps' (ids, rows, grads)."""
    splits = agnews_like.encoded(data, cache)
    g = torch.Generator().manual_seed(0)
    ready = [batches.collate(splits.train, rows) for rows in batches.batch_rows(
        splits.train, 16, shuffle=True, generator=g, bucket_pool=50, limit=16 * (warm_steps + steps))]
    torch.manual_seed(0)
    model = TextClassifier(splits.vocab_size, 4, arch="lstm", embed_dim=64, hidden_dim=32, pooling="seed_hlast",
                           sparse_embedding=True)
    opt = make_optimizer("adam", model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, embedding_grad="deferred")
    warm_up(model, opt, compiled_layers=True)
    state, stretch = None, []
    for i, batch in enumerate(ready):
        if i == warm_steps:
            state = {"p": model.embedding.weight.detach().numpy().copy(), "m": opt.exp_avg[0].numpy().copy(),
                     "v": opt.exp_avg_sq[0].numpy().copy(), "current": opt.current[0].copy(),
                     "steps": copy.deepcopy(opt.steps[0]), "step": opt.step_counts[0]}
        loss = torch.nn.functional.cross_entropy(model(batch.ids, batch.lengths), batch.labels)
        opt.zero_grad()
        loss.backward()
        if i >= warm_steps:
            rows, grads = row_adam.gradient_rows(model.embedding.weight.grad, opt._slots[0])
            stretch.append((batch.ids.reshape(-1).numpy().copy(), rows.copy(), grads.copy()))
        opt.step()
    return state, stretch


def replay(state: dict, stretch: list, closed_form: bool) -> tuple[float, float, np.ndarray]:
    """(microseconds of catch-up a step, milliseconds of the flush at the end, the table's weights
    after it)."""
    p, m, v, current = (state[k].copy() for k in ("p", "m", "v", "current"))
    steps, step, spent = copy.deepcopy(state["steps"]), state["step"], 0.0
    for ids, rows, grads in stretch:
        scalars = steps.scalars(1e-8, 0.0, closed_form)
        started = time.perf_counter()
        row_adam.catch_up(p, m, v, current, ids, step, *scalars)
        spent += time.perf_counter() - started
        step += 1
        steps.record(step, 1e-3, 0.0)
        row_adam.adam_rows(p, m, v, current, rows, grads, step, *steps.scalars(1e-8, 0.0, closed_form))
    started = time.perf_counter()
    row_adam.catch_up_all(p, m, v, current, step, *steps.scalars(1e-8, 0.0, closed_form))
    return spent / len(stretch) * 1e6, (time.perf_counter() - started) * 1e3, p


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warm-steps", type=int, default=400, help="steps trained before the recorded stretch")
    parser.add_argument("--steps", type=int, default=100, help="steps recorded and replayed")
    parser.add_argument("--repeats", type=int, default=10, help="alternating pairs of replays")
    parser.add_argument("--threads", type=int, default=2, help="numba threads for the catch-up")
    parser.add_argument("--data", type=Path, help="AG News train.csv/test.csv directory (default: generated)")
    args = parser.parse_args(argv)
    if min(args.warm_steps, args.steps, args.repeats, args.threads) < 1:
        parser.error("--warm-steps, --steps, --repeats and --threads take whole numbers from 1")
    cpu_rnn.set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="rnnsweep-bench-catch-up-") as tmp:
        work = Path(tmp)
        data = args.data or agnews_like.write(work / "data")
        state, stretch = record(data, work / "cache", args.warm_steps, args.steps)
    behind = np.count_nonzero(state["current"][np.unique(stretch[0][0])] < state["step"])
    print(f"lesson LSTM, deferred Adam, steps {args.warm_steps + 1}-{args.warm_steps + args.steps} of a real run "
          f"(first batch: {behind} rows behind), {args.threads} thread(s); "
          f"median of {args.repeats} alternating pairs\n")
    for closed_form in (True, False):  # loads (or compiles) both paths
        replay(state, stretch, closed_form)
    times: dict[bool, list[float]] = {True: [], False: []}
    flushes: dict[bool, list[float]] = {True: [], False: []}
    for k in range(args.repeats):
        for closed_form in ((True, False) if k % 2 == 0 else (False, True)):
            us, ms, _ = replay(state, stretch, closed_form)
            times[closed_form].append(us)
            flushes[closed_form].append(ms)
    closed, stepwise = (replay(state, stretch, mode)[2] for mode in (True, False))
    # Absolute: an element that crosses zero in the stretch has ulps far smaller than its steps.
    gap = np.abs(closed.astype(np.float64) - stepwise)
    worst = np.unravel_index(gap.argmax(), gap.shape)
    def speed(runs: dict[bool, list[float]]) -> float:  # reference time over closed-form time, median of pairs
        return statistics.median(s / c for c, s in zip(runs[True], runs[False]))

    print("| catch-up | before each batch's lookup, us a step | flush of the whole table at the end, ms |")
    print("|---|---|---|")
    for label, mode in (("step by step (reference)", False), ("closed form (rnnsweep)", True)):
        print(f"| {label} | {statistics.median(times[mode]):.1f} | {statistics.median(flushes[mode]):.1f} |")
    print(f"| speed of the closed form, reference = 1 (median of pairs) | {speed(times):.2f}x "
          f"| {speed(flushes):.2f}x |")
    print("\nThe weights after the stretch differ by at most "
          f"{gap.max():.2g} (at a weight of {stepwise[worst]:.3g}, whose float32 ulp is "
          f"{np.spacing(np.abs(stepwise[worst])):.2g}); {np.count_nonzero(gap):,} of {gap.size:,} elements differ: "
          "float32 rounds each replayed step, the closed form rounds once")


if __name__ == "__main__":
    main()
