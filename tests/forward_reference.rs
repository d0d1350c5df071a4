//! The proof of the forward pass: every committed tiny HF checkpoint
//! (tests/fixtures/hf/<name>, made by scripts/make_fixtures.py) is converted
//! with qwen-convert into each type and evaluated with
//! `qwen-run --token-ids … --dump-logits`; the logits are held against
//! transformers' float32 forward (tests/fixtures/ref/<name>/logits.npy) and,
//! for quantized types, against the floor the format alone causes
//! (floor_<type>.npy: weights quantized/dequantized with the reference
//! quantizer and activations rounded as ggml's matmul does).
//!
//! Bounds (issue 3):
//! - f32: same argmax at every position; last-position logits within 1e-3·(1 + max|ref|)
//! - f16: last-position logits within 2e-2·(1 + max|ref|)
//! - q8_0 q4_0 q4_1 q5_0 q5_1: mean KL(ref‖ours) ≤ 2·KL(ref‖floor) + 1e-3 and
//!   top-1 agreement ≥ the floor's − 10 points.
//!
//! f32 files cache keys and values as f32 by default, other files as f16; the
//! `*_at_every_level` tests run both KV types at every kernel level this CPU has.
//!
//! Run with `--nocapture` to see the numbers.

#[path = "forward_common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use common::*;

fn fixtures() -> Vec<String> {
    let dir = root().join("tests/fixtures/hf");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (fixtures are committed; see scripts/make_fixtures.py)",
                dir.display()
            )
        })
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.len() >= 6,
        "expected the six fixtures under {}, found {names:?}",
        dir.display()
    );
    names
}

fn converted(name: &str, ty: &str) -> PathBuf {
    let out = scratch("forward_reference").join(format!("{name}.{ty}.gguf"));
    convert(&root().join("tests/fixtures/hf").join(name), &out, ty);
    out
}

/// Our logits through `qwen-run --dump-logits` with `extra` flags; `tag` names the
/// run (tests run in parallel, each writes its own file).
fn ours(
    name: &str,
    ty: &str,
    model: &Path,
    suffix: &str,
    extra: &[&str],
    tag: &str,
) -> (Vec<usize>, Vec<f32>, Vec<f32>) {
    let refdir = root().join("tests/fixtures/ref").join(name);
    let ids = read_ids(&refdir.join(format!("ids{suffix}.json")));
    let (rshape, reference) = read_npy(&refdir.join(format!("logits{suffix}.npy")));
    let out = scratch("forward_reference").join(format!("{name}.{ty}{suffix}{tag}.npy"));
    let (shape, logits) = dump_logits(model, &ids, &out, extra);
    assert_eq!(
        shape, rshape,
        "{name} {ty}: our logits have shape {shape:?}, the reference {rshape:?}"
    );
    assert_eq!(shape, vec![ids.len(), rshape[1]]);
    (shape, reference, logits)
}

fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |a, &b| a.max(b.abs()))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// f32 / f16: closeness of the last position (and argmax everywhere for f32),
/// with qwen-run's default kernel level and KV cache type.
fn check_float(ty: &str, rel_tol: f32) {
    check_float_with(ty, rel_tol, &[], "")
}

/// As [`check_float`] with extra qwen-run flags (kernel level, KV cache type).
fn check_float_with(ty: &str, rel_tol: f32, extra: &[&str], tag: &str) {
    let mut failures = Vec::new();
    for name in fixtures() {
        let model = converted(&name, ty);
        let mut suffixes = vec![""];
        if root()
            .join("tests/fixtures/ref")
            .join(&name)
            .join("ids_long.json")
            .exists()
        {
            suffixes.push("_long"); // Qwen-1 past seq_length: dynamic NTK + logn attention
        }
        for suffix in suffixes {
            let (shape, reference, logits) = ours(&name, ty, &model, suffix, extra, tag);
            let v = shape[1];
            let n = shape[0];
            let last_ref = &reference[(n - 1) * v..];
            let last = &logits[(n - 1) * v..];
            let tol = rel_tol * (1.0 + max_abs(last_ref));
            let d_last = max_abs_diff(last_ref, last);
            let d_all = max_abs_diff(&reference, &logits);
            // Same argmax at every position; a position whose two best reference
            // logits are closer than the tolerance counts as a tie.
            let mut argmax_bad = Vec::new();
            for p in 0..n {
                let r = &reference[p * v..(p + 1) * v];
                let o = &logits[p * v..(p + 1) * v];
                let (ra, oa) = (argmax(r), argmax(o));
                if ra != oa && r[ra] - r[oa] > tol {
                    argmax_bad.push(p);
                }
            }
            let (kl, top1) = kl_and_top1(&reference, &logits, v);
            println!(
                "{ty:4}{tag} {name}{suffix:6}: n={n:3} last max|diff|={d_last:.2e} (tol {tol:.2e}, {:.1}% of it) all max|diff|={d_all:.2e} KL={kl:.2e} top1={top1:.3}",
                100.0 * d_last / tol
            );
            if d_last > tol {
                failures.push(format!(
                    "{name}{suffix}: last-position max|diff| {d_last:.3e} > {tol:.3e}"
                ));
            }
            if ty == "f32" && !argmax_bad.is_empty() {
                failures.push(format!(
                    "{name}{suffix}: argmax differs at positions {argmax_bad:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{ty}{tag}: {}", failures.join("; "));
}

/// [`check_float_with`] at every kernel level this CPU has, with keys and values
/// cached as `kv` (f16 | f32).
fn check_float_every_level(ty: &str, rel_tol: f32, kv: &str) {
    for level in qwen::kernels::available() {
        let extra = ["--kernels", level, "-ctk", kv, "-ctv", kv];
        check_float_with(ty, rel_tol, &extra, &format!(" {level} kv={kv}"));
    }
}

/// Quantized types: KL and top-1 against the format's own floor.
fn check_quant(ty: &str) {
    let mut failures = Vec::new();
    for name in fixtures() {
        let model = converted(&name, ty);
        let (shape, reference, logits) = ours(&name, ty, &model, "", &[], "");
        let v = shape[1];
        let floor_path = root()
            .join("tests/fixtures/ref")
            .join(&name)
            .join(format!("floor_{ty}.npy"));
        let (fshape, floor) = read_npy(&floor_path);
        assert_eq!(fshape, shape, "{}", floor_path.display());
        let (kl, top1) = kl_and_top1(&reference, &logits, v);
        let (kl_floor, top1_floor) = kl_and_top1(&reference, &floor, v);
        let kl_bound = 2.0 * kl_floor + 1e-3;
        let top1_bound = top1_floor - 0.10;
        let (_, agree_floor) = kl_and_top1(&floor, &logits, v);
        println!(
            "{ty:4} {name:20}: KL(ref||ours)={kl:.4e} (bound {kl_bound:.4e}, floor {kl_floor:.4e}) top1={top1:.3} (floor {top1_floor:.3}, bound {top1_bound:.3}) top1 vs floor={agree_floor:.3}"
        );
        if kl > kl_bound {
            failures.push(format!("{name}: KL {kl:.4e} > {kl_bound:.4e}"));
        }
        if top1 < top1_bound - 1e-9 {
            failures.push(format!("{name}: top-1 {top1:.3} < {top1_bound:.3}"));
        }
    }
    assert!(failures.is_empty(), "{ty}: {}", failures.join("; "));
}

#[test]
fn f32_matches_transformers() {
    check_float("f32", 1e-3);
}

#[test]
fn f16_matches_transformers() {
    check_float("f16", 2e-2);
}

// f32 files cache K/V as f32 by default (the checks above); rounding them to f16
// must stay within the same bound, at every kernel level.
#[test]
fn f32_with_f32_kv_at_every_level() {
    check_float_every_level("f32", 1e-3, "f32");
}

#[test]
fn f32_with_f16_kv_at_every_level() {
    check_float_every_level("f32", 1e-3, "f16");
}

#[test]
fn f16_with_f16_kv_at_every_level() {
    check_float_every_level("f16", 2e-2, "f16");
}

#[test]
fn q8_0_within_floor() {
    check_quant("q8_0");
}

#[test]
fn q4_0_within_floor() {
    check_quant("q4_0");
}

#[test]
fn q4_1_within_floor() {
    check_quant("q4_1");
}

#[test]
fn q5_0_within_floor() {
    check_quant("q5_0");
}

#[test]
fn q5_1_within_floor() {
    check_quant("q5_1");
}
