//! Regressions from the session-3 contract review (runtime side): tensors the
//! forward pass does not apply are refused, an output path that is the model
//! file is refused, special files as the model give an error instead of a hang,
//! a failed turn of a piped chat does not end the chat, usage errors name the
//! argument, negative sampler numbers parse, and a GGUF without
//! `tokenizer.ggml.pre` tokenizes with a warning.

#[path = "forward_common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Output;

use common::*;
use quant_formats::gguf::{Gguf, GgufWriter};
use quant_formats::GgmlType;

fn dir() -> PathBuf {
    scratch("fix_runtime")
}

/// Exit 1 and one `error: …` line (warnings aside) holding every needle.
fn assert_error(o: &Output, needles: &[&str]) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "exit code, stderr: {err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("warning: "))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks {n:?}: {err}");
    }
    lines[0].to_string()
}

/// `bytes` rewritten with one more f32 tensor `name` of ggml dims `dims` (all 5.0).
fn with_extra_tensor(bytes: &[u8], name: &str, dims: &[u64]) -> Vec<u8> {
    let g = Gguf::parse(bytes).expect("parse base");
    let mut w = GgufWriter::new();
    for (k, v) in g.kv() {
        if !k.starts_with("general.alignment") {
            w.add(k, v.clone());
        }
    }
    for t in &g.tensors {
        w.add_tensor(&t.name, &t.dims, t.dtype).expect("add_tensor");
    }
    w.add_tensor(name, dims, GgmlType::F32).expect("add extra");
    let mut s = w.start(Vec::new()).expect("start");
    for t in &g.tensors {
        s.write_tensor(&t.name, g.tensor_data(t)).expect("write");
    }
    let n: u64 = dims.iter().product();
    let extra: Vec<u8> = (0..n).flat_map(|_| 5f32.to_le_bytes()).collect();
    s.write_tensor(name, &extra).expect("write extra");
    s.finish().expect("finish")
}

fn load_err(bytes: &[u8]) -> Option<String> {
    let g = Gguf::parse(bytes).expect("parse");
    qwen::Model::load(&g).err().map(|e| e.to_string())
}

#[test]
fn tensors_the_runtime_does_not_apply_are_refused() {
    // Every architecture, tied and untied, loads as written.
    for arch in ["qwen", "qwen2", "qwen3", "llama"] {
        for tied in [false, true] {
            let mut t = Tiny::new(arch);
            t.tied = tied;
            assert_eq!(load_err(&t.build()), None, "{arch} tied={tied}");
        }
    }
    // (arch, extra tensor, ggml dims): each names something the forward pass
    // would silently skip.
    let cases: &[(&str, &str, &[u64])] = &[
        ("llama", "rope_freqs.weight", &[8]),
        ("qwen2", "rope_freqs.weight", &[8]),
        ("qwen2", "blk.0.ffn_down.bias", &[64]),
        ("qwen2", "blk.0.attn_q_norm.weight", &[16]),
        ("qwen2", "blk.2.attn_q.weight", &[64, 64]),
        ("qwen2", "output.bias", &[96]),
        ("qwen3", "blk.1.ffn_up.bias", &[96]),
        ("qwen", "blk.0.attn_q.weight", &[64, 64]),
    ];
    for &(arch, name, dims) in cases {
        let base = Tiny::new(arch).build();
        let bytes = with_extra_tensor(&base, name, dims);
        let err = load_err(&bytes).unwrap_or_else(|| panic!("{arch} + {name} loaded"));
        assert!(
            err.contains(&format!("'{name}'")) && err.contains("not used"),
            "{arch} + {name}: {err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
    // Through the binary: one line, exit 1.
    let d = dir();
    let p = d.join("extra_rope_freqs.gguf");
    std::fs::write(
        &p,
        with_extra_tensor(&Tiny::new("llama").build(), "rope_freqs.weight", &[8]),
    )
    .unwrap();
    let o = run(
        &qwen_run(),
        &[
            "-f",
            p.to_str().unwrap(),
            "--token-ids",
            "1,2",
            "--dump-logits",
            d.join("x.npy").to_str().unwrap(),
        ],
    );
    assert_error(&o, &["rope_freqs.weight", "not used"]);
}

#[test]
fn every_fixture_conversion_still_loads() {
    // The biases are optional for qwen2 (SmolLM2-style bias-free files) and
    // attn_output.bias is applied when present: those must stay accepted.
    let mut t = Tiny::new("qwen2");
    t.biases = false;
    assert_eq!(load_err(&t.build()), None);
    let base = Tiny::new("qwen2").build();
    let bytes = with_extra_tensor(&base, "blk.0.attn_output.bias", &[64]);
    assert_eq!(load_err(&bytes), None);
    // Our converter's files of a few types for each architecture.
    let d = dir();
    for fx in ["qwen1", "qwen2_gqa2", "qwen3_a"] {
        for ty in ["f32", "q4_0", "q8_0"] {
            let out = d.join(format!("{fx}.{ty}.gguf"));
            convert(&root().join("tests/fixtures/hf").join(fx), &out, ty);
            let bytes = std::fs::read(&out).unwrap();
            assert_eq!(load_err(&bytes), None, "{fx} {ty}");
        }
    }
    // The K-quant fixture (K types with llama.cpp's fallbacks).
    let out = d.join("kquants.q4_K.gguf");
    convert(
        &root().join("tests/fixtures/kquants/hf/qwen2_k256"),
        &out,
        "q4_K",
    );
    assert_eq!(
        load_err(&std::fs::read(&out).unwrap()),
        None,
        "kquants q4_K"
    );
}
