//! Attention kernels and the driver: every SIMD level this CPU has against the
//! scalar twin (odd head sizes and key counts, seeded data), the scalar twin
//! against an f64 softmax, the KV cache types, and the CLI spelling of them.

#[path = "forward_common/mod.rs"]
mod common;

use std::path::PathBuf;

use half::f16;
use qwen::kernels::attn::{self, AttnDims, AttnKernels, AttnScratch, KvElem};
use qwen::model::KvType;

#[path = "common_rng/mod.rs"]
mod common_rng;
use common_rng::Rng;

impl Rng {
    fn vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * amp).collect()
    }
}

fn f16s(x: &[f32]) -> Vec<f16> {
    x.iter().map(|&v| f16::from_f32(v)).collect()
}

/// The SIMD levels of this CPU (scalar excluded), with their tables.
fn simd_levels() -> Vec<(&'static str, &'static AttnKernels)> {
    let levels: Vec<_> = qwen::kernels::available()
        .into_iter()
        .filter(|l| *l != "scalar")
        .filter_map(|l| attn::table(l).map(|t| (l, t)))
        .collect();
    println!(
        "attention levels under test: scalar + {:?}",
        levels.iter().map(|l| l.0).collect::<Vec<_>>()
    );
    levels
}

const HEAD_DIMS: [usize; 9] = [64, 128, 80, 40, 96, 1, 7, 17, 33];

fn odd_key_counts() -> impl Iterator<Item = usize> {
    (1..=300).step_by(2)
}

fn max_of(x: &[f32]) -> f32 {
    x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

fn close(a: f32, b: f32, tol: f32) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

/// |a - b| within `tol` of `mag` (the sum of the magnitudes of the terms: a sum
/// that cancels keeps the rounding of its terms).
fn close_sum(a: f32, b: f32, mag: f32, tol: f32) -> bool {
    (a - b).abs() <= tol * (1.0 + mag)
}

#[test]
fn scores_match_scalar() {
    let s = &attn::generic::SCALAR;
    let mut rng = Rng(1);
    for (name, t) in simd_levels() {
        for hd in HEAD_DIMS {
            let q = rng.vec(hd, 2.0);
            for n in odd_key_counts() {
                let k = rng.vec(n * hd, 2.0);
                let kh = f16s(&k);
                let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
                let mag: Vec<f32> = k
                    .chunks(hd)
                    .map(|kj| 0.125 * q.iter().zip(kj).map(|(x, y)| (x * y).abs()).sum::<f32>())
                    .collect();
                let ma = (s.scores_f32)(&q, &k, 0.125, &mut a);
                let mb = (t.scores_f32)(&q, &k, 0.125, &mut b);
                assert_eq!(ma, max_of(&a), "scalar scores_f32 max, hd {hd} n {n}");
                assert_eq!(mb, max_of(&b), "{name} scores_f32 max, hd {hd} n {n}");
                for j in 0..n {
                    assert!(
                        close_sum(a[j], b[j], mag[j], 1e-6),
                        "{name} scores_f32 hd {hd} n {n} key {j}: {} vs scalar {}",
                        b[j],
                        a[j]
                    );
                }
                let ma = (s.scores_f16)(&q, &kh, 0.125, &mut a);
                let mb = (t.scores_f16)(&q, &kh, 0.125, &mut b);
                assert_eq!(ma, max_of(&a), "scalar scores_f16 max, hd {hd} n {n}");
                assert_eq!(mb, max_of(&b), "{name} scores_f16 max, hd {hd} n {n}");
                for j in 0..n {
                    assert!(
                        close_sum(a[j], b[j], mag[j], 1e-5),
                        "{name} scores_f16 hd {hd} n {n} key {j}: {} vs scalar {}",
                        b[j],
                        a[j]
                    );
                }
            }
        }
    }
}

#[test]
fn scores_of_a_key_do_not_depend_on_its_neighbours() {
    // The 4-key path and the single-key tail add in the same order, so a key's
    // score is the same wherever it sits in the run (decode and prefill agree).
    let mut rng = Rng(2);
    for (name, t) in std::iter::once(("scalar", &attn::generic::SCALAR)).chain(simd_levels()) {
        for hd in HEAD_DIMS {
            let q = rng.vec(hd, 1.0);
            let k = f16s(&rng.vec(7 * hd, 1.0));
            let mut all = vec![0f32; 7];
            (t.scores_f16)(&q, &k, 1.0, &mut all);
            for j in 0..7 {
                let mut one = [0f32];
                (t.scores_f16)(&q, &k[j * hd..(j + 1) * hd], 1.0, &mut one);
                assert_eq!(one[0], all[j], "{name} hd {hd} key {j}");
            }
        }
    }
}

#[test]
fn accum_matches_scalar() {
    let s = &attn::generic::SCALAR;
    let mut rng = Rng(3);
    for (name, t) in simd_levels() {
        for hd in HEAD_DIMS {
            for n in odd_key_counts() {
                let p: Vec<f32> = rng.vec(n, 1.0).iter().map(|x| x.abs()).collect();
                let v = rng.vec(n * hd, 3.0);
                let vh = f16s(&v);
                let init = rng.vec(hd, 1.0);
                let mag: Vec<f32> = (0..hd)
                    .map(|d| {
                        (0..n).map(|j| (p[j] * v[j * hd + d]).abs()).sum::<f32>() + init[d].abs()
                    })
                    .collect();
                let (mut a, mut b) = (init.clone(), init.clone());
                (s.accum_f32)(&p, &v, &mut a);
                (t.accum_f32)(&p, &v, &mut b);
                for d in 0..hd {
                    assert!(
                        close_sum(a[d], b[d], mag[d], 1e-6),
                        "{name} accum_f32 hd {hd} n {n} lane {d}: {} vs scalar {}",
                        b[d],
                        a[d]
                    );
                }
                let (mut a, mut b) = (init.clone(), init);
                (s.accum_f16)(&p, &vh, &mut a);
                (t.accum_f16)(&p, &vh, &mut b);
                for d in 0..hd {
                    assert!(
                        close_sum(a[d], b[d], mag[d], 1e-5),
                        "{name} accum_f16 hd {hd} n {n} lane {d}: {} vs scalar {}",
                        b[d],
                        a[d]
                    );
                }
            }
        }
    }
}

#[test]
fn exp_sum_matches_scalar() {
    let s = &attn::generic::SCALAR;
    let mut rng = Rng(4);
    for (name, t) in simd_levels() {
        for n in odd_key_counts().chain([2, 4, 8, 16, 64]) {
            let x = rng.vec(n, 40.0);
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let (mut a, mut b) = (x.clone(), x.clone());
            let sa = (s.exp_sum)(&mut a, max);
            let sb = (t.exp_sum)(&mut b, max);
            assert!(close(sa, sb, 1e-6), "{name} n {n}: sum {sb} vs scalar {sa}");
            for j in 0..n {
                // ~2 ulp of the result, or an absolute 1e-37 near underflow.
                let ok = (a[j] - b[j]).abs() <= 3e-7 * a[j].abs() || (a[j] - b[j]).abs() < 1e-37;
                assert!(
                    ok,
                    "{name} n {n} exp({}) = {} vs scalar {}",
                    x[j] - max,
                    b[j],
                    a[j]
                );
            }
        }
        // Far below the max -> 0 (or subnormal); exactly at the max -> 1.
        let mut v = vec![
            0.0,
            -200.0,
            -1e30,
            f32::NEG_INFINITY,
            -87.0,
            -10.0,
            -0.5,
            0.0,
            -3.0,
        ];
        let sum = (t.exp_sum)(&mut v, 0.0);
        assert_eq!(v[0], 1.0, "{name}");
        assert!(
            v[1] < 1e-37 && v[2] < 1e-37 && v[3] < 1e-37,
            "{name}: {v:?}"
        );
        assert!(close(v[5], (-10f32).exp(), 3e-7), "{name}: {v:?}");
        assert!(close(sum, v.iter().sum::<f32>(), 1e-6), "{name}");
        // NaN propagates to the sum (non-finite logits must be reported, not hidden).
        for pos in [0, 5, 8] {
            let mut v = vec![-1.0f32; 9];
            v[pos] = f32::NAN;
            assert!(
                (t.exp_sum)(&mut v, 0.0).is_nan(),
                "{name}: NaN at {pos} lost"
            );
        }
    }
}

#[test]
fn f16_store_rounds_like_half() {
    let mut rng = Rng(5);
    let mut x: Vec<f32> = rng.vec(1001, 1.0);
    // Every magnitude, ties, subnormals, overflow, infinities, signed zero.
    for e in -30..20 {
        x.push(1.37 * 2f32.powi(e));
        x.push(-0.71 * 2f32.powi(e));
    }
    x.extend([
        0.0,
        -0.0,
        65504.0,
        65520.0,
        1e6,
        -1e6,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        5.96e-8,
        2.98e-8,
        6.1e-5,
    ]);
    for (name, t) in std::iter::once(("scalar", &attn::generic::SCALAR)).chain(simd_levels()) {
        for start in [0, 1, 3, 7] {
            let src = &x[start..];
            let mut y = vec![f16::ZERO; src.len()];
            (t.to_f16)(src, &mut y);
            for (i, (&a, &h)) in src.iter().zip(&y).enumerate() {
                assert_eq!(
                    h.to_bits(),
                    f16::from_f32(a).to_bits(),
                    "{name}: f16({a}) at {i}"
                );
            }
        }
    }
}

#[test]
fn f16_load_is_exact() {
    // Every f16 bit pattern but NaNs (whose payloads may differ) widens exactly.
    let x: Vec<f16> = (0..=u16::MAX)
        .map(f16::from_bits)
        .filter(|h| !h.is_nan())
        .collect();
    for (name, t) in std::iter::once(("scalar", &attn::generic::SCALAR)).chain(simd_levels()) {
        for start in [0, 1, 5] {
            let mut y = vec![0f32; x.len() - start];
            (t.to_f32)(&x[start..], &mut y);
            for (h, v) in x[start..].iter().zip(&y) {
                assert_eq!(v.to_bits(), h.to_f32().to_bits(), "{name}: {h}");
            }
        }
    }
}

/// Causal GQA the plain way, in f64: q [t, n_head, hd]; caches [n_kv, n_ctx, hd].
fn reference(d: &AttnDims, q: &[f32], kc: &[f32], vc: &[f32], pos0: usize, scale: f32) -> Vec<f32> {
    let (hd, g) = (d.head_dim, d.group());
    let qd = d.n_head * hd;
    let t = q.len() / qd;
    let mut out = vec![0f32; q.len()];
    for i in 0..t {
        for h in 0..d.n_head {
            let kvh = h / g;
            let qh = &q[i * qd + h * hd..i * qd + (h + 1) * hd];
            let n = pos0 + i + 1;
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    let k = &kc[(kvh * d.n_ctx + j) * hd..(kvh * d.n_ctx + j + 1) * hd];
                    qh.iter()
                        .zip(k)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for dd in 0..hd {
                let acc: f64 = (0..n)
                    .map(|j| e[j] * vc[(kvh * d.n_ctx + j) * hd + dd] as f64)
                    .sum();
                out[i * qd + h * hd + dd] = (acc / z) as f32;
            }
        }
    }
    out
}

/// Runs the driver: stores k/v of positions 0..pos0 + t, attends the last t.
#[allow(clippy::too_many_arguments)]
fn driver<K: KvElem, V: KvElem>(
    kern: &AttnKernels,
    d: &AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos0: usize,
    chunk: usize,
    scale: f32,
) -> Vec<f32> {
    let kvd = d.n_head_kv * d.head_dim;
    let qd = d.n_head * d.head_dim;
    let n = k.len() / kvd;
    let t = n - pos0;
    let mut kc = vec![K::default(); d.n_head_kv * d.n_ctx * d.head_dim];
    let mut vc = vec![V::default(); kc.len()];
    attn::store(kern, d, &k[..pos0 * kvd], 0, &mut kc);
    attn::store(kern, d, &v[..pos0 * kvd], 0, &mut vc);
    let mut scratch = AttnScratch::new(*d, chunk);
    let mut out = vec![0f32; t * qd];
    let mut i = 0;
    while i < t {
        let c = chunk.min(t - i);
        let p = pos0 + i;
        attn::store(kern, d, &k[p * kvd..(p + c) * kvd], p, &mut kc);
        attn::store(kern, d, &v[p * kvd..(p + c) * kvd], p, &mut vc);
        attn::attend(
            kern,
            &q[i * qd..(i + c) * qd],
            &kc,
            &vc,
            p,
            scale,
            &mut scratch,
            &mut out[i * qd..(i + c) * qd],
        );
        i += c;
    }
    out
}

/// The cache as the driver holds it, in f32: [n_kv, n_ctx, hd] from [n, n_kv, hd].
fn cache_of(d: &AttnDims, x: &[f32], round: bool) -> Vec<f32> {
    let hd = d.head_dim;
    let n = x.len() / (d.n_head_kv * hd);
    let mut c = vec![0f32; d.n_head_kv * d.n_ctx * hd];
    for p in 0..n {
        for h in 0..d.n_head_kv {
            for e in 0..hd {
                let v = x[(p * d.n_head_kv + h) * hd + e];
                c[(h * d.n_ctx + p) * hd + e] = if round { f16::from_f32(v).to_f32() } else { v };
            }
        }
    }
    c
}

#[test]
fn attend_matches_f64_softmax_at_every_level() {
    let mut rng = Rng(6);
    // (n_head, n_head_kv, head_dim, keys before, new tokens, chunk)
    let shapes = [
        (14, 2, 64, 0, 19, 19),
        (14, 2, 64, 150, 1, 1),
        (12, 2, 128, 70, 9, 4),
        (6, 3, 80, 0, 40, 32),
        (4, 4, 40, 63, 3, 8),
        (3, 1, 17, 200, 5, 2),
        (2, 1, 7, 0, 130, 130),
    ];
    let levels: Vec<_> = std::iter::once(("scalar", &attn::generic::SCALAR))
        .chain(simd_levels())
        .collect();
    for (nh, nkv, hd, before, t, chunk) in shapes {
        let d = AttnDims {
            n_head: nh,
            n_head_kv: nkv,
            head_dim: hd,
            n_ctx: before + t + 3,
        };
        let n = before + t;
        let q = rng.vec(t * nh * hd, 2.0);
        let k = rng.vec(n * nkv * hd, 2.0);
        let v = rng.vec(n * nkv * hd, 1.0);
        let scale = 1.0 / (hd as f32).sqrt();
        let want32 = reference(
            &d,
            &q,
            &cache_of(&d, &k, false),
            &cache_of(&d, &v, false),
            before,
            scale,
        );
        let want16 = reference(
            &d,
            &q,
            &cache_of(&d, &k, true),
            &cache_of(&d, &v, true),
            before,
            scale,
        );
        for (name, kern) in &levels {
            let got = driver::<f32, f32>(kern, &d, &q, &k, &v, before, chunk, scale);
            let err = got
                .iter()
                .zip(&want32)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 2e-5, "{name} f32 KV {d:?} t {t}: max err {err}");
            let got = driver::<f16, f16>(kern, &d, &q, &k, &v, before, chunk, scale);
            let err = got
                .iter()
                .zip(&want16)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 2e-5, "{name} f16 KV {d:?} t {t}: max err {err}");
            let got = driver::<f16, f32>(kern, &d, &q, &k, &v, before, chunk, scale);
            assert!(got.iter().all(|x| x.is_finite()), "{name} f16/f32 KV");
        }
    }
}

#[test]
fn attend_is_the_same_in_one_chunk_or_token_by_token() {
    // A query's result does not depend on how the sequence was chunked: every
    // path stores the same (rounded) keys and visits the same key blocks.
    let mut rng = Rng(7);
    let d = AttnDims {
        n_head: 6,
        n_head_kv: 2,
        head_dim: 64,
        n_ctx: 200,
    };
    let n = 150;
    let q = rng.vec(n * 6 * 64, 2.0);
    let k = rng.vec(n * 2 * 64, 2.0);
    let v = rng.vec(n * 2 * 64, 1.0);
    for (name, kern) in std::iter::once(("scalar", &attn::generic::SCALAR)).chain(simd_levels()) {
        let one = driver::<f16, f16>(kern, &d, &q, &k, &v, 0, 150, 0.125);
        for chunk in [1, 7, 32] {
            let other = driver::<f16, f16>(kern, &d, &q, &k, &v, 0, chunk, 0.125);
            assert!(one == other, "{name}: chunk {chunk} differs from one chunk");
        }
    }
}

#[test]
fn non_finite_queries_reach_the_output() {
    let d = AttnDims {
        n_head: 2,
        n_head_kv: 1,
        head_dim: 16,
        n_ctx: 8,
    };
    let mut rng = Rng(8);
    let mut q = rng.vec(2 * 16, 1.0);
    q[3] = f32::NAN;
    let k = rng.vec(4 * 16, 1.0);
    let v = rng.vec(4 * 16, 1.0);
    for (name, kern) in std::iter::once(("scalar", &attn::generic::SCALAR)).chain(simd_levels()) {
        let out = driver::<f16, f16>(kern, &d, &q, &k, &v, 3, 1, 0.25);
        assert!(out[..16].iter().all(|x| x.is_nan()), "{name}: {out:?}");
        assert!(out[16..].iter().all(|x| x.is_finite()), "{name}: {out:?}");
    }
}

#[test]
fn kv_type_names() {
    assert_eq!("f16".parse::<KvType>(), Ok(KvType::F16));
    assert_eq!("F32".parse::<KvType>(), Ok(KvType::F32));
    let e = "q8_0".parse::<KvType>().unwrap_err();
    assert!(e.contains("'q8_0'") && e.contains("f16, f32"), "{e}");
    assert_eq!(KvType::default(), KvType::F16);
    let args = [
        "qwen-run", "-ctk", "f32", "-c", "64", "-ctv", "f16", "-mmp", "0", "-lm", "none", "-p",
        "x", "--", "-ctk",
    ];
    let out = qwen::cli::expand_llama_flag_aliases(args.iter().map(|s| s.into()));
    let out: Vec<String> = out.into_iter().map(|s| s.into_string().unwrap()).collect();
    assert_eq!(
        out,
        [
            "qwen-run",
            "--cache-type-k",
            "f32",
            "-c",
            "64",
            "--cache-type-v",
            "f16",
            "--mmap",
            "0",
            "--load-mode",
            "none",
            "-p",
            "x",
            "--",
            "-ctk"
        ]
    );
}

fn qwen_bench_json(model: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_qwen-bench"));
    let mut args = vec![
        model.to_str().unwrap(),
        "-p",
        "5",
        "-n",
        "3",
        "-r",
        "1",
        "--json",
    ];
    args.splice(0..0, ["-f"]);
    args.extend_from_slice(extra);
    let o = common::run(&bin, &args);
    common::ok(&o, "qwen-bench --json");
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

#[test]
fn cli_kv_types_and_bytes() {
    let t = common::Tiny::new("qwen2");
    let model = t.write(&common::scratch("attention"), "cli_kv_types");
    // n_ctx = p + n = 8 positions, [n_layer, n_kv, 8, head_dim] per K and per V.
    let elems = (t.n_layer * t.n_kv * 8 * t.head_dim) as u64;
    for (extra, k, v, bytes) in [
        (&[][..], "f32", "f32", elems * 8), // an f32 file: f32 by default
        (&["-ctk", "f16"][..], "f16", "f16", elems * 4), // V follows K
        (&["-ctk", "f16", "-ctv", "f32"][..], "f16", "f32", elems * 6),
        (
            &["--cache-type-k", "F32", "--cache-type-v", "f16"][..],
            "f32",
            "f16",
            elems * 6,
        ),
    ] {
        let j = qwen_bench_json(&model, extra);
        assert_eq!(j["cache_type_k"], k, "{extra:?}: {j}");
        assert_eq!(j["cache_type_v"], v, "{extra:?}: {j}");
        assert_eq!(j["kv_cache_bytes"].as_u64(), Some(bytes), "{extra:?}: {j}");
    }
    // Logits with an f16 cache stay close to the f32 cache's.
    let dir = common::scratch("attention");
    let ids = [3u32, 1, 4, 1, 5, 9, 2, 6];
    let (_, a) = common::dump_logits(&model, &ids, &dir.join("kv_f32.npy"), &[]);
    let (_, b) = common::dump_logits(&model, &ids, &dir.join("kv_f16.npy"), &["-ctk", "f16"]);
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let m = a.iter().fold(0f32, |acc, x| acc.max(x.abs()));
    assert!(
        d > 0.0 && d < 1e-2 * (1.0 + m),
        "f16 vs f32 KV: max diff {d}, max |logit| {m}"
    );
    // Any other type is a one-line error naming it and the allowed ones.
    for bin in [
        common::qwen_run(),
        PathBuf::from(env!("CARGO_BIN_EXE_qwen-bench")),
    ] {
        let o = common::run(&bin, &["-f", model.to_str().unwrap(), "-ctv", "q8_0"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("'q8_0'") && err.contains("f16, f32"), "{err}");
    }
}
