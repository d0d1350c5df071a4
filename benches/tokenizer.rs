//! Tokenizer benchmark: time to build the tokenizer from a 151k vocabulary, and encoding
//! throughput on a mixed text (the committed corpus joined by newlines, repeated to ~4 MB).
//! `scripts/tokenizer_bench.py` measures Python tiktoken (Qwen-1 encoding) and HF tokenizers on
//! the very same text. Run: `cargo bench --bench tokenizer` (needs assets/ from scripts/setup.sh).

#[path = "../tests/tokenizer_vocab/mod.rs"]
mod tokenizer_vocab;

use std::time::{Duration, Instant};

use qwen::tokenizer::{Normalization, PreTokenizer, Tokenizer, TokenizerConfig};
use rustc_hash::FxHashMap;
use tiktoken_rs::{CoreBPE, Rank};
use tokenizer_vocab as tv;

/// The benchmark text: must stay identical to `bench_text()` in scripts/tokenizer_bench.py.
fn bench_text() -> String {
    let corpus: Vec<String> = tv::read_jsonl("data/tokenizer/corpus.jsonl")
        .iter()
        .map(|v| v["text"].as_str().expect("text").to_string())
        .collect();
    let once = corpus.join("\n");
    let reps = (4 << 20) / once.len().max(1) + 1;
    once.repeat(reps)
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..runs {
        let t0 = Instant::now();
        let r = f();
        best = best.min(t0.elapsed());
        last = Some(r);
    }
    (best, last.expect("runs > 0"))
}

/// Best of `runs` where `f` times itself (to leave set-up and drop out).
fn best_inner(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..runs).map(|_| f()).min().unwrap_or_default()
}

fn main() {
    // `cargo test --benches` runs this binary too; keep that cheap.
    let quick = std::env::args().any(|a| a == "--test");

    let v3 = tv::qwen3_vocab();
    let v1 = tv::qwen1_vocab();
    let build = |v: &tv::Vocab, normalization| {
        let config = TokenizerConfig {
            pre: PreTokenizer::Qwen2,
            normalization,
            eos_ids: vec![],
        };
        Tokenizer::from_parts(&v.tokens, &v.kinds, v.merges.as_deref(), config).expect("build")
    };
    let runs = if quick { 1 } else { 7 };
    let (t3, tok3) = best_of(runs, || build(&v3, Normalization::Nfc));
    let (t1, tok1) = best_of(runs, || build(&v1, Normalization::NfcBeforeSpecials));
    println!(
        "build from vocabulary: qwen3 {} rows {:.1} ms, qwen1 {} rows {:.1} ms (best of {runs})",
        tok3.n_tokens(),
        t3.as_secs_f64() * 1e3,
        tok1.n_tokens(),
        t1.as_secs_f64() * 1e3
    );

    // The share of that inside tiktoken-rs: CoreBPE::new alone on the finished encoder (it clones
    // all keys twice, sorts one copy and builds the decoder map).
    let encoder: FxHashMap<Vec<u8>, Rank> = (0..151_643u32)
        .map(|id| (tok3.token_bytes(id).expect("row").to_vec(), id))
        .collect();
    let t_core = best_inner(runs, || {
        let enc = encoder.clone();
        let t0 = Instant::now();
        let bpe =
            CoreBPE::new(enc, FxHashMap::default(), PreTokenizer::Qwen2.pattern()).expect("bpe");
        let t = t0.elapsed();
        drop(bpe);
        t
    });
    println!(
        "  of which tiktoken_rs::CoreBPE::new on the finished encoder: {:.1} ms",
        t_core.as_secs_f64() * 1e3
    );

    let text = bench_text();
    let text = if quick {
        text[..text.floor_char_boundary(1 << 16)].to_string()
    } else {
        text
    };
    let mb = text.len() as f64 / 1e6;
    let runs = if quick { 1 } else { 5 };
    for (name, tok) in [("qwen1", &tok1), ("qwen3", &tok3)] {
        let (t, ids) = best_of(runs, || tok.encode(&text));
        let (to, _) = best_of(runs, || tok.encode_ordinary(&text));
        println!(
            "encode {name}: {:.2} MB -> {} tokens, encode {:.2} MB/s, encode_ordinary {:.2} MB/s (best of {runs}, 1 thread)",
            mb,
            ids.len(),
            mb / t.as_secs_f64(),
            mb / to.as_secs_f64()
        );
    }
}
