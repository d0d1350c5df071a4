#!/usr/bin/env bash
# The one test command (README "Tests"; .ci/run calls exactly this).
# 1. fetch test assets and the Python test venv (numpy + gguf; no torch) — idempotent
# 2. every Rust test of the workspace, in release mode (the model tests run real forward passes)
# 3. cross-check converted files with an independent reader (PyPI `gguf`)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== setup (assets, .venv)" >&2
scripts/setup.sh

echo "== cargo test" >&2
cargo test --workspace --release

echo "== independent reader: gguf package on converted fixtures" >&2
scripts/check_fixtures.sh
.venv/bin/python scripts/test_check_gguf.py
echo "all tests passed" >&2
