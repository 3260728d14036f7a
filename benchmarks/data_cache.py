"""Tokenize, encode and cache AG News-sized data; reload it; then a million rows.

    python benchmarks/data_cache.py                    # generated data (benchmarks/agnews_like.py)
    python benchmarks/data_cache.py --data DIR         # a directory with AG News's train.csv/test.csv
    python benchmarks/data_cache.py --million 0        # skip the 1,000,000-row build

Targets: 120,000 documents built (read, tokenized, encoded, cached) in under 10 s and reloaded in
under 1 s; 1,000,000 documents built in under 90 s with peak memory under 3 GB. Each cold build
runs in a fresh process, so its peak RSS is its own; every figure comes from this one invocation.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import agnews_like  # noqa: E402

BUILD = """
import json, sys, time
from pathlib import Path
from rnnsweep.data import SplitOptions, TokenizerOptions, prepare
from rnnsweep.data.sources import AgNews
from agnews_like import canonical_md5
root, cache, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
tok = TokenizerOptions(name=name, min_freq=1 if name == "basic_english" else 2,
                       max_vocab=None if name == "basic_english" else 30000)
src = AgNews(root=root, download=False, urls={}, md5=canonical_md5(), clean=True, drop_empty=True)
t = time.perf_counter()
s = prepare(src, SplitOptions(val_fraction=0.05, seed=1234), tok, cache)
build = time.perf_counter() - t
assert s.built
t = time.perf_counter()
again = prepare(src, SplitOptions(val_fraction=0.05, seed=1234), tok, cache)
reload = time.perf_counter() - t
assert not again.built
rows = len(s.train) + len(s.val) + len(s.test)
tokens = sum(int(p.offsets[-1]) for p in (s.train, s.val, s.test))
print(json.dumps({"build": build, "reload": reload, "rows": rows, "tokens": tokens, "vocab": s.vocab_size}))
"""

SPEED = """
import json, sys, time
import numpy as np
from pathlib import Path
from rnnsweep.data import tokenization as T
from rnnsweep.data.sources import AgNews
from agnews_like import canonical_md5
src = AgNews(root=Path(sys.argv[1]), download=False, urls={}, md5=canonical_md5(), clean=True, drop_empty=True)
texts = src.read().train_texts
out = {}
t = time.perf_counter(); n = sum(len(T.basic_english(x)) for x in texts); out["basic_english, rule by rule (torchtext's way)"] = (time.perf_counter() - t, n)
t = time.perf_counter(); n = sum(map(len, T._basic_english_rows(texts))); out["basic_english, chunked (rnnsweep)"] = (time.perf_counter() - t, n)
from tokenizers import Tokenizer
for kind in ("wordpiece", "bpe"):
    enc = T.subword_vocabulary(kind, texts[:20000], np.arange(20000), min_freq=2, max_vocab=30000)
    tmp = Path(sys.argv[2]) / kind
    tmp.mkdir(parents=True, exist_ok=True)
    enc.save(tmp)
    tok = Tokenizer.from_file(str(tmp / "tokenizer.json"))
    t = time.perf_counter()
    n = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
    out[f"{kind} (HF tokenizers, encode_batch)"] = (time.perf_counter() - t, n)
print(json.dumps({"docs": len(texts), "results": out}))
"""


def child(code: str, *args: str) -> tuple[dict, float, float]:
    """Run `code` in a fresh interpreter: its JSON output, wall seconds, peak RSS in GB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    # The benchmarks' folder on the path: the scripts read the canonical MD5s through agnews_like.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if res.returncode != 0:
        sys.exit(f"benchmark step failed:\n{res.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest of any child so far: report it only when it grew.
    return json.loads(res.stdout.strip().splitlines()[-1]), wall, max(peak, before) / 1024**2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="a directory with AG News-format train.csv and test.csv")
    p.add_argument("--million", type=int, default=1_000_000, help="rows of the large build (0: skip)")
    p.add_argument("--keep", action="store_true", help="keep the generated files and caches")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rnnsweep-bench-data-"))
    data = args.data
    if data is None:
        t = time.perf_counter()
        data = agnews_like.write(work / "ag120")
        print(f"generated 120,000 + 7,600 AG News-like rows in {time.perf_counter() - t:.1f} s ({data})")

    print("\n| tokenizer | cold build (read + tokenize + encode + cache) | reload from cache | rows | tokens | vocab |")
    print("|---|---|---|---|---|---|")
    for name in ("basic_english", "wordpiece", "bpe"):
        r, _, _ = child(BUILD, str(data), str(work / f"cache-{name}"), name)
        print(f"| {name} | {r['build']:.2f} s | {r['reload'] * 1000:.0f} ms | {r['rows']:,} | {r['tokens']:,} | "
              f"{r['vocab']:,} |", flush=True)

    speed, _, _ = child(SPEED, str(data), str(work / "speed"))
    print(f"\nTokenizer speed on the {speed['docs']:,} training texts (tokenize only, one process):\n")
    print("| tokenizer | seconds | docs/s | tokens/s |")
    print("|---|---|---|---|")
    for name, (seconds, tokens) in speed["results"].items():
        print(f"| {name} | {seconds:.2f} | {speed['docs'] / seconds:,.0f} | {tokens / seconds:,.0f} |")

    if args.million:
        t = time.perf_counter()
        big = agnews_like.write(work / "ag1m", train=args.million, test=7_600)
        print(f"\ngenerated {args.million:,} rows in {time.perf_counter() - t:.1f} s")
        r, wall, peak = child(BUILD, str(big), str(work / "cache-1m"), "basic_english")
        print(f"{r['rows']:,} documents, basic_english: cold build {r['build']:.1f} s (process {wall:.1f} s), "
              f"reload {r['reload'] * 1000:.0f} ms, peak RSS {peak:.2f} GB, {r['tokens']:,} tokens, "
              f"vocab {r['vocab']:,}")
    if args.keep:
        print(f"\n(work files in {work})")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
