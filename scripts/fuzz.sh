#!/usr/bin/env bash
# Fuzz the GGUF reader, the converter's safetensors/config reader and the
# tokenizer with cargo-fuzz (libFuzzer) on the STABLE toolchain.
#
#   scripts/fuzz.sh                      # build, then run every target 60 s, one after another
#   scripts/fuzz.sh -t 1800 -p           # 30 min each, all targets at once (nice 19)
#   scripts/fuzz.sh -t 300 gguf          # one target
#   scripts/fuzz.sh -r gguf fuzz/artifacts/gguf/crash-…   # replay one input
#
# Needs: cargo install cargo-fuzz (0.13; a C++ compiler for libFuzzer).
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address, …); RUSTC_BOOTSTRAP=1
# lets the stable compiler accept them. SANITIZER=none skips ASan (faster, and
# all our code outside src/kernels/ is safe Rust anyway).
#
# Inputs: committed seeds in fuzz/seeds/<target>/ (read-only for the fuzzer);
# the growing corpus in fuzz/corpus/<target>/ and crashes in
# fuzz/artifacts/<target>/ (both git-ignored). Every crash found must become a
# regression test (tests/fuzz_regressions.rs or tests/hostile_cli.rs).
set -euo pipefail

cd "$(dirname "$0")/.."
ALL_TARGETS=(gguf safetensors tokenizer)
TIME=60
PARALLEL=0
REPLAY=0
SANITIZER="${SANITIZER:-address}"

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while getopts "t:prh" opt; do
    case "$opt" in
        t) TIME="$OPTARG" ;;
        p) PARALLEL=1 ;;
        r) REPLAY=1 ;;
        h) usage 0 ;;
        *) usage 1 ;;
    esac
done
shift $((OPTIND - 1))

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "error: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2
    exit 1
fi
FUZZ=(cargo fuzz)
# -a: debug assertions and overflow checks on (an overflow on hostile input is a finding).
BUILD_FLAGS=(-O -a -s "$SANITIZER" --fuzz-dir fuzz)

if [ "$REPLAY" = 1 ]; then
    [ $# -ge 2 ] || { echo "error: -r needs TARGET and INPUT files" >&2; exit 1; }
    target="$1"; shift
    exec "${FUZZ[@]}" run "${BUILD_FLAGS[@]}" "$target" "$@"
fi

TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")

HOST=$(rustc -vV | sed -n 's/^host: //p')
BIN_DIR="fuzz/target/$HOST/release"
echo "building ${TARGETS[*]} (sanitizer: $SANITIZER)"
for t in "${TARGETS[@]}"; do
    if ! "${FUZZ[@]}" build "${BUILD_FLAGS[@]}" "$t"; then
        # The workspace is shared: if someone's half-written file breaks the
        # build, fuzz the last good binary rather than nothing (KEEP_OLD=0 to refuse).
        if [ "${KEEP_OLD:-1}" = 1 ] && [ -x "$BIN_DIR/$t" ]; then
            echo "warning: build of $t failed; fuzzing the previous binary $BIN_DIR/$t" >&2
        else
            echo "error: build of $t failed" >&2
            exit 1
        fi
    fi
done

# libFuzzer options: inputs up to 64 KB (seeds are < 20 KB), 10 s per input,
# 2 GB of memory; a slower or bigger input is a finding too.
LIBFUZZER_ARGS=(-max_total_time="$TIME" -max_len=65536 -timeout=10 -rss_limit_mb=2048
    -print_final_stats=1)

run_one() {
    local t="$1"
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t" fuzz/logs
    local log="fuzz/logs/$t.log"
    echo "fuzzing $t for ${TIME}s -> $log"
    local rc=0
    # What `cargo fuzz run` does, without its rebuild: new inputs go to the first folder.
    nice -n 19 "$BIN_DIR/$t" "${LIBFUZZER_ARGS[@]}" -artifact_prefix="fuzz/artifacts/$t/" \
        "fuzz/corpus/$t" "fuzz/seeds/$t" >"$log" 2>&1 || rc=$?
    local stats
    stats=$(grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log" | tr '\n' ' ')
    echo "$t: exit $rc; $stats; corpus $(ls "fuzz/corpus/$t" | wc -l) files; artifacts: $(ls "fuzz/artifacts/$t" | tr '\n' ' ')"
    return "$rc"
}

status=0
if [ "$PARALLEL" = 1 ]; then
    pids=()
    for t in "${TARGETS[@]}"; do
        run_one "$t" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || status=1
    done
else
    for t in "${TARGETS[@]}"; do
        run_one "$t" || status=1
    done
fi
# The safetensors target writes its files to /dev/shm/qwen-fuzz-safetensors-PID.
for d in /dev/shm/qwen-fuzz-safetensors-* "${TMPDIR:-/tmp}"/qwen-fuzz-safetensors-*; do
    [ -d "$d" ] || continue
    kill -0 "${d##*-}" 2>/dev/null || rm -rf "$d"
done
exit "$status"
