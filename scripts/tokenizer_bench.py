#!/usr/bin/env python3
"""Encoding throughput of the Python references on the text benches/tokenizer.rs uses.

    .venv/bin/python scripts/tokenizer_bench.py

Prints MB/s for Qwen-1's encoding in Python tiktoken (NFC + encode(allowed_special="all"), as
QWenTokenizer.encode does, and encode_ordinary alone) and for HF tokenizers with the Qwen3
tokenizer.json, single-threaded, best of 5.
"""

import json
import sys
import time
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tokenizer_golden as tg  # noqa: E402


def bench_text() -> str:
    # Must stay identical to bench_text() in benches/tokenizer.rs.
    with open(tg.DATA / "corpus.jsonl", encoding="utf-8") as f:
        corpus = [json.loads(line)["text"] for line in f if line.strip()]
    once = "\n".join(corpus)
    reps = (4 << 20) // max(len(once.encode()), 1) + 1
    return once * reps


def best_of(runs, f):
    best = float("inf")
    out = None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    text = bench_text()
    mb = len(text.encode()) / 1e6
    enc = tg.qwen1_encoding()
    t, ids = best_of(5, lambda: tg.qwen1_encode(enc, text))
    t_ord, _ = best_of(5, lambda: enc.encode_ordinary(unicodedata.normalize("NFC", text)))
    print(f"python tiktoken qwen1: {mb:.2f} MB -> {len(ids)} tokens, NFC+encode {mb / t:.2f} MB/s, "
          f"NFC+encode_ordinary {mb / t_ord:.2f} MB/s")
    tok = tg.qwen3_tokenizer()
    t, enc3 = best_of(5, lambda: tok.encode(text, add_special_tokens=False))
    print(f"python HF tokenizers qwen3: {len(enc3.ids)} tokens, encode {mb / t:.2f} MB/s")


if __name__ == "__main__":
    main()
