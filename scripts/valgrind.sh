#!/usr/bin/env bash
# Memory-safety check: run the GGUF reader tests (quant-formats/tests/*.rs) and
# the kernel tests (tests/kernels.rs) under valgrind memcheck; any invalid read,
# write, use of uninitialised memory or bad free fails the run.
#
#   scripts/valgrind.sh            # every test of those binaries (~3 min)
#   scripts/valgrind.sh kernels    # only the binaries named (gguf_hostile, gguf_roundtrip,
#                                  # reference, golden, kernels)
#
# Test binaries are built by `cargo test --no-run` (the test profile: opt-level 2
# with debug info) and found from cargo's JSON messages. Valgrind hides
# AVX-512 from the program, so the kernels run their AVX2 (or scalar) path.
set -euo pipefail
cd "$(dirname "$0")/.."

ONLY=("$@")
command -v valgrind >/dev/null || { echo "error: valgrind is not installed" >&2; exit 1; }

# binary name -> test filter ("" = every test; all of them finish in about a
# minute each under memcheck, the 20k random GGUF mutations included).
declare -A FILTERS=(
    [gguf_hostile]=""
    [gguf_roundtrip]=""
    [reference]=""
    [golden]=""
    [kernels]=""
)

# Builds the tests of `cargo test ARGS…` and prints "name path" per test binary.
test_binaries() {
    cargo test --no-run --message-format=json "$@" 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        if "test" in m["target"]["kind"]:
            print(m["target"]["name"], m["executable"])
'
}

echo "building test binaries..."
mapfile -t BINS < <(test_binaries -p quant-formats --tests; test_binaries -p qwen-rs --test kernels)
[ ${#BINS[@]} -gt 0 ] || { echo "error: no test binaries found (does cargo test --no-run build?)" >&2; exit 1; }

LOG_DIR=target/valgrind
mkdir -p "$LOG_DIR"
status=0
for entry in "${BINS[@]}"; do
    name="${entry%% *}"
    exe="${entry#* }"
    [ -n "${FILTERS[$name]+x}" ] || continue
    if [ ${#ONLY[@]} -gt 0 ] && [[ ! " ${ONLY[*]} " == *" $name "* ]]; then continue; fi
    args=(--test-threads=1)
    [ -n "${FILTERS[$name]}" ] && args+=("${FILTERS[$name]}")
    log="$LOG_DIR/$name.log"
    start=$(date +%s)
    rc=0
    # Tests read fixtures relative to their crate folder.
    crate_dir=.
    case "$name" in gguf_hostile | gguf_roundtrip | reference | golden) crate_dir=quant-formats ;; esac
    (cd "$crate_dir" && valgrind --tool=memcheck --error-exitcode=99 --track-origins=yes \
        --log-file="$OLDPWD/$log" "$exe" "${args[@]}") >"$LOG_DIR/$name.out" 2>&1 || rc=$?
    secs=$(( $(date +%s) - start ))
    errors=$(grep -Eo 'ERROR SUMMARY: [0-9]+ errors' "$log" | tail -1 | grep -Eo '[0-9]+' | head -1)
    tests=$(grep -Eo 'test result: .*' "$LOG_DIR/$name.out" | tail -1)
    echo "$name: ${errors:-?} memcheck errors; $tests; ${secs}s (log $log)"
    if [ "$rc" != 0 ]; then
        status=1
        [ "$rc" = 99 ] && echo "  memcheck reported errors, see $log" || echo "  tests failed (exit $rc), see $LOG_DIR/$name.out"
    fi
done
exit "$status"
