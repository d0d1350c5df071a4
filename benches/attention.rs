//! Attention benchmarks (criterion).
//!
//! `cargo bench --bench attention` runs every group; a filter picks some, e.g.
//! `cargo bench --bench attention -- attn_decode`. Groups:
//! - `attn_kernel/<level>/<op>_<kv>`: one kernel alone (no threads) over 1024 keys of
//!   head_dim 64 (f16: 128 KB, f32: 256 KB; they stay in L2): GB/s of keys or values.
//! - `attn_decode/<level>/<kv>/<ctx>`: one decode step of one layer with the Qwen2.5-0.5B
//!   attention shape (14 query heads, 2 KV heads, head_dim 64) over `ctx` cached
//!   positions, 2 threads: GB/s of K and V read.
//! - `attn_prefill/<level>/<kv>`: one layer's causal attention of 128 new tokens from
//!   position 0 (one `attend` call, 2 threads): GFLOP/s (2 per multiply-add of q·k and p·v).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use qwen::kernels::attn::{self, AttnDims, AttnKernels, AttnScratch, KvElem};
use std::time::Duration;

fn vals(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32 ^ seed).wrapping_mul(2_654_435_761) >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

fn levels() -> Vec<(&'static str, &'static AttnKernels)> {
    qwen::kernels::available()
        .into_iter()
        .filter_map(|l| attn::table(l).map(|t| (l, t)))
        .collect()
}

fn attn_kernel(c: &mut Criterion) {
    let (hd, n) = (64, 1024);
    let q = vals(hd, 1);
    let k32 = vals(n * hd, 2);
    let k16: Vec<f16> = k32.iter().map(|&x| f16::from_f32(x)).collect();
    let p: Vec<f32> = vals(n, 3).iter().map(|x| x.abs() / n as f32).collect();
    let mut g = c.benchmark_group("attn_kernel");
    g.measurement_time(Duration::from_secs(2));
    for (level, t) in levels() {
        let mut out = vec![0f32; n];
        let mut acc = vec![0f32; hd];
        g.throughput(Throughput::Bytes((n * hd * 2) as u64));
        g.bench_function(BenchmarkId::new(level, "scores_f16"), |b| {
            b.iter(|| (t.scores_f16)(&q, &k16, 0.125, &mut out))
        });
        g.bench_function(BenchmarkId::new(level, "accum_f16"), |b| {
            b.iter(|| (t.accum_f16)(&p, &k16, &mut acc))
        });
        g.throughput(Throughput::Bytes((n * hd * 4) as u64));
        g.bench_function(BenchmarkId::new(level, "scores_f32"), |b| {
            b.iter(|| (t.scores_f32)(&q, &k32, 0.125, &mut out))
        });
        g.bench_function(BenchmarkId::new(level, "accum_f32"), |b| {
            b.iter(|| (t.accum_f32)(&p, &k32, &mut acc))
        });
        g.throughput(Throughput::Elements(n as u64));
        let s0 = vals(n, 4);
        let mut s = s0.clone();
        g.bench_function(BenchmarkId::new(level, "exp_sum"), |b| {
            b.iter(|| {
                s.copy_from_slice(&s0);
                (t.exp_sum)(&mut s, 0.5)
            })
        });
    }
    g.finish();
}

/// Keys and values of `n` positions stored into a fresh cache.
fn cache<T: KvElem>(t: &AttnKernels, d: &AttnDims, n: usize, seed: u32) -> Vec<T> {
    let mut c = vec![T::default(); d.n_head_kv * d.n_ctx * d.head_dim];
    let x = vals(n * d.n_head_kv * d.head_dim, seed);
    attn::store(t, d, &x, 0, &mut c);
    c
}

fn decode_one<T: KvElem>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    pool: &rayon::ThreadPool,
    level: &str,
    t: &AttnKernels,
    kv: &str,
    ctx: usize,
) {
    let d = AttnDims {
        n_head: 14,
        n_head_kv: 2,
        head_dim: 64,
        n_ctx: ctx,
    };
    let kc: Vec<T> = cache(t, &d, ctx, 5);
    let vc: Vec<T> = cache(t, &d, ctx, 6);
    let q = vals(14 * 64, 7);
    let mut out = vec![0f32; q.len()];
    let mut scratch = AttnScratch::new(d, 1);
    g.throughput(Throughput::Bytes(
        (2 * ctx * 2 * 64 * std::mem::size_of::<T>()) as u64,
    ));
    g.bench_function(BenchmarkId::new(format!("{level}/{kv}"), ctx), |b| {
        b.iter(|| {
            pool.install(|| attn::attend(t, &q, &kc, &vc, ctx - 1, 0.125, &mut scratch, &mut out))
        })
    });
}

fn attn_decode(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("2 threads");
    let mut g = c.benchmark_group("attn_decode");
    g.measurement_time(Duration::from_secs(2));
    for (level, t) in levels() {
        for ctx in [256, 1024, 4096] {
            decode_one::<f16>(&mut g, &pool, level, t, "f16", ctx);
            decode_one::<f32>(&mut g, &pool, level, t, "f32", ctx);
        }
    }
    g.finish();
}

fn prefill_one<T: KvElem>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    pool: &rayon::ThreadPool,
    level: &str,
    t: &AttnKernels,
    kv: &str,
) {
    let n = 128;
    let d = AttnDims {
        n_head: 14,
        n_head_kv: 2,
        head_dim: 64,
        n_ctx: n,
    };
    let kc: Vec<T> = cache(t, &d, n, 8);
    let vc: Vec<T> = cache(t, &d, n, 9);
    let q = vals(n * 14 * 64, 10);
    let mut out = vec![0f32; q.len()];
    let mut scratch = AttnScratch::new(d, n);
    // Causal: query i reads i + 1 keys; 2 flops per multiply-add, q·k and p·v.
    let flops = 14 * 64 * 2 * 2 * (n * (n + 1) / 2);
    g.throughput(Throughput::Elements(flops as u64));
    g.bench_function(BenchmarkId::new(level, kv), |b| {
        b.iter(|| pool.install(|| attn::attend(t, &q, &kc, &vc, 0, 0.125, &mut scratch, &mut out)))
    });
}

fn attn_prefill(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("2 threads");
    let mut g = c.benchmark_group("attn_prefill");
    g.measurement_time(Duration::from_secs(2));
    for (level, t) in levels() {
        prefill_one::<f16>(&mut g, &pool, level, t, "f16");
        prefill_one::<f32>(&mut g, &pool, level, t, "f32");
    }
    g.finish();
}

criterion_group!(benches, attn_kernel, attn_decode, attn_prefill);
criterion_main!(benches);
