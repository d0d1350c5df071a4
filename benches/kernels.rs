//! Kernel and matmul benchmarks (criterion).
//!
//! `cargo bench --bench kernels` runs every group; a filter picks some, e.g.
//! `cargo bench --bench kernels -- matvec_0.5b`. Groups:
//! - `read_bandwidth`: sum of a 1 GiB buffer with 2 threads (wide loads and the kernels'
//!   prefetch): the memory read bandwidth that bounds decode (bytes of weights per
//!   token / bandwidth = best step time).
//! - `kernel_decode/<level>/<type>`: the tile kernels alone (4 rows per call, no threads,
//!   activations quantized beforehand), one token, a 512x896 matrix that stays in L2:
//!   GB/s of weights.
//! - `kernel_prefill/<level>/<type>`: the same against 64 tokens: GFLOP/s (criterion's
//!   "elem/s" counts flops: 2 per multiply-add).
//! - `matvec_0.5b/<type>`: the 24 layers of Qwen2.5-0.5B-shaped matrices (q 896x896,
//!   k/v 128x896, o 896x896, gate/up 4864x896, down 896x4864; 179 MB in q4_0), one token,
//!   2 threads, best kernel level: GB/s of weights, to hold against `read_bandwidth`.
//! - `matvec_0.5b_busy/<type>`: the same with a spinning neighbour thread (q4_0, q8_0):
//!   the busy-machine case; `QWEN_SERIAL_FALLBACK=0` shows it without matmul's fallback.
//! - `prefill_0.5b/<type>`: one such layer against 128 tokens, 2 threads: GFLOP/s
//!   (q4_0/q5_0/q8_0 through the GEMM where the level has one).
//! - K-quants: `kquant_gemm/<level>/<type>`: the K GEMM alone (4 rows unpacked once,
//!   then 8 calls of 16 tokens against 1536 columns; one thread): GFLOP/s.
//!   `kquant_layer_1.5b/<level>/<tokens>`: one Qwen2.5-1.5B layer as a Q4_K_M file has
//!   it (q4_K; v and down q6_K) through `matmul_with`, 2 threads, 1 token (GB/s of
//!   weights) and 128 tokens (GFLOP/s; the K GEMM where the level has one).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use quant_formats::GgmlType;
use qwen::kernels::{self, ActQ8x4};
use qwen::matmul::{matmul_with, MatmulScratch, QMatrix};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const TYPES: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::F32,
];

/// Per-layer matrices of Qwen2.5-0.5B: (rows, cols).
const LAYER_0_5B: [(usize, usize); 7] = [
    (896, 896),
    (128, 896),
    (128, 896),
    (896, 896),
    (4864, 896),
    (4864, 896),
    (896, 4864),
];

/// Deterministic weights in [-0.5, 0.5), quantized by the reference quantizer.
fn weights(dtype: GgmlType, rows: usize, cols: usize, seed: u32) -> Vec<u8> {
    let vals: Vec<f32> = (0..rows * cols)
        .map(|i| {
            ((i as u32 ^ seed).wrapping_mul(2_654_435_761) >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect();
    quant_formats::reference::quantize(dtype, &vals).expect("bench shapes are block multiples")
}

/// Bytes in an 8-aligned buffer (f32 weights need 4-byte alignment).
struct Aligned(Vec<u64>, usize);
impl Aligned {
    fn new(bytes: &[u8]) -> Self {
        let mut v = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut v)[..bytes.len()].copy_from_slice(bytes);
        Self(v, bytes.len())
    }
    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.0)[..self.1]
    }
}

fn activations(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

fn read_bandwidth(c: &mut Criterion) {
    let n = 1usize << 27; // 1 GiB of u64
    let buf: Vec<u64> = (0..n as u64).collect();
    let p = pool(2);
    let mut g = c.benchmark_group("read_bandwidth");
    g.sample_size(10)
        .throughput(Throughput::Bytes((n * 8) as u64));
    g.bench_function("2_threads", |b| {
        b.iter(|| p.install(|| kernels::par_stream_sum(&buf)))
    });
    g.finish();
}

/// One tile call per (4 rows, block of tokens) over a whole matrix, on this thread:
/// the kernel alone, without matmul's threads or activation quantization.
fn run_tiles<W: bytemuck::Pod>(
    tile: kernels::TileFn<W>,
    w: &[W],
    nb: usize,
    acts: &[ActQ8x4],
    n_tok: usize,
    tile_t: usize,
    y: &mut [f32],
) {
    let ng = acts.len() / n_tok;
    let mut t0 = 0;
    while t0 < n_tok {
        let nt = tile_t.min(n_tok - t0);
        let xs = &acts[t0 * ng..(t0 + nt) * ng];
        for (r, wr) in w.chunks_exact(4 * nb).enumerate() {
            tile(wr, 4, xs, &mut y[r * 32..r * 32 + 4 * nt]);
        }
        t0 += nt;
    }
}

fn run_float_tiles<W: bytemuck::Pod>(
    tile: kernels::FloatTileFn<W>,
    w: &[W],
    cols: usize,
    x: &[f32],
    n_tok: usize,
    tile_t: usize,
    y: &mut [f32],
) {
    let mut t0 = 0;
    while t0 < n_tok {
        let nt = tile_t.min(n_tok - t0);
        let xs = &x[t0 * cols..(t0 + nt) * cols];
        for (r, wr) in w.chunks_exact(4 * cols).enumerate() {
            tile(wr, 4, xs, &mut y[r * 32..r * 32 + 4 * nt]);
        }
        t0 += nt;
    }
}

fn kernel(c: &mut Criterion) {
    let (rows, cols) = (512, 896);
    let nb = cols / 32;
    for (group, n_tok) in [("kernel_decode", 1usize), ("kernel_prefill", 64)] {
        let mut g = c.benchmark_group(group);
        g.sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for level in kernels::available() {
            let k = kernels::table(level).expect("available level");
            for dtype in TYPES {
                if level == "scalar" && n_tok > 1 && dtype != GgmlType::Q4_0 {
                    continue; // slow and says little
                }
                let data = Aligned::new(&weights(dtype, rows, cols, 1));
                let bytes = data.bytes();
                let x = activations(n_tok * cols);
                let mut acts = vec![ActQ8x4::default(); n_tok * kernels::act_groups(nb)];
                for (a, xt) in acts.chunks_mut(kernels::act_groups(nb)).zip(x.chunks(cols)) {
                    (k.quantize)(xt, a);
                }
                let mut y = vec![0.0f32; rows * 32];
                let tt = k.tile_tokens;
                g.throughput(if n_tok == 1 {
                    Throughput::Bytes(bytes.len() as u64)
                } else {
                    Throughput::Elements((2 * rows * cols * n_tok) as u64)
                });
                g.bench_with_input(BenchmarkId::new(level, dtype.name()), &(), |b, _| {
                    b.iter(|| match dtype {
                        GgmlType::Q4_0 => run_tiles(
                            k.q4_0,
                            bytemuck::cast_slice(bytes),
                            nb,
                            &acts,
                            n_tok,
                            tt,
                            &mut y,
                        ),
                        GgmlType::Q4_1 => run_tiles(
                            k.q4_1,
                            bytemuck::cast_slice(bytes),
                            nb,
                            &acts,
                            n_tok,
                            tt,
                            &mut y,
                        ),
                        GgmlType::Q5_0 => run_tiles(
                            k.q5_0,
                            bytemuck::cast_slice(bytes),
                            nb,
                            &acts,
                            n_tok,
                            tt,
                            &mut y,
                        ),
                        GgmlType::Q5_1 => run_tiles(
                            k.q5_1,
                            bytemuck::cast_slice(bytes),
                            nb,
                            &acts,
                            n_tok,
                            tt,
                            &mut y,
                        ),
                        GgmlType::Q8_0 => run_tiles(
                            k.q8_0,
                            bytemuck::cast_slice(bytes),
                            nb,
                            &acts,
                            n_tok,
                            tt,
                            &mut y,
                        ),
                        GgmlType::F16 => run_float_tiles(
                            k.f16,
                            bytemuck::cast_slice(bytes),
                            cols,
                            &x,
                            n_tok,
                            tt,
                            &mut y,
                        ),
                        GgmlType::Bf16 => run_float_tiles(
                            k.bf16,
                            bytemuck::cast_slice(bytes),
                            cols,
                            &x,
                            n_tok,
                            tt,
                            &mut y,
                        ),
                        _ => run_float_tiles(
                            k.f32,
                            bytemuck::cast_slice(bytes),
                            cols,
                            &x,
                            n_tok,
                            tt,
                            &mut y,
                        ),
                    })
                });
            }
        }
        g.finish();
    }
}

fn model_0_5b(c: &mut Criterion) {
    let k =
        kernels::table(kernels::available().last().copied().unwrap_or("scalar")).expect("level");
    let p = pool(2);
    let layers = 24;
    for (group, n_tok, n_layers, busy) in [
        ("matvec_0.5b", 1usize, layers, false),
        ("matvec_0.5b_busy", 1, layers, true),
        ("prefill_0.5b", 128, 1, false),
    ] {
        let mut g = c.benchmark_group(group);
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        for dtype in TYPES {
            if busy && !matches!(dtype, GgmlType::Q4_0 | GgmlType::Q8_0) {
                continue;
            }
            // One layer's bytes, repeated for every layer (distinct memory, same values).
            let one: Vec<Aligned> = LAYER_0_5B
                .iter()
                .enumerate()
                .map(|(i, &(r, cc))| Aligned::new(&weights(dtype, r, cc, i as u32)))
                .collect();
            let all: Vec<Vec<Aligned>> = (0..n_layers)
                .map(|_| one.iter().map(|a| Aligned(a.0.clone(), a.1)).collect())
                .collect();
            let mats: Vec<QMatrix> = all
                .iter()
                .flat_map(|l| {
                    l.iter().zip(LAYER_0_5B).map(|(a, (r, cc))| {
                        QMatrix::new("w", dtype, r, cc, a.bytes()).expect("valid")
                    })
                })
                .collect();
            let bytes: usize = mats.iter().map(|m| m.data.len()).sum();
            let flops: usize = mats.iter().map(|m| 2 * m.rows * m.cols * n_tok).sum();
            let x = activations(n_tok * 4864);
            let mut y = vec![0.0f32; n_tok * 4864];
            let mut scratch = MatmulScratch::new(n_tok, 4864);
            g.throughput(if n_tok == 1 {
                Throughput::Bytes(bytes as u64)
            } else {
                Throughput::Elements(flops as u64)
            });
            // The busy variant runs a spinning neighbour thread meanwhile (two cores here:
            // one of the two workers shares its core with it); compare with `matvec_0.5b`.
            let stop = AtomicBool::new(false);
            std::thread::scope(|sc| {
                if busy {
                    sc.spawn(|| {
                        while !stop.load(Ordering::Relaxed) {
                            std::hint::spin_loop();
                        }
                    });
                }
                g.bench_with_input(BenchmarkId::new(k.name, dtype.name()), &(), |b, _| {
                    b.iter(|| {
                        p.install(|| {
                            for m in &mats {
                                let (xs, ys) = (&x[..n_tok * m.cols], &mut y[..n_tok * m.rows]);
                                matmul_with(k, m, xs, ys, n_tok, &mut scratch);
                            }
                        })
                    })
                });
                stop.store(true, Ordering::Relaxed);
            });
        }
        g.finish();
    }
}

/// One Qwen2.5-1.5B layer of a Q4_K_M file: (rows, cols, type) of q, k, v, o, gate,
/// up, down.
const LAYER_1_5B_K: [(usize, usize, GgmlType); 7] = [
    (1536, 1536, GgmlType::Q4K),
    (256, 1536, GgmlType::Q4K),
    (256, 1536, GgmlType::Q6K),
    (1536, 1536, GgmlType::Q4K),
    (8960, 1536, GgmlType::Q4K),
    (8960, 1536, GgmlType::Q4K),
    (1536, 8960, GgmlType::Q6K),
];

fn kquant(c: &mut Criterion) {
    use quant_formats::block::{BlockQ4K, BlockQ6K, BlockQ8K};
    use qwen::kernels::kq::{self, ActKGemm, KGemmRows};
    // The GEMM alone: 4 rows x 1536 columns, 128 tokens in token blocks of 16.
    let (cols, n_tok) = (1536usize, 128usize);
    let nb = cols / 256;
    let x = activations(n_tok * cols);
    let mut xq = vec![BlockQ8K::default(); n_tok * nb];
    kq::quantize_acts(&x, &mut xq);
    let mut gx = vec![ActKGemm::default(); n_tok / 16 * nb];
    for (tb, g) in gx.chunks_mut(nb).enumerate() {
        kq::kgemm_acts(&xq[tb * 16 * nb..(tb + 1) * 16 * nb], 16, g);
    }
    let mut g = c.benchmark_group("kquant_gemm");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements((2 * 4 * cols * n_tok) as u64));
    for level in kernels::available() {
        let Some(gt) = kq::gemm_table(level) else {
            continue;
        };
        let n = 4 * nb;
        let (mut q, mut sc, mut mw) = (vec![0u8; n * 256], vec![0i32; n * 16], vec![0i32; n * 8]);
        let (mut d, mut dmin) = (vec![0f32; n], vec![0f32; n]);
        let mut out = vec![0f32; 2 * 64];
        for dtype in [GgmlType::Q4K, GgmlType::Q6K] {
            let data = Aligned::new(&weights(dtype, 4, cols, 3));
            let mut rows = KGemmRows {
                q: &mut q,
                sc: &mut sc,
                mw: &mut mw,
                d: &mut d,
                dmin: &mut dmin,
            };
            g.bench_with_input(BenchmarkId::new(level, dtype.name()), &(), |b, _| {
                b.iter(|| {
                    // Unpack once, then every token block: as matmul does per row group.
                    let gemm = if dtype == GgmlType::Q4K {
                        let w: &[BlockQ4K] = bytemuck::cast_slice(data.bytes());
                        (gt.q4_k.unpack)(w, &mut rows);
                        gt.q4_k.gemm
                    } else {
                        let w: &[BlockQ6K] = bytemuck::cast_slice(data.bytes());
                        (gt.q6_k.unpack)(w, &mut rows);
                        gt.q6_k.gemm
                    };
                    for xb in gx.chunks(2 * nb) {
                        gemm(&rows, xb, &mut out);
                    }
                })
            });
        }
    }
    g.finish();

    // One 1.5B layer through matmul_with, every level, 1 and 128 tokens.
    let p = pool(2);
    let mats_bytes: Vec<Aligned> = LAYER_1_5B_K
        .iter()
        .enumerate()
        .map(|(i, &(r, cc, t))| Aligned::new(&weights(t, r, cc, i as u32)))
        .collect();
    let mats: Vec<QMatrix> = mats_bytes
        .iter()
        .zip(LAYER_1_5B_K)
        .map(|(a, (r, cc, t))| QMatrix::new("w", t, r, cc, a.bytes()).expect("valid"))
        .collect();
    let bytes: usize = mats.iter().map(|m| m.data.len()).sum();
    let mut g = c.benchmark_group("kquant_layer_1.5b");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for n_tok in [1usize, 128] {
        let flops: usize = mats.iter().map(|m| 2 * m.rows * m.cols * n_tok).sum();
        g.throughput(if n_tok == 1 {
            Throughput::Bytes(bytes as u64)
        } else {
            Throughput::Elements(flops as u64)
        });
        let x = activations(n_tok * 8960);
        let mut y = vec![0.0f32; n_tok * 8960];
        let mut scratch = MatmulScratch::new(n_tok, 8960);
        for level in kernels::available() {
            if level == "scalar" && n_tok > 1 {
                continue; // slow and says little
            }
            let k = kernels::table(level).expect("available level");
            g.bench_with_input(BenchmarkId::new(level, n_tok), &(), |b, _| {
                b.iter(|| {
                    p.install(|| {
                        for m in &mats {
                            let (xs, ys) = (&x[..n_tok * m.cols], &mut y[..n_tok * m.rows]);
                            matmul_with(k, m, xs, ys, n_tok, &mut scratch);
                        }
                    })
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, read_bandwidth, kernel, model_0_5b, kquant);
criterion_main!(benches);
