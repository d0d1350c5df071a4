//! Decode-step timing of the matmuls alone, on Qwen2.5-0.5B / 1.5B shapes: what a
//! token costs in matrix-vector products, how that compares to the memory read
//! bandwidth, and what one parallel dispatch costs. A benchmark (timing, not
//! correctness); run on a quiet machine:
//!
//! `cargo bench --bench matmul_speed [-- decode_step|kernels_from_l2|decode_ab]`
//!
//! `QWEN_SPEED_MODEL=1.5b` picks the larger shape, `QWEN_SPEED_TYPE=q8_0` the weight
//! type of the layers (the output matrix is q8_0 as in our q4_0 files).

use half::f16;
use quant_formats::GgmlType;
use qwen::kernels;
use qwen::matmul::{matmul, matmul_multi_with, matmul_with, MatmulScratch, QMatrix};
use rayon::prelude::*;
use std::time::{Duration, Instant};

/// (hidden, ffn, layers) of the model picked by `QWEN_SPEED_MODEL`.
fn shape() -> (&'static str, usize, usize, usize) {
    match std::env::var("QWEN_SPEED_MODEL").as_deref() {
        Ok("1.5b") => ("1.5b", 1536, 8960, 28),
        _ => ("0.5b", 896, 4864, 24),
    }
}

fn layer_type() -> GgmlType {
    match std::env::var("QWEN_SPEED_TYPE").as_deref() {
        Ok("q8_0") => GgmlType::Q8_0,
        Ok("q4_1") => GgmlType::Q4_1,
        Ok("q5_0") => GgmlType::Q5_0,
        Ok("f16") => GgmlType::F16,
        _ => GgmlType::Q4_0,
    }
}

/// Random codes with a small valid block scale (speed does not depend on values),
/// in an 8-byte aligned buffer.
fn weights(dtype: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u64> {
    let bytes = dtype.row_bytes(cols as u64).expect("block multiple") as usize * rows;
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<u64> = (0..bytes.div_ceil(8))
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        })
        .collect();
    let b: &mut [u8] = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut v)[..bytes];
    let d = f16::from_f32(0.01).to_bits().to_le_bytes();
    match dtype {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
            let bs = dtype.row_bytes(32).expect("one block") as usize;
            for blk in b.chunks_exact_mut(bs) {
                blk[..2].copy_from_slice(&d);
                if matches!(dtype, GgmlType::Q4_1 | GgmlType::Q5_1) {
                    blk[2..4].copy_from_slice(&d);
                }
            }
        }
        GgmlType::F16 => {
            for h in b.chunks_exact_mut(2) {
                h.copy_from_slice(&d);
            }
        }
        _ => {}
    }
    v
}

struct Mat {
    buf: Vec<u64>,
    dtype: GgmlType,
    rows: usize,
    cols: usize,
}

impl Mat {
    fn new(dtype: GgmlType, rows: usize, cols: usize, seed: u64) -> Self {
        Self {
            buf: weights(dtype, rows, cols, seed),
            dtype,
            rows,
            cols,
        }
    }
    fn q(&self) -> QMatrix<'_> {
        let n = self.dtype.row_bytes(self.cols as u64).expect("multiple") as usize * self.rows;
        QMatrix::new(
            "w",
            self.dtype,
            self.rows,
            self.cols,
            &bytemuck::cast_slice(&self.buf)[..n],
        )
        .expect("valid")
    }
}

/// The matrices one decode step multiplies, in forward order: per layer q, k, v, o,
/// gate, up, down; then the output matrix.
fn model() -> Vec<Mat> {
    let (_, e, ff, layers) = shape();
    let t = layer_type();
    let kv = 256;
    let mut v = Vec::new();
    for l in 0..layers as u64 {
        for (i, (r, c)) in [(e, e), (kv, e), (kv, e), (e, e), (ff, e), (ff, e), (e, ff)]
            .into_iter()
            .enumerate()
        {
            v.push(Mat::new(t, r, c, l * 16 + i as u64 + 1));
        }
    }
    let out_t = if t == GgmlType::F16 {
        GgmlType::F16
    } else {
        GgmlType::Q8_0
    };
    v.push(Mat::new(out_t, 151936, e, 999));
    v
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Steps timed per measurement (`QWEN_SPEED_STEPS`, default 15); the fastest is
/// reported, which on a shared machine is the one least disturbed.
fn steps() -> usize {
    std::env::var("QWEN_SPEED_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

fn pool(n: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .expect("pool")
}

fn bandwidth(threads: usize) -> f64 {
    let buf: Vec<u64> = (0..1u64 << 27).collect();
    let p = pool(threads);
    let mut best = Duration::MAX;
    for _ in 0..8 {
        let t = Instant::now();
        let s = p.install(|| {
            buf.par_chunks(1 << 16)
                .map(kernels::stream_sum)
                .reduce(|| 0, u64::wrapping_add)
        });
        std::hint::black_box(s);
        best = best.min(t.elapsed());
    }
    (buf.len() * 8) as f64 / best.as_secs_f64() / 1e9
}

fn decode_step() {
    let (name, e, ff, _) = shape();
    let mats = model();
    let qs: Vec<QMatrix> = mats.iter().map(Mat::q).collect();
    let bytes: usize = qs.iter().map(|m| m.data.len()).sum();
    let out_bytes = qs.last().map(|m| m.data.len()).unwrap_or(0);
    let x: Vec<f32> = (0..ff)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut y = vec![0.0f32; 151936];
    let mut scratch = MatmulScratch::new(1, ff.max(e));
    let bw2 = bandwidth(2);
    let bw1 = bandwidth(1);
    println!(
        "{name} {:?}: {:.1} MB per token ({:.1} MB output matrix); read bandwidth {bw2:.1} GB/s (2 threads), {bw1:.1} GB/s (1 thread); kernels {}",
        layer_type(),
        bytes as f64 / 1e6,
        out_bytes as f64 / 1e6,
        kernels::level()
    );
    for threads in [2, 1] {
        let p = pool(threads);
        p.install(|| {
            let mut step = |sel: &dyn Fn(usize) -> bool| {
                let mut times = Vec::new();
                for _ in 0..steps() {
                    let t = Instant::now();
                    for (i, m) in qs.iter().enumerate() {
                        if sel(i) {
                            matmul(
                                m,
                                &x[..m.cols],
                                &mut y[..m.rows],
                                1,
                                &mut scratch,
                            );
                        }
                    }
                    times.push(t.elapsed());
                }
                times.into_iter().min().unwrap_or_default()
            };
            let n = qs.len();
            let all = step(&|_| true);
            let layers = step(&|i| i + 1 < n);
            let out = step(&|i| i + 1 == n);
            let gb = |b: usize, d: Duration| b as f64 / d.as_secs_f64() / 1e9;
            println!(
                "{threads} thread(s), fastest step: step {:.2} ms ({:.1} GB/s, {:.0}% of {bw2:.1}) = layers {:.2} ms ({:.1} GB/s) + output {:.2} ms ({:.1} GB/s)",
                all.as_secs_f64() * 1e3,
                gb(bytes, all),
                100.0 * gb(bytes, all) / bw2,
                layers.as_secs_f64() * 1e3,
                gb(bytes - out_bytes, layers),
                out.as_secs_f64() * 1e3,
                gb(out_bytes, out),
            );
        });
    }
    // One parallel dispatch with (almost) no work: rayon's fixed cost per matmul call.
    let p = pool(2);
    p.install(|| {
        let mut times = Vec::new();
        for _ in 0..2000 {
            let t = Instant::now();
            (0..8usize)
                .into_par_iter()
                .with_max_len(1)
                .for_each(|i| {
                    std::hint::black_box(i);
                });
            times.push(t.elapsed());
        }
        println!(
            "empty 8-chunk rayon dispatch (2 threads, from inside the pool): median {:.1} us; {} matmul calls per step",
            median(times).as_secs_f64() * 1e6,
            qs.len()
        );
    });
}

/// The kernels from L2 (a 1024 x 896 matrix, one thread, fastest of many calls):
/// compute cost per weight byte for one token, GFLOP/s for a block of 64 tokens.
fn kernels_from_l2() {
    let (rows, cols) = (1024, 896);
    let p = pool(1);
    let types = [
        GgmlType::Q4_0,
        GgmlType::Q8_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::F16,
    ];
    let vs = kernels::variants(kernels::level());
    for dtype in types {
        let m = Mat::new(dtype, rows, cols, 7);
        let q = m.q();
        for n_tok in [1usize, 64] {
            let x: Vec<f32> = (0..n_tok * cols)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let mut y = vec![0.0f32; n_tok * rows];
            let mut scratch = MatmulScratch::new(n_tok, cols);
            let cfgs: Vec<usize> = (0..vs.len()).collect();
            let mut best = vec![Duration::MAX; cfgs.len()];
            p.install(|| {
                for _ in 0..if n_tok == 1 { 400 } else { 30 } {
                    for (i, &v) in cfgs.iter().enumerate() {
                        let t = Instant::now();
                        matmul_with(vs[v], &q, &x, &mut y, n_tok, &mut scratch);
                        best[i] = best[i].min(t.elapsed());
                    }
                }
            });
            for (i, &v) in cfgs.iter().enumerate() {
                let s = best[i].as_secs_f64();
                println!(
                    "{} {} {:?} {rows}x{cols} x {n_tok} token(s), 1 thread, from L2: {:.1} us, {:.1} GB/s of weights, {:.1} GFLOP/s",
                    vs[v].name,
                    vs[v].variant,
                    dtype,
                    s * 1e6,
                    q.data.len() as f64 / s / 1e9,
                    2.0 * (rows * cols * n_tok) as f64 / s / 1e9
                );
            }
        }
    }
}

/// The level's variants (e.g. avx512 with and without VBMI) on the whole decode step,
/// each as 169 separate calls and as 97 calls with q/k/v and gate/up fused
/// ([`qwen::matmul::matmul_multi`]; the difference is the cost of 72 parallel
/// dispatches), interleaved step by step so that all see the same machine; fastest
/// step of each. `QWEN_SPEED_THREADS` sets the pool size (default 2).
fn decode_ab() {
    let (name, e, ff, _) = shape();
    let mats = model();
    let qs: Vec<QMatrix> = mats.iter().map(Mat::q).collect();
    let bytes: usize = qs.iter().map(|m| m.data.len()).sum();
    let x: Vec<f32> = (0..ff)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut y = vec![0.0f32; 151936];
    let mut scratch = MatmulScratch::new(1, ff.max(e));
    let vs = kernels::variants(kernels::level());
    let cfgs: Vec<(usize, bool)> = (0..vs.len())
        .flat_map(|v| [(v, false), (v, true)])
        .collect();
    let mut best = vec![Duration::MAX; cfgs.len()];
    let threads: usize = std::env::var("QWEN_SPEED_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let n_layer_mats = qs.len() - 1;
    pool(threads).install(|| {
        for _ in 0..steps() {
            for (i, &(v, fused)) in cfgs.iter().enumerate() {
                let k = vs[v];
                let t = Instant::now();
                if fused {
                    for l in qs[..n_layer_mats].chunks_exact(7) {
                        let (a, rest) = y.split_at_mut(l[0].rows);
                        let (b, c) = rest.split_at_mut(l[1].rows);
                        let xs = &x[..e];
                        let mut ys = [a, b, &mut c[..l[2].rows]];
                        matmul_multi_with(k, &[&l[0], &l[1], &l[2]], xs, &mut ys, 1, &mut scratch);
                        matmul_with(k, &l[3], xs, &mut y[..l[3].rows], 1, &mut scratch);
                        let (a, b) = y.split_at_mut(l[4].rows);
                        let mut ys = [a, &mut b[..l[5].rows]];
                        matmul_multi_with(k, &[&l[4], &l[5]], xs, &mut ys, 1, &mut scratch);
                        matmul_with(
                            k,
                            &l[6],
                            &x[..l[6].cols],
                            &mut y[..l[6].rows],
                            1,
                            &mut scratch,
                        );
                    }
                    let m = &qs[n_layer_mats];
                    matmul_with(k, m, &x[..m.cols], &mut y[..m.rows], 1, &mut scratch);
                } else {
                    for m in &qs {
                        matmul_with(k, m, &x[..m.cols], &mut y[..m.rows], 1, &mut scratch);
                    }
                }
                best[i] = best[i].min(t.elapsed());
            }
        }
    });
    for (i, &(v, fused)) in cfgs.iter().enumerate() {
        println!(
            "{name} {:?} {} {} {threads} threads {}: step {:.2} ms, {:.1} GB/s",
            layer_type(),
            vs[v].name,
            vs[v].variant,
            if fused {
                "fused qkv/gate-up"
            } else {
                "separate calls"
            },
            best[i].as_secs_f64() * 1e3,
            bytes as f64 / best[i].as_secs_f64() / 1e9
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument picks the runs by name.
    let picks: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runs: [(&str, fn()); 3] = [
        ("decode_step", decode_step),
        ("kernels_from_l2", kernels_from_l2),
        ("decode_ab", decode_ab),
    ];
    for (name, run) in runs {
        if picks.is_empty() || picks.iter().any(|p| name.contains(p.as_str())) {
            println!("== {name}");
            run();
        }
    }
}
