#!/usr/bin/env bash
# The measurements behind the speed table in README.md and bench/RESULTS.md.
#
#   TORCH_PYTHON=/path/to/venv/bin/python LLAMA_BENCH=/path/to/llama-bench scripts/bench.sh [WORK_DIR]
#
# WORK_DIR (default /work/bench) receives, outside the repository:
#   hf/qwen2.5-{0.5b,1.5b}/   random-weight checkpoints of the real shapes (scripts/make_bench_models.py;
#                             made only if missing, which needs TORCH_PYTHON with torch + transformers)
#   gguf/*.gguf               those converted by qwen-convert: q4_0, q8_0 (both sizes), f16 (0.5B), q4_K (1.5B)
#   results/                  every raw output (qwen-bench --json, llama-bench -o json) and summary.md
#
# For each file, qwen-bench and llama-bench run alternately on the SAME file, ROUNDS times
# (default 1), each with -p 128 -n 64 -t $THREADS -r $REPS (defaults 2 and 3). Then the
# busy-neighbour test: a `while :; do :; done` shell loop at nice 0 keeps one core busy while
# both measure tg again (q4_0 files; BUSY_TYPES to change). Then load time and peak RSS of the
# 1.5B files (qwen-bench --json, warm page cache), and the 2-thread memory read bandwidth
# (cargo bench --bench kernels -- read_bandwidth, an anonymous 1 GiB buffer), for reference.
# The decode limit of each row comes from the read bandwidth qwen-bench --read-bw measures between
# its own tg runs (the same file's mapping, the same minutes): the machine's bandwidth drifts by
# a third over a day, so a probe taken at another time says little about a given run.
# Then, for the NOMMAP_TYPES files (default q4_0 q8_0), both again with the model read into memory
# instead of mapped: ours --no-mmap (2 MiB pages) and llama-bench -lm none, alternating; there
# --read-bw reads our copy, so its limit is the one of memory on 2 MiB pages.
#
# LLAMA_BENCH unset: the llama.cpp columns are skipped. Nothing here builds llama.cpp.
# Run it on a quiet machine: every other process shows up in the numbers.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-/work/bench}"
THREADS="${THREADS:-2}"
REPS="${REPS:-3}"
ROUNDS="${ROUNDS:-1}"
PP="${PP:-128}"
TG="${TG:-64}"
BUSY_TYPES="${BUSY_TYPES:-q4_0}"
NOMMAP_TYPES="${NOMMAP_TYPES:-q4_0 q8_0}"
LLAMA_BENCH="${LLAMA_BENCH:-}"
OUT="${OUT:-$WORK/results}"
mkdir -p "$WORK/gguf" "$OUT"
# SKIP_QUIET=1 keeps the quiet pass's results in OUT and runs only the later passes.
if [[ -z "${SKIP_QUIET:-}" ]]; then
  rm -f "$OUT"/*.json "$OUT"/bandwidth.txt  # the summary reads whatever is here
fi

cd "$ROOT"
# NO_BUILD=1 uses the binaries already in target/release (e.g. while the tree is mid-edit).
if [[ -z "${NO_BUILD:-}" ]]; then
  cargo build --release --bin qwen-bench --bin qwen-convert -p qwen-rs -p qwen-convert
fi
# Copies, so that a build by someone else during the run cannot swap the binary under us.
mkdir -p "$WORK/bin"
cp "$ROOT/target/release/qwen-bench" "$ROOT/target/release/qwen-convert" "$WORK/bin/"
QB="$WORK/bin/qwen-bench"
QC="$WORK/bin/qwen-convert"

if [[ ! -f "$WORK/hf/qwen2.5-0.5b/model.safetensors" || ! -f "$WORK/hf/qwen2.5-1.5b/model.safetensors" ]]; then
  : "${TORCH_PYTHON:?set TORCH_PYTHON to a python with torch + transformers to make the bench models}"
  "$TORCH_PYTHON" scripts/make_bench_models.py "$WORK/hf"
fi

FILES=()
for spec in 0.5b:q4_0 0.5b:q8_0 0.5b:f16 1.5b:q4_0 1.5b:q8_0 1.5b:q4_K; do
  size="${spec%%:*}" ty="${spec##*:}"
  f="$WORK/gguf/qwen2.5-$size-$ty.gguf"
  if [[ ! -f "$f" ]]; then
    "$QC" -q -i "$WORK/hf/qwen2.5-$size" -o "$f" -t "$ty"
  fi
  FILES+=("$f")
done

{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -srm); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); $(nproc) cpus"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD) (tree $(git -C "$ROOT" diff --quiet HEAD -- src && echo clean || echo 'with uncommitted src/ changes'))"
  echo "qwen-bench binary: $(stat -c %y "$QB")"
  echo "rustc: $(rustc --version)"
  [[ -n "$LLAMA_BENCH" ]] && echo "llama-bench: $LLAMA_BENCH"
  echo "load before start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt"

ours() { # file tag extra-args...
  local f="$1" tag="$2"; shift 2
  "$QB" -f "$f" -t "$THREADS" -r "$REPS" --json "$@" | tee "$OUT/ours_$tag.json"
}
theirs() { # file tag extra-args...
  local f="$1" tag="$2"; shift 2
  [[ -z "$LLAMA_BENCH" ]] && return 0
  "$LLAMA_BENCH" -m "$f" -t "$THREADS" -r "$REPS" -o json "$@" > "$OUT/llama_$tag.json"
  python3 -c 'import json,sys
for r in json.load(open(sys.argv[1])):
    print("llama-bench p=%d n=%d: %.2f ± %.2f t/s" % (r["n_prompt"], r["n_gen"], r["avg_ts"], r["stddev_ts"]))' "$OUT/llama_$tag.json"
}

# 1. quiet: pp and tg, alternating on the same file.
for round in $( [[ -n "${SKIP_QUIET:-}" ]] || seq 1 "$ROUNDS"); do
  for f in "${FILES[@]}"; do
    tag="$(basename "$f" .gguf)_r$round"
    echo "== $tag"
    ours "$f" "$tag" -p "$PP" -n "$TG" --read-bw
    theirs "$f" "$tag" -p "$PP" -n "$TG"
  done
done

# 1b. read into memory instead of mapped: ours --no-mmap, llama.cpp -lm none (older llama-bench: -mmp 0).
for f in "${FILES[@]}"; do
  name="$(basename "$f" .gguf)"
  [[ " $NOMMAP_TYPES " == *" ${name##*-} "* ]] || continue
  echo "== no-mmap $name"
  ours "$f" "nommap_$name" -p "$PP" -n "$TG" --read-bw --no-mmap
  theirs "$f" "nommap_$name" -p "$PP" -n "$TG" -lm none
done

# 2. busy neighbour: one core kept busy by a shell loop; tg only.
for f in "${FILES[@]}"; do
  name="$(basename "$f" .gguf)"
  [[ " $BUSY_TYPES " == *" ${name##*-} "* ]] || continue
  echo "== busy $name"
  nice -n 0 sh -c 'while :; do :; done' &
  busy=$!
  trap 'kill "$busy" 2>/dev/null || true' EXIT
  sleep 1
  ours "$f" "busy_$name" -p 0 -n "$TG"
  theirs "$f" "busy_$name" -p 0 -n "$TG"
  kill "$busy"
  wait "$busy" 2>/dev/null || true
  trap - EXIT
done

# 3. load time and peak RSS of the 1.5B files (a second run: warm page cache).
for f in "$WORK"/gguf/qwen2.5-1.5b-*.gguf; do
  name="$(basename "$f" .gguf)"
  "$QB" -f "$f" -t "$THREADS" -p 16 -n 4 -r 1 --json > /dev/null
  echo "== load/rss $name"
  "$QB" -f "$f" -t "$THREADS" -r 1 --json -p "$PP" -n "$TG" | tee "$OUT/ours_load_$name.json"
done

# 4. memory read bandwidth, 2 threads (criterion; a failed build leaves the limit columns empty).
if [[ -z "${NO_BANDWIDTH:-}" ]]; then
  cargo bench --bench kernels -- read_bandwidth 2>&1 | tee "$OUT/bandwidth.txt" || true
fi

python3 - "$OUT" "$ROUNDS" <<'EOF' | tee "$OUT/summary.md"
import json, os, re, sys
out, rounds = sys.argv[1], int(sys.argv[2])
bw = None
bwf = os.path.join(out, "bandwidth.txt")
m = re.search(r"thrpt:\s*\[\s*[\d.]+ GiB/s\s+([\d.]+) GiB/s", open(bwf).read()) if os.path.exists(bwf) else None
if m:
    bw = float(m.group(1)) * 2**30
names = ["qwen2.5-0.5b-q4_0", "qwen2.5-0.5b-q8_0", "qwen2.5-0.5b-f16", "qwen2.5-1.5b-q4_0", "qwen2.5-1.5b-q8_0", "qwen2.5-1.5b-q4_K"]
def load(p):
    return json.load(open(p)) if os.path.exists(p) else None
def llama(p):
    rows = load(p) or []
    pp = next((r for r in rows if r["n_gen"] == 0), None)
    tg = next((r for r in rows if r["n_prompt"] == 0), None)
    return pp, tg
f = lambda r, k="tokens_per_s", s="stddev": f"{r[k]:.1f} ± {r[s]:.1f}" if r else "-"
def cells(o, llama_path):
    """pp, tg, ratios, read GB/s, decode limit and both % of it: the table cells one qwen-bench
    JSON and its llama-bench partner give."""
    lp, lt = llama(llama_path)
    ratio = lambda a, b: f"{a / b:.2f}" if a and b else "-"
    rbw = o.get("read_gbps")
    lim = rbw * 1e9 / o["decode_bytes_per_token"] if rbw else None
    pct = lambda x: f"{100 * x / lim:.0f}%" if lim and x else "-"
    return " | ".join([
        f(o["pp"]), f(lp, "avg_ts", "stddev_ts"), ratio(o["pp"]["tokens_per_s"], lp and lp["avg_ts"]),
        f(o["tg"]), f(lt, "avg_ts", "stddev_ts"), ratio(o["tg"]["tokens_per_s"], lt and lt["avg_ts"]),
        f"{rbw:.1f}" if rbw else "-", f"{lim:.1f}" if lim else "-",
        pct(o["tg"]["tokens_per_s"]), pct(lt and lt["avg_ts"]),
    ])
print(f"read bandwidth (criterion, 2 threads, 1 GiB anonymous buffer, after the runs): {bw / 1e9:.1f} GB/s" if bw else "criterion read bandwidth: not measured")
print("read GB/s below: qwen-bench --read-bw, the model file's mapping, between our tg runs (llama.cpp ran right after)")
print()
print("| model | type | round | ours pp128 | llama.cpp pp128 | pp ratio | ours tg64 | llama.cpp tg64 | tg ratio | read GB/s | decode limit | ours % of limit | llama.cpp % |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in range(1, rounds + 1):
    for n in names:
        o = load(os.path.join(out, f"ours_{n}_r{r}.json"))
        if not o:
            continue
        _, size, ty = n.split("-")
        print(f"| Qwen2.5-{size.upper()} | {ty} | {r} | {cells(o, os.path.join(out, f'llama_{n}_r{r}.json'))} |")
print()
print("read into memory (ours --no-mmap: 2 MiB pages, read GB/s over that copy; llama.cpp -lm none):")
print()
print("| model | type | ours pp128 | llama.cpp pp128 | pp ratio | ours tg64 | llama.cpp tg64 | tg ratio | read GB/s | decode limit | ours % of limit | llama.cpp % | ours load |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for n in names:
    o = load(os.path.join(out, f"ours_nommap_{n}.json"))
    if not o:
        continue
    _, size, ty = n.split("-")
    print(f"| Qwen2.5-{size.upper()} | {ty} | {cells(o, os.path.join(out, f'llama_nommap_{n}.json'))} | {o['load_s'] * 1e3:.0f} ms |")
print()
print("| busy neighbour | ours tg quiet | ours tg busy | kept | llama.cpp tg quiet | llama.cpp tg busy | kept |")
print("|---|---|---|---|---|---|---|")
for n in names:
    ob = load(os.path.join(out, f"ours_busy_{n}.json"))
    if not ob:
        continue
    oq = load(os.path.join(out, f"ours_{n}_r1.json"))
    _, lq = llama(os.path.join(out, f"llama_{n}_r1.json"))
    _, lb = llama(os.path.join(out, f"llama_busy_{n}.json"))
    keep = lambda b, q: f"{100 * b / q:.0f}%" if b and q else "-"
    print(f"| {n} | {f(oq['tg'])} | {f(ob['tg'])} | {keep(ob['tg']['tokens_per_s'], oq['tg']['tokens_per_s'])} | "
          f"{f(lq, 'avg_ts', 'stddev_ts')} | {f(lb, 'avg_ts', 'stddev_ts')} | {keep(lb and lb['avg_ts'], lq and lq['avg_ts'])} |")
print()
for n in names:
    o = load(os.path.join(out, f"ours_load_{n}.json"))
    if o:
        print(f"{n}: load {o['load_s'] * 1e3:.1f} ms (warm), peak RSS {o['peak_rss_mb']:.0f} MiB, file {o['file_bytes'] / 2**20:.0f} MiB")
EOF
