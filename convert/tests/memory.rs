//! Streaming: converting a model much larger than the work buffers keeps the
//! converter's peak RSS far below the model size (measured with GNU time).

mod common;

use common::*;
use std::process::Command;

#[test]
fn peak_rss_stays_far_below_model_size() {
    let time = std::path::Path::new("/usr/bin/time");
    assert!(
        time.exists(),
        "this test measures peak RSS with GNU time at /usr/bin/time"
    );
    // 64k x 1024 bf16 embedding (128 MiB, tied) + 2 layers: ~150 MiB of weights.
    let mut s = Spec::new(Arch::Qwen2);
    s.n_vocab = 1 << 16;
    s.n_embd = 1024;
    s.n_head = 8;
    s.n_head_kv = 2;
    s.head_dim = 128;
    s.n_ff = 2048;
    s.tied = true;
    let dir = TempDir::new("big");
    s.write(dir.path());
    let model_bytes = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len();
    let out_dir = TempDir::new("out");
    let out = out_dir.join("m.qbin");
    let o = Command::new(time)
        .args([
            "-f",
            "maxrss_kb=%M",
            BIN,
            "-i",
            dir.path().to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "-t",
            "q4_0",
        ])
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    let kb: u64 = e
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kb="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no maxrss in {e:?}"));
    let rss = kb * 1024;
    eprintln!("model {model_bytes} bytes, peak RSS {rss} bytes");
    assert!(
        rss < model_bytes / 4,
        "peak RSS {rss} bytes is not far below the model's {model_bytes} bytes: conversion is not streaming"
    );
}
