#!/usr/bin/env bash
# Converts every committed tiny checkpoint (tests/fixtures/hf/*) to every output type with
# qwen-convert, then opens each file with the PyPI `gguf` package (an independent reader) and
# checks its dequantized tensors against the source (scripts/check_gguf.py).
set -euo pipefail
cd "$(dirname "$0")/.."
conv=target/release/qwen-convert
[ -x "$conv" ] || cargo build --release -p qwen-convert
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
n=0
for dir in tests/fixtures/hf/*/; do
  name=$(basename "$dir")
  for t in f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1; do
    "$conv" -i "$dir" -o "$out/$name.$t.qbin" -t "$t" 2>"$out/log" || { cat "$out/log" >&2; exit 1; }
    .venv/bin/python scripts/check_gguf.py "$out/$name.$t.qbin" "$dir"
    n=$((n + 1))
  done
done
echo "gguf package agrees on $n converted files" >&2
