//! The forward pass agrees with itself: one batched prefill, prefill in small
//! chunks, and token-by-token decoding through the KV cache give the same
//! logits, for every architecture's code path (fused/split qkv, biases, q/k norm,
//! NEOX/normal RoPE, GQA, tied output). Plus the errors forward() promises.

#[path = "forward_common/mod.rs"]
mod common;

use common::Tiny;
use quant_formats::gguf::{Gguf, Value};
use qwen::model::KvType;
use qwen::{Model, ModelError};

/// 8-byte aligned copy, as an mmap would be.
fn aligned(bytes: &[u8]) -> Vec<u64> {
    let mut v = vec![0u64; bytes.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut v)[..bytes.len()].copy_from_slice(bytes);
    v
}

fn with_model<R>(t: &Tiny, f: impl FnOnce(&Model) -> R) -> R {
    let bytes = t.build();
    let buf = aligned(&bytes);
    let g = Gguf::parse(&bytemuck::cast_slice::<u64, u8>(&buf)[..bytes.len()]).expect("parse");
    let m = Model::load(&g).unwrap_or_else(|e| panic!("load {}: {e}", t.arch));
    f(&m)
}

const TOKENS: [u32; 19] = [
    5, 17, 3, 90, 44, 44, 1, 0, 63, 12, 7, 88, 31, 2, 9, 70, 71, 72, 15,
];

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The three paths agree, with keys and values cached as f32 and as f16 (each
/// path stores the same rounded values, so f16 holds them to the same bound).
fn check_paths(t: &Tiny) {
    for kv in [KvType::F32, KvType::F16] {
        check_paths_kv(t, kv);
    }
}

fn check_paths_kv(t: &Tiny, kv: KvType) {
    with_model(t, |m| {
        let v = m.config.n_vocab;
        let n = TOKENS.len();
        let new_state = |b: usize| m.new_state_kv(64, b, kv, kv);
        // 1. all positions at once.
        let mut st = new_state(64);
        let full = m
            .forward(&mut st, &TOKENS, 0, true)
            .expect("forward")
            .to_vec();
        assert_eq!(full.len(), n * v);
        // 2. chunks of 3.
        let mut st3 = new_state(3);
        let chunked = m
            .forward(&mut st3, &TOKENS, 0, true)
            .expect("forward")
            .to_vec();
        let d = max_abs_diff(&full, &chunked);
        assert!(d < 1e-4, "{} {kv}: chunked prefill differs by {d}", t.arch);
        // 3. prefill 5, then one token at a time, each compared to its row.
        let mut st1 = new_state(4);
        let last = m
            .forward(&mut st1, &TOKENS[..5], 0, false)
            .expect("forward")
            .to_vec();
        let d = max_abs_diff(&last, &full[4 * v..5 * v]);
        assert!(d < 1e-4, "{} {kv}: prefill last row differs by {d}", t.arch);
        for (i, &tok) in TOKENS.iter().enumerate().skip(5) {
            let row = m
                .forward(&mut st1, &[tok], i, false)
                .expect("decode")
                .to_vec();
            let d = max_abs_diff(&row, &full[i * v..(i + 1) * v]);
            assert!(d < 1e-4, "{} {kv}: decode at {i} differs by {d}", t.arch);
        }
        // The logits are not degenerate.
        let spread = full.iter().fold(0f32, |a, &b| a.max(b.abs()));
        assert!(spread > 1e-3, "{}: logits are all ~0", t.arch);
    })
}

#[test]
fn qwen2_gqa_biases() {
    check_paths(&Tiny::new("qwen2"));
}

#[test]
fn qwen2_tied_gqa3() {
    let mut t = Tiny::new("qwen2");
    t.n_head = 6;
    t.n_kv = 2;
    t.head_dim = 8;
    t.n_embd = 40;
    t.tied = true;
    t.n_ff = 72;
    // 40 and 72 are not multiples of 32: f32 weights only.
    check_paths(&t);
}

#[test]
fn qwen3_qk_norm_wide_heads() {
    let mut t = Tiny::new("qwen3");
    t.head_dim = 32; // 4 x 32 = 128 != 64
    check_paths(&t);
}

#[test]
fn qwen1_fused_qkv() {
    let mut t = Tiny::new("qwen");
    t.n_kv = t.n_head;
    check_paths(&t);
}

#[test]
fn llama_normal_rope() {
    let mut t = Tiny::new("llama");
    t.n_head = 6;
    t.n_kv = 3;
    t.head_dim = 16;
    t.n_embd = 96;
    t.biases = false;
    t.tied = true;
    check_paths(&t);
}

#[test]
fn qwen1_logn_and_ntk_only_past_seq_length() {
    let mut on = Tiny::new("qwen");
    on.n_kv = on.n_head;
    on.extra = vec![
        ("qwen_rs.qwen.use_dynamic_ntk".into(), Value::Bool(true)),
        ("qwen_rs.qwen.use_logn_attn".into(), Value::Bool(true)),
        ("qwen_rs.qwen.seq_length".into(), Value::U32(8)),
    ];
    let mut off = on.clone();
    off.extra.clear();
    let run = |t: &Tiny, n: usize| {
        with_model(t, |m| {
            let mut st = m.new_state(64, 64);
            m.forward(&mut st, &TOKENS[..n], 0, true).unwrap().to_vec()
        })
    };
    // Within the training length the two agree exactly.
    assert_eq!(run(&on, 8), run(&off, 8));
    // Past it: NTK changes every position's RoPE, logn the later queries.
    let (a, b) = (run(&on, 19), run(&off, 19));
    assert!(max_abs_diff(&a, &b) > 1e-3);
    // Decoding past the training length keeps the alpha chosen at prefill, as
    // modeling_qwen.py does: prefill 12 + decode matches a 16-token prefill.
    with_model(&on, |m| {
        let mut st = m.new_state(64, 64);
        let full = m.forward(&mut st, &TOKENS[..16], 0, true).unwrap().to_vec();
        let v = m.config.n_vocab;
        let mut st2 = m.new_state(64, 64);
        m.forward(&mut st2, &TOKENS[..12], 0, false).unwrap();
        let row = m
            .forward(&mut st2, &TOKENS[12..13], 12, false)
            .unwrap()
            .to_vec();
        // alpha for 12 tokens (3) equals alpha for 16 tokens (3); 19 would give 7.
        assert!(max_abs_diff(&row, &full[12 * v..13 * v]) < 1e-4);
    });
}

#[test]
fn forward_errors() {
    let t = Tiny::new("qwen2");
    with_model(&t, |m| {
        let mut st = m.new_state(8, 4);
        match m.forward(&mut st, &TOKENS[..9], 0, false) {
            Err(ModelError::ContextOverflow {
                needed: 9,
                n_ctx: 8,
            }) => {}
            other => panic!("expected overflow, got {:?}", other.map(|l| l.len())),
        }
        let e = m.forward(&mut st, &[96], 0, false).unwrap_err().to_string();
        assert!(
            e.contains("token id 96") && e.contains("96 embeddings"),
            "{e}"
        );
        assert!(m.forward(&mut st, &[], 0, false).is_err());
    });
    let mut bad = Tiny::new("qwen2");
    bad.nan_in = Some("blk.1.ffn_down.weight".into());
    with_model(&bad, |m| {
        let mut st = m.new_state(8, 4);
        let e = m
            .forward(&mut st, &[1, 2], 0, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("NaN/Inf") && e.contains("--check-tensors"),
            "{e}"
        );
    });
}

/// Decode on a pool worker runs with a polling peer (`with_polling_peer`): the
/// logits are the very same as decoding from outside any pool, on a model wide
/// enough that its FFN and output matmuls split over the threads.
#[test]
fn decode_with_polling_peer_is_identical() {
    let mut t = Tiny::new("qwen2");
    t.n_embd = 256;
    t.n_ff = 512;
    t.n_vocab = 320;
    t.head_dim = 64;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("pool");
    with_model(&t, |m| {
        let decode = |m: &Model| {
            let mut st = m.new_state_kv(32, 4, KvType::F16, KvType::F16);
            let mut out = Vec::new();
            for (i, &tok) in TOKENS[..8].iter().enumerate() {
                out.extend_from_slice(m.forward(&mut st, &[tok], i, false).expect("decode"));
            }
            out
        };
        let outside = decode(m);
        let inside = pool.install(|| decode(m));
        assert_eq!(outside, inside);
    })
}
