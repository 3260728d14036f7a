"""Training throughput: the lesson's procedure vs rnnsweep, lever by lever, and the bare kernel.

First, one recurrent layer's forward and backward alone: torch's RNN/GRU/LSTM against the
compiled layers rnnsweep runs for them on the CPU (rnnsweep/fast/cpu_rnn.py).

    python benchmarks/train_speed.py                  # generated AG News-sized data (~95k vocabulary)
    python benchmarks/train_speed.py --data DIR       # a directory with AG News-format train.csv/test.csv
    python benchmarks/train_speed.py --epoch-size 120000   # a whole epoch (slow: the reference is)
    python benchmarks/train_speed.py --device cuda    # both sides on the GPU (the lesson moves its model there too)
    python benchmarks/train_speed.py --batch-size 256 # both sides at another batch size than the lesson's 16

Everything runs in this one process, one configuration after the other, on the same data, at the
lesson's settings: embed 64, hidden 32, batch 16, Adam lr 1e-3, one epoch of `--epoch-size`
training examples (the lesson's `epoch_size`), every model tested on the whole test split.
Throughput is training examples per second over the training loop (batching included,
evaluation excluded) for both. On a shared machine a neighbour can halve one measurement, so
the comparison table runs reference and rnnsweep (and, for the LSTM, the bare kernels) alternately
`--repeats` times and keeps each side's best throughput; each ratio is also given paired, as the
median over repeats of each rnnsweep run against the reference run of its own repeat. Repeat k
trains with seed k on both sides (initial weights and batch order), so the accuracy columns are
means over seeds: one seed's test accuracy after one epoch moves by about a point with float
rounding alone. The bare kernel is run
twice per repeat: with torch's LSTM (oneDNN) and with rnnsweep's compiled LSTM, the layer
rnnsweep trains with. rnnsweep's share of each is given best against best and, less exposed to a
neighbour's load changing between runs, as the median of each repeat against the kernel run just
before it. The lever table runs seed 0 once per row.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import agnews_like  # noqa: E402
import kernel_share  # noqa: E402
import lesson_reference as ref  # noqa: E402

from hydra import compose, initialize_config_dir  # noqa: E402

from rnnsweep import cli, config, run  # noqa: E402
from rnnsweep.fast import cpu_rnn  # noqa: E402
from rnnsweep.data import batches  # noqa: E402

LESSONS = {  # reference classifier -> the rnnsweep overrides that build the same model
    "rnn": ["lesson=rnn"],
    "lstm": ["lesson=lstm"],
    "gru": ["lesson=lstm", "model.arch=gru"],
    "packed_lstm": ["lesson=packed_lstm"],
}


def rnnsweep_run(overrides: list[str], data: Path, epoch_size: int, work: Path, threads: int,
                 device: str = "cpu", batch_size: int = 16, seed: int = 0) -> dict:
    config.register_schemas()
    with initialize_config_dir(config_dir=cli.config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "experiment=seed_notebook", "data=ag_news", f"data.root={data}", "data.download=false",
            f"train.epoch_size={epoch_size}", f"train.batch_size={batch_size}", "logger=none",
            "runtime.progress=off", f"runtime.threads={threads}",
            f"runtime.cache_dir={work / 'cache'}", f"runtime.device={device}", f"seed={seed}", *overrides,
        ])
    settings = config.validate(cfg)
    out = Path(tempfile.mkdtemp(dir=work))
    record = run.train(settings, None, out)
    m = record["metrics"]
    return {"ex_s": m["train/examples_per_s"], "acc": m["test/acc"]}


def reference_run(name: str, train, test, vocab, epoch_size: int, device: str = "cpu", batch_size: int = 16,
                  seed: int = 0) -> dict:
    torch.manual_seed(seed)  # the model's initial weights, then the DataLoader's shuffle
    use_lengths = name == "packed_lstm"
    net = ref.CLASSIFIERS[name](len(vocab), 64, 32, 4).to(device)
    loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True,
                                         collate_fn=ref.make_collate(vocab, use_lengths))
    started = time.perf_counter()
    count, _, _ = ref.train_epoch(net, loader, lr=0.001, epoch_size=epoch_size, use_lengths=use_lengths,
                                     device=device)
    seconds = time.perf_counter() - started
    test_loader = torch.utils.data.DataLoader(test, batch_size=256, collate_fn=ref.make_collate(vocab, use_lengths))
    return {"ex_s": count / seconds, "acc": ref.accuracy(net, test_loader, use_lengths, device), "examples": count}


def bare_kernel(data: Path, work: Path, epoch_size: int, bucket: bool, device: str = "cpu",
                batch_size: int = 16, compiled: bool = False) -> float:
    """The LSTM layer + head, forward + backward + fused Adam step, on ready batches of the shapes
    rnnsweep trains on, with a 100-word vocabulary: the ceiling for any input pipeline. The layer
    is torch's, or with `compiled` (on the CPU) rnnsweep's compiled one."""
    splits = agnews_like.encoded(data, work / "cache")
    g = torch.Generator().manual_seed(0)
    ready = [batches.collate(splits.train, rows) for rows in batches.batch_rows(
        splits.train, batch_size, shuffle=True, generator=g, bucket_pool=50 if bucket else None, limit=epoch_size)]
    for b in ready:
        b.ids.remainder_(100)
    ready = [b.to(torch.device(device)) for b in ready]
    torch.manual_seed(0)
    emb, lstm, fc = torch.nn.Embedding(100, 64), torch.nn.LSTM(64, 32, batch_first=True), torch.nn.Linear(32, 4)
    emb, lstm, fc = emb.to(device), lstm.to(device), fc.to(device)
    params = [*emb.parameters(), *lstm.parameters(), *fc.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    weights = [getattr(lstm, f"{name}_l0") for name in cpu_rnn.WEIGHTS]

    def last_state(x: torch.Tensor) -> torch.Tensor:  # h[-1], the state after the last (padded) step
        return cpu_rnn.layer(lstm, x, *weights)[:, -1] if compiled else lstm(x)[1][0][-1]

    started = time.perf_counter()
    for b in ready:
        loss = torch.nn.functional.cross_entropy(fc(last_state(emb(b.ids))), b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return sum(len(b) for b in ready) / (time.perf_counter() - started)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def layer_times(steps: int = 50, repeats: int = 200) -> None:
    """One recurrent layer's forward + backward at the lesson's sizes: torch's layer vs rnnsweep's."""
    torch.manual_seed(0)
    x = torch.randn(16, steps, 64, requires_grad=True)
    grad = torch.randn(16, steps, 32)
    print(f"\nOne layer, forward + backward, batch 16, {steps} steps, 64 -> 32 (ms; best of 2):\n")
    print("| layer | torch | rnnsweep | ratio |")
    print("|---|---|---|---|")
    for cls in (torch.nn.RNN, torch.nn.GRU, torch.nn.LSTM):
        rnn = cls(64, 32, batch_first=True)
        weights = [getattr(rnn, f"{name}_l0") for name in cpu_rnn.WEIGHTS]
        runs = {"torch": lambda: rnn(x)[0]}
        if cpu_rnn.applies(x, rnn):
            runs["rnnsweep"] = lambda: cpu_rnn.layer(rnn, x, *weights)
        ms = {}
        for name, call in runs.items():
            for _ in range(5):
                call().backward(grad)
            best = float("inf")
            for _ in range(2):
                started = time.perf_counter()
                for _ in range(repeats):
                    call().backward(grad)
                best = min(best, (time.perf_counter() - started) / repeats * 1e3)
            ms[name] = best
        if "rnnsweep" in ms:
            print(f"| {cls.__name__} | {ms['torch']:.2f} | {ms['rnnsweep']:.2f} (compiled) | "
                  f"{ms['torch'] / ms['rnnsweep']:.1f}x |")
        else:
            print(f"| {cls.__name__} | {ms['torch']:.2f} (oneDNN) | the same layer | 1.0x |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="a directory with AG News-format train.csv and test.csv")
    p.add_argument("--epoch-size", type=int, default=12_000, help="training examples per run (default 12000)")
    p.add_argument("--repeats", type=int, default=3,
                   help="alternating repeats of each comparison, repeat k with seed k (best throughput kept, "
                        "accuracy averaged)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch's and the compiled loops' threads on both sides (default: every core)")
    p.add_argument("--models", default="rnn,lstm,gru,packed_lstm",
                   help="comma-separated subset of rnn,lstm,gru,packed_lstm (default: all four)")
    p.add_argument("--no-levers", action="store_true", help="skip the lever-by-lever table")
    p.add_argument("--batch-size", type=int, default=16,
                   help="training batch size of both sides (default 16, the lesson's)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where both the reference and rnnsweep train (default cpu)")
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats}: expected 1 or more")
    unknown = [m for m in args.models.split(",") if m not in LESSONS]
    if unknown:
        p.error(f"--models: unknown {', '.join(map(repr, unknown))} (choose from: {','.join(LESSONS)})")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch")
    torch.set_num_threads(args.threads)
    cpu_rnn.set_threads(args.threads)
    device = args.device
    if device == "cpu":  # the compiled layers are CPU kernels; on the GPU cuDNN runs every layer
        # Which CPU, and which of torch's kernels it gets: the vector width changes both the speed
        # and the float rounding, so one-epoch accuracies match digit for digit only on one kind.
        print(f"cpu: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
              f"(kernels: {torch.backends.cpu.get_cpu_capability()})")
        layer_times()
    else:
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
              f"cuDNN {torch.backends.cudnn.version()}")
    work = Path(tempfile.mkdtemp(prefix="rnnsweep-bench-train-"))
    try:
        compare(args, work, device)
    finally:  # generated data and encoded caches: about 55 MB a run
        shutil.rmtree(work, ignore_errors=True)


def ratio_cell(runs: list[dict], refs: list[dict]) -> str:
    """rnnsweep's speed-up over the reference: best against best, then the median over repeats of
    each run against the reference run of the same repeat (`runs[k]` pairs with `refs[k]`)."""
    best = max(r["ex_s"] for r in runs) / max(r["ex_s"] for r in refs)
    paired = statistics.median(r["ex_s"] / ref_run["ex_s"] for r, ref_run in zip(runs, refs, strict=True))
    return f"{best:.1f}x / {paired:.1f}x"


def compare(args: argparse.Namespace, work: Path, device: str) -> None:
    data = args.data or agnews_like.write(work / "data")
    n = args.epoch_size

    train, test = ref.read_ag_news(data / "train.csv"), ref.read_ag_news(data / "test.csv")
    vocab = ref.Vocab(text for _, text in train)
    print(f"data: {len(train):,} train / {len(test):,} test texts, reference vocabulary {len(vocab):,}; "
          f"{n:,} training examples per run, batch {args.batch_size}, {args.threads} threads, on {device}", flush=True)
    # Build the encoded cache once, outside every timing, as a sweep's first job would.
    started = time.perf_counter()
    rnnsweep_run(LESSONS["lstm"], data, args.batch_size, work, args.threads, device, args.batch_size)  # one batch
    print(f"rnnsweep's encoded cache built in {time.perf_counter() - started:.1f} s (once per dataset)\n", flush=True)

    seeds = range(args.repeats)
    which = f"seeds 0-{seeds[-1]}" if len(seeds) > 1 else "seed 0"
    print(f"Best of {args.repeats} alternating runs each ({which}); test accuracy: the mean over those seeds:\n")
    print("Ratio: best against best, then (paired) the median over repeats of each rnnsweep run against "
          "the reference run of its own repeat, run just before it, so less exposed to the machine's load "
          "changing.\n")
    print("| model | reference ex/s | acc | rnnsweep (exact Adam) ex/s | acc | ratio: best / paired | "
          "rnnsweep sparse_adam ex/s | acc | ratio: best / paired |")
    print("|---|---|---|---|---|---|---|---|---|")
    def best(runs: list[dict]) -> dict:
        return {"ex_s": max(r["ex_s"] for r in runs), "acc": sum(r["acc"] for r in runs) / len(runs),
                "accs": [r["acc"] for r in runs]}

    # The bare kernels, measured alongside the LSTM rows (same conditions): torch's layer and, on
    # the CPU, rnnsweep's compiled one.
    kernels: dict[str, list[float]] = {"torch": [], "compiled": []} if device == "cpu" else {"torch": []}
    per_seed = []
    for name in args.models.split(","):
        refs, fasts, sparses = [], [], []
        for seed in seeds:
            refs.append(reference_run(name, train, test, vocab, n, device, args.batch_size, seed))
            if name == "lstm":  # right before rnnsweep's runs, so each pair meets the same load
                for layer, runs in kernels.items():
                    runs.append(bare_kernel(data, work, n, bucket=True, device=device, batch_size=args.batch_size,
                                            compiled=layer == "compiled"))
            fasts.append(rnnsweep_run(LESSONS[name] + ["batching.bucket=true"], data, n, work, args.threads, device,
                                      args.batch_size, seed))
            sparses.append(rnnsweep_run(
                LESSONS[name] + ["batching.bucket=true", "optimizer=sparse_adam", "optimizer.lr=0.001"],
                data, n, work, args.threads, device, args.batch_size, seed))
        r, fast, sparse = best(refs), best(fasts), best(sparses)
        per_seed.append((name, r, fast, sparse))
        print(f"| {name} | {r['ex_s']:,.0f} | {r['acc']:.3f} | {fast['ex_s']:,.0f} | {fast['acc']:.3f} | "
              f"{ratio_cell(fasts, refs)} | {sparse['ex_s']:,.0f} | {sparse['acc']:.3f} | {ratio_cell(sparses, refs)} |",
              flush=True)
        if name == "lstm":
            lstm_ref, lstm_fast, lstm_sparse, lstm_fasts, lstm_sparses = r, fast, sparse, fasts, sparses

    print("\nTest accuracy per seed (reference / exact Adam / sparse_adam):\n")
    for name, r, fast, sparse in per_seed:
        print(f"- {name}: " + "; ".join(
            f"seed {seed}: {a:.3f} / {b:.3f} / {c:.3f}" for seed, a, b, c in zip(seeds, r["accs"], fast["accs"],
                                                                                 sparse["accs"])))
    if kernels["torch"]:
        print("\nbare kernel (LSTM + head, fused Adam, 100-word vocabulary, same bucketed shapes):")
        for layer, runs in kernels.items():
            kernel = max(runs)
            paired = [(f["ex_s"] / k, sp["ex_s"] / k) for k, f, sp in zip(runs, lstm_fasts, lstm_sparses)]
            label = "torch's LSTM (oneDNN)" if layer == "torch" else "rnnsweep's compiled LSTM"
            print(f"- {label}: {kernel:,.0f} ex/s, {kernel / lstm_ref['ex_s']:.1f}x the reference; rnnsweep reaches "
                  f"{lstm_fast['ex_s'] / kernel:.0%} of it with exact Adam, {lstm_sparse['ex_s'] / kernel:.0%} with "
                  f"sparse_adam (best against best; each repeat against its own kernel run, median: "
                  f"{statistics.median(f for f, _ in paired):.0%} and {statistics.median(sp for _, sp in paired):.0%})",
                  flush=True)
        if device == "cpu":
            # Whole runs meet whatever load the machine has at the time, and on a shared machine
            # that moves by more than the few percent in question between two runs: the same
            # share, measured with the two taking turns every 25 batches in one process.
            rounds, examples = max(args.repeats, 3), min(n, 12_000)  # per-step costs: an epoch's start is enough
            _, seconds = kernel_share.interleaved(agnews_like.encoded(data, work / "cache"), examples, rounds, 25,
                                                  only_kernel_and_fit=True, batch_size=args.batch_size)
            print(f"- the same share, interleaved (the compiled kernel and exact Adam through rnnsweep's fit "
                  f"taking turns every 25 batches in one process, as `make bench-share` does; {examples:,} "
                  f"examples, {args.threads} thread(s), median of {rounds} rounds): "
                  f"{kernel_share.share(seconds, kernel_share.FIT):.0%}", flush=True)
    if args.no_levers or "lstm" not in args.models.split(","):
        return
    print("\nLever by lever (LSTM, seed settings, seed 0; each row: the levers-off rnnsweep run plus one lever):\n")
    print("| configuration | ex/s | vs reference | test acc |")
    print("|---|---|---|---|")
    print(f"| reference: the lesson's procedure | {lstm_ref['ex_s']:,.0f} | 1.0x | {lstm_ref['accs'][0]:.3f} |")
    base = LESSONS["lstm"] + ["batching.bucket=false", "optimizer.impl=for_loop", "optimizer.embedding_grad=dense",
                              "runtime.compiled_rnn=false"]
    rows = [
        ("rnnsweep, levers off: batches cut from the encoded cache, torch's default Adam", []),
        ("+ fused Adam (same algorithm)", ["optimizer.impl=fused"]),
        ("+ foreach Adam (same algorithm)", ["optimizer.impl=foreach"]),
        ("+ scattered embedding gradient (same values)", ["optimizer.embedding_grad=scattered"]),
        ("+ deferred embedding updates (same algorithm)", ["optimizer.embedding_grad=deferred"]),
        ("+ length-bucketed batches", ["batching.bucket=true"]),
        ("+ rnnsweep's compiled LSTM layer (same arithmetic)", ["runtime.compiled_rnn=true"]),
        ("+ sparse_adam (lazy Adam)", ["optimizer=sparse_adam", "optimizer.lr=0.001"]),
        ("+ one thread instead of all", ["runtime.threads=1"]),
    ]
    if device == "cuda":  # deferred updates are a CPU optimizer; threads matter little to GPU work
        rows = [row for row in rows if not any(o.endswith(("=deferred", "threads=1", "compiled_rnn=true"))
                                               for o in row[1])]
        rows.append(("+ mixed precision (runtime.amp=true)", ["runtime.amp=true"]))
    for label, extra in rows:
        threads = 1 if "runtime.threads=1" in extra else args.threads
        overrides = base + [e for e in extra if not e.startswith("runtime.threads")]
        if "optimizer=sparse_adam" in extra:  # lazy Adam has neither switch
            overrides = [o for o in overrides if not o.startswith(("optimizer.impl", "optimizer.embedding_grad"))]
        overrides = list(dict.fromkeys(overrides))  # a lever's override replaces the base's
        for key in {o.split("=")[0] for o in extra}:
            overrides = [o for o in overrides if not (o.split("=")[0] == key and o not in extra)]
        r = rnnsweep_run(overrides, data, n, work, threads, device, args.batch_size)
        torch.set_num_threads(args.threads)
        cpu_rnn.set_threads(args.threads)
        print(f"| {label} | {r['ex_s']:,.0f} | {r['ex_s'] / lstm_ref['ex_s']:.1f}x | {r['acc']:.3f} |", flush=True)
    packed_native = rnnsweep_run(LESSONS["packed_lstm"] + ["batching.native_packing=true"], data, n, work,
                                 args.threads, device, args.batch_size)
    packed_fast = rnnsweep_run(LESSONS["packed_lstm"] + ["batching.bucket=true"], data, n, work, args.threads, device,
                               args.batch_size)
    native, fast = (("PyTorch's packed CPU path (native_packing=true, no buckets)",
                     "padded kernel read at each length, buckets") if device == "cpu"
                    else ("cuDNN's packed kernel, no buckets", "cuDNN's packed kernel, buckets"))
    print(f"| packed LSTM, rnnsweep default but {native} | {packed_native['ex_s']:,.0f} | - | "
          f"{packed_native['acc']:.3f} |")
    print(f"| packed LSTM, rnnsweep default ({fast}) | {packed_fast['ex_s']:,.0f} | - | {packed_fast['acc']:.3f} |")
    embedding = "deferred embedding updates" if device == "cpu" else "dense embedding gradient"
    print(f"| rnnsweep default: fused Adam + {embedding} + buckets | {lstm_fast['ex_s']:,.0f} | "
          f"{lstm_fast['ex_s'] / lstm_ref['ex_s']:.1f}x | {lstm_fast['accs'][0]:.3f} |")
    print(f"| rnnsweep default + sparse_adam | {lstm_sparse['ex_s']:,.0f} | "
          f"{lstm_sparse['ex_s'] / lstm_ref['ex_s']:.1f}x | {lstm_sparse['accs'][0]:.3f} |")
    for layer, runs in kernels.items():
        which = "torch's LSTM" if layer == "torch" else "rnnsweep's compiled LSTM"
        print(f"| bare kernel: {which} + head, fused Adam, 100-word vocabulary, same bucketed shapes | "
              f"{max(runs):,.0f} | {max(runs) / lstm_ref['ex_s']:.1f}x | - |")


if __name__ == "__main__":
    main()
