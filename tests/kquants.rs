//! K-quant kernels (q2_K … q6_K against q8_K activations): every level this CPU
//! has against the scalar twin, the scalar twin against an f64 dot of the reference
//! dequantization (within the q8_K rounding bound of the true f32 activations), and
//! the matmul (through `qwen::matmul`, so the wiring too) against a naive loop with 1
//! and 2 threads.
//!
//! Run: `cargo test --release --test kquants` (a level missing on this CPU is skipped
//! and named on stderr).

use half::f16;
use quant_formats::block::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QK_K};
use quant_formats::reference::{dequantize, dequantize_row_q8_k, quantize_row_q8_k};
use quant_formats::GgmlType;
use qwen::kernels::kq::{
    self, ActKGemm, KGemmRows, KGemmType, KqGemm, KqKernels, KqRowsFn, KqScratch, KqTileFn,
    KQ_GEMM_ROWS, KQ_GEMM_TOKENS, KQ_ROWS,
};
use qwen::kernels::kq_generic::{self, scales_mins_k4, scales_q3_k};
use qwen::kernels::{self, Kernels};
use qwen::matmul::{matmul_with, MatmulScratch, QMatrix};

#[path = "common_rng/mod.rs"]
mod common_rng;
use common_rng::Rng;

impl Rng {
    /// A super-block scale: mostly ordinary, sometimes zero, subnormal or large.
    fn scale(&mut self) -> f16 {
        match self.next() % 16 {
            0 => f16::ZERO,
            1 => f16::from_f32(1000.0),
            2 => f16::from_bits(1), // smallest subnormal
            3 => f16::from_f32(6.1e-5),
            _ => f16::from_f32(self.f() * 0.05),
        }
    }
}

/// The K types under test: block type, its tile in a table, its dtype.
trait KBlock: bytemuck::Pod + Default + std::fmt::Debug {
    const DTYPE: GgmlType;
    fn tile(k: &KqKernels) -> KqTileFn<Self>;
    /// The table's decode tile of KQ_ROWS rows, if it has one for this type.
    fn rows(k: &KqKernels) -> Option<KqRowsFn<Self>>;
    fn gemm(g: &KqGemm) -> &KGemmType<Self>;
    /// Overwrite the f16 fields with finite values (random bytes are otherwise valid).
    fn fix_scales(&mut self, rng: &mut Rng, unit: bool);
    /// (codes minus offsets, as i32, in element order; the 16 weights of bsums[j])
    /// with the super-block scales folded out: w_i = d * a_i - dmin * m_i.
    fn parts(&self) -> ([i32; QK_K], [i32; QK_K], f32, f32);
}

impl KBlock for BlockQ2K {
    const DTYPE: GgmlType = GgmlType::Q2K;
    fn tile(k: &KqKernels) -> KqTileFn<Self> {
        k.q2_k
    }
    fn rows(k: &KqKernels) -> Option<KqRowsFn<Self>> {
        let _ = k;
        None
    }
    fn gemm(g: &KqGemm) -> &KGemmType<Self> {
        &g.q2_k
    }
    fn fix_scales(&mut self, rng: &mut Rng, unit: bool) {
        (self.d, self.dmin) = if unit {
            (f16::ONE, f16::ONE)
        } else {
            (rng.scale(), rng.scale())
        };
    }
    fn parts(&self) -> ([i32; QK_K], [i32; QK_K], f32, f32) {
        let a = std::array::from_fn(|i| {
            let q = (self.qs[32 * (i / 128) + i % 32] >> (2 * ((i / 32) % 4))) & 3;
            q as i32 * (self.scales[i / 16] & 15) as i32
        });
        let m = std::array::from_fn(|i| (self.scales[i / 16] >> 4) as i32);
        (a, m, self.d.to_f32(), self.dmin.to_f32())
    }
}

impl KBlock for BlockQ3K {
    const DTYPE: GgmlType = GgmlType::Q3K;
    fn tile(k: &KqKernels) -> KqTileFn<Self> {
        k.q3_k
    }
    fn rows(k: &KqKernels) -> Option<KqRowsFn<Self>> {
        let _ = k;
        None
    }
    fn gemm(g: &KqGemm) -> &KGemmType<Self> {
        &g.q3_k
    }
    fn fix_scales(&mut self, rng: &mut Rng, unit: bool) {
        self.d = if unit { f16::ONE } else { rng.scale() };
    }
    fn parts(&self) -> ([i32; QK_K], [i32; QK_K], f32, f32) {
        let sc = scales_q3_k(&self.scales);
        let a = std::array::from_fn(|i| {
            let q = (self.qs[32 * (i / 128) + i % 32] >> (2 * ((i / 32) % 4))) & 3;
            let h = (self.hmask[i % 32] >> (i / 32)) & 1;
            (q as i32 - if h == 1 { 0 } else { 4 }) * sc[i / 16] as i32
        });
        (a, [0; QK_K], self.d.to_f32(), 0.0)
    }
}

impl KBlock for BlockQ4K {
    const DTYPE: GgmlType = GgmlType::Q4K;
    fn tile(k: &KqKernels) -> KqTileFn<Self> {
        k.q4_k
    }
    fn rows(k: &KqKernels) -> Option<KqRowsFn<Self>> {
        k.q4_k_rows
    }
    fn gemm(g: &KqGemm) -> &KGemmType<Self> {
        &g.q4_k
    }
    fn fix_scales(&mut self, rng: &mut Rng, unit: bool) {
        (self.d, self.dmin) = if unit {
            (f16::ONE, f16::ONE)
        } else {
            (rng.scale(), rng.scale())
        };
    }
    fn parts(&self) -> ([i32; QK_K], [i32; QK_K], f32, f32) {
        let (sc, mn) = scales_mins_k4(&self.scales);
        let a = std::array::from_fn(|i| {
            let b = self.qs[32 * (i / 64) + i % 32];
            let q = if i % 64 < 32 { b & 15 } else { b >> 4 };
            q as i32 * sc[i / 32] as i32
        });
        let m = std::array::from_fn(|i| mn[i / 32] as i32);
        (a, m, self.d.to_f32(), self.dmin.to_f32())
    }
}

impl KBlock for BlockQ5K {
    const DTYPE: GgmlType = GgmlType::Q5K;
    fn tile(k: &KqKernels) -> KqTileFn<Self> {
        k.q5_k
    }
    fn rows(k: &KqKernels) -> Option<KqRowsFn<Self>> {
        k.q5_k_rows
    }
    fn gemm(g: &KqGemm) -> &KGemmType<Self> {
        &g.q5_k
    }
    fn fix_scales(&mut self, rng: &mut Rng, unit: bool) {
        (self.d, self.dmin) = if unit {
            (f16::ONE, f16::ONE)
        } else {
            (rng.scale(), rng.scale())
        };
    }
    fn parts(&self) -> ([i32; QK_K], [i32; QK_K], f32, f32) {
        let (sc, mn) = scales_mins_k4(&self.scales);
        let a = std::array::from_fn(|i| {
            let b = self.qs[32 * (i / 64) + i % 32];
            let q = if i % 64 < 32 { b & 15 } else { b >> 4 };
            let h = (self.qh[i % 32] >> (i / 32)) & 1;
            (q | h << 4) as i32 * sc[i / 32] as i32
        });
        let m = std::array::from_fn(|i| mn[i / 32] as i32);
        (a, m, self.d.to_f32(), self.dmin.to_f32())
    }
}

impl KBlock for BlockQ6K {
    const DTYPE: GgmlType = GgmlType::Q6K;
    fn tile(k: &KqKernels) -> KqTileFn<Self> {
        k.q6_k
    }
    fn rows(k: &KqKernels) -> Option<KqRowsFn<Self>> {
        k.q6_k_rows
    }
    fn gemm(g: &KqGemm) -> &KGemmType<Self> {
        &g.q6_k
    }
    fn fix_scales(&mut self, rng: &mut Rng, unit: bool) {
        self.d = if unit { f16::ONE } else { rng.scale() };
    }
    fn parts(&self) -> ([i32; QK_K], [i32; QK_K], f32, f32) {
        let a = std::array::from_fn(|i| {
            let (h, r) = (i / 128, i % 128);
            let (quarter, l) = (r / 32, r % 32);
            let ql = self.ql[64 * h + l + 32 * (quarter % 2)];
            let lo = if quarter < 2 { ql & 15 } else { ql >> 4 };
            let hi = (self.qh[32 * h + l] >> (2 * quarter)) & 3;
            ((lo | hi << 4) as i32 - 32) * self.scales[i / 16] as i32
        });
        (a, [0; QK_K], self.d.to_f32(), 0.0)
    }
}

fn random_blocks<B: KBlock>(rng: &mut Rng, n: usize, unit: bool) -> Vec<B> {
    let mut w = vec![B::default(); n];
    for b in bytemuck::cast_slice_mut::<B, u8>(&mut w) {
        *b = rng.next() as u8;
    }
    for b in &mut w {
        b.fix_scales(rng, unit);
    }
    w
}

/// Activations for `nb` super-blocks: random, with a zero block, huge and tiny blocks.
fn acts(rng: &mut Rng, nb: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..nb * QK_K).map(|_| rng.f() * 3.0).collect();
    for (b, blk) in x.chunks_mut(QK_K).enumerate() {
        match b % 5 {
            1 => blk.fill(0.0),
            2 => blk.iter_mut().for_each(|v| *v *= 1e4),
            3 => blk.iter_mut().for_each(|v| *v *= 1e-6),
            _ => {}
        }
    }
    x
}

fn q8k(x: &[f32]) -> Vec<BlockQ8K> {
    let mut y = vec![BlockQ8K::default(); x.len() / QK_K];
    quantize_row_q8_k(x, &mut y);
    y
}

fn levels() -> Vec<&'static Kernels> {
    for l in kernels::LEVELS {
        if kernels::table(l).is_none() {
            eprintln!("kernel level {l}: not available on this CPU/build, skipped");
        }
    }
    kernels::available()
        .into_iter()
        .filter_map(kernels::table)
        .collect()
}

/// (exact f64 dot of the integer decomposition, sum of |terms|): the magnitude bounds
/// what float summation order can change.
fn exact_dot<B: KBlock>(w: &[B], x: &[BlockQ8K]) -> (f64, f64) {
    let (mut sum, mut mag) = (0.0f64, 0.0f64);
    for (b, y) in w.iter().zip(x) {
        let (a, m, d, dmin) = b.parts();
        let dy = y.d as f64;
        let (mut s, mut sm) = (0i64, 0i64);
        let (mut abs, mut abs_m) = (0i64, 0i64);
        for (&ai, &qi) in a.iter().zip(&y.qs) {
            s += ai as i64 * qi as i64;
            abs += (ai as i64 * qi as i64).abs();
        }
        for j in 0..16 {
            sm += m[16 * j] as i64 * y.bsums[j] as i64;
            abs_m += (m[16 * j] as i64 * y.bsums[j] as i64).abs();
        }
        sum += d as f64 * dy * s as f64 - dmin as f64 * dy * sm as f64;
        mag += (d as f64 * dy).abs() * abs as f64 + (dmin as f64 * dy).abs() * abs_m as f64;
    }
    (sum, mag)
}

fn dot_case<B: KBlock>(seed: u64) {
    let scalar = &kq_generic::SCALAR;
    let name = B::DTYPE.name();
    let mut rng = Rng(seed);
    for nb in [1usize, 2, 3, 5, 8] {
        let w: Vec<B> = random_blocks(&mut rng, nb, false);
        let x = acts(&mut rng, nb);
        let xq = q8k(&x);
        let (exact, mag) = exact_dot(&w, &xq);
        let got = dot(scalar, &w, &xq);
        let tol = 1e-5 * mag + 1e-30;
        assert!(
            (got as f64 - exact).abs() <= tol,
            "{name} scalar nb={nb}: {got} vs exact {exact} (tol {tol:e})"
        );
        // The scalar twin against the f32 dot of the reference dequantization, and
        // that within q8_K's rounding of the true activations.
        let bytes: &[u8] = bytemuck::cast_slice(&w);
        let mut wf = vec![0f32; nb * QK_K];
        dequantize(B::DTYPE, bytes, &mut wf).unwrap();
        let mut xd = vec![0f32; nb * QK_K];
        dequantize_row_q8_k(&xq, &mut xd);
        let deq: f64 = wf.iter().zip(&xd).map(|(&a, &b)| a as f64 * b as f64).sum();
        let deq_mag: f64 = wf
            .iter()
            .zip(&xd)
            .map(|(&a, &b)| (a as f64 * b as f64).abs())
            .sum();
        // The reference dequantizer rounds d * sc and dmin * m to f32 first.
        let tol_deq = 1e-5 * (mag + deq_mag) + 1e-30;
        assert!(
            (got as f64 - deq).abs() <= tol_deq,
            "{name} scalar nb={nb}: {got} vs dequantized {deq} (tol {tol_deq:e})"
        );
        let truth: f64 = wf.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
        // q8_K: |x - d * q| <= |d| / 2 per value, d = amax / 127.
        let round: f64 = wf
            .chunks(QK_K)
            .zip(&xq)
            .map(|(wb, y)| {
                wb.iter().map(|&v| v.abs() as f64).sum::<f64>() * (y.d.abs() as f64) / 2.0
            })
            .sum();
        assert!(
            (got as f64 - truth).abs() <= round + tol_deq,
            "{name} scalar nb={nb}: {got} vs f32 dot {truth}, q8_K rounding bound {round:e}"
        );
        // Every level and tile width against the scalar twin.
        for k in levels() {
            let kq = kq::table(k.name);
            for nt in 1..=kq.tile_tokens {
                let xs: Vec<BlockQ8K> = (0..nt).flat_map(|_| xq.iter().copied()).collect();
                let mut out = vec![f32::NAN; nt];
                B::tile(kq)(&w, &xs, &mut out);
                for (t, &o) in out.iter().enumerate() {
                    assert!(
                        (o as f64 - got as f64).abs() <= tol,
                        "{name} {} nb={nb} nt={nt} t={t}: {o} vs scalar {got} (tol {tol:e})",
                        kq.name
                    );
                }
            }
        }
    }
}

/// The KQ_ROWS-row decode tiles: each row's value bit-identical to the same level's
/// one-row tile on that row alone (so a row's result does not depend on its
/// neighbours or on how a chunk is split), for several row lengths.
fn rows_case<B: KBlock>(seed: u64) {
    let name = B::DTYPE.name();
    let mut rng = Rng(seed);
    let mut tested = 0;
    for nb in [1usize, 2, 3, 6, 7] {
        let w: Vec<B> = random_blocks(&mut rng, KQ_ROWS * nb, false);
        let xq = q8k(&acts(&mut rng, nb));
        for k in levels() {
            let kq = kq::table(k.name);
            let Some(f) = B::rows(kq) else { continue };
            let mut out = [f32::NAN; KQ_ROWS];
            f(&w, &xq, &mut out);
            for (r, &o) in out.iter().enumerate() {
                let one = dot(kq, &w[r * nb..(r + 1) * nb], &xq);
                assert_eq!(
                    o.to_bits(),
                    one.to_bits(),
                    "{name} {} nb={nb} row {r}: {o} vs one-row {one}",
                    kq.name
                );
            }
            tested += 1;
        }
    }
    // The avx512 table has them for q4_K, q5_K and q6_K.
    if kernels::table("avx512").is_some() && B::rows(kq::table("avx512")).is_some() {
        assert!(tested > 0, "{name}: no rows tile tested");
    }
}

/// Unit scales and small activation codes keep every float step exact (all partial
/// sums are integers below 2^24): every level must then equal the integer dot exactly.
fn exact_case<B: KBlock>(seed: u64) {
    let name = B::DTYPE.name();
    let mut rng = Rng(seed);
    for nb in [1usize, 3, 4] {
        let w: Vec<B> = random_blocks(&mut rng, nb, true);
        let xq: Vec<BlockQ8K> = (0..nb)
            .map(|_| {
                let mut y = BlockQ8K {
                    d: 1.0,
                    ..Default::default()
                };
                for q in &mut y.qs {
                    *q = (rng.next() % 7) as i8 - 3;
                }
                for (j, s) in y.bsums.iter_mut().enumerate() {
                    *s = y.qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
                }
                y
            })
            .collect();
        let (exact, _) = exact_dot(&w, &xq);
        for k in levels() {
            let kq = kq::table(k.name);
            let mut out = [f32::NAN];
            B::tile(kq)(&w, &xq, &mut out);
            assert_eq!(
                out[0] as f64, exact,
                "{name} {} nb={nb}: not exact",
                kq.name
            );
        }
    }
}

/// One dot product through a table's tile.
fn dot<B: KBlock>(k: &KqKernels, w: &[B], x: &[BlockQ8K]) -> f32 {
    let mut out = [0.0f32];
    B::tile(k)(w, x, &mut out);
    out[0]
}

#[test]
fn dot_q2_k() {
    dot_case::<BlockQ2K>(21);
    exact_case::<BlockQ2K>(22);
}

#[test]
fn dot_q3_k() {
    dot_case::<BlockQ3K>(31);
    exact_case::<BlockQ3K>(32);
}

#[test]
fn rows_q4_k() {
    rows_case::<BlockQ4K>(410);
}

#[test]
fn dot_q4_k() {
    dot_case::<BlockQ4K>(41);
    exact_case::<BlockQ4K>(42);
}

#[test]
fn rows_q5_k() {
    rows_case::<BlockQ5K>(510);
}

#[test]
fn dot_q5_k() {
    dot_case::<BlockQ5K>(51);
    exact_case::<BlockQ5K>(52);
}

#[test]
fn rows_q6_k() {
    rows_case::<BlockQ6K>(610);
}

#[test]
fn dot_q6_k() {
    dot_case::<BlockQ6K>(61);
    exact_case::<BlockQ6K>(62);
}

/// The scalar twin is ggml's generic code: a hand-made q6_K block with every code 33
/// (q - 32 = 1), scale 2, d = 0.5 against activations of d = 0.25, codes 4:
/// 256 * (1 * 2 * 4) * 0.5 * 0.25 = 256.
#[test]
fn hand_computed_q6_k() {
    // Low nibble 1, high bits 2 (0b10 << 4 = 32): 33 everywhere.
    let b = BlockQ6K {
        ql: [0x11; 128],
        qh: [0b1010_1010; 64],
        scales: [2; 16],
        d: f16::from_f32(0.5),
    };
    let mut y = BlockQ8K {
        d: 0.25,
        ..Default::default()
    };
    y.qs = [4; 256];
    y.bsums = [64; 16];
    for k in levels() {
        assert_eq!(kq::table(k.name).dot_q6_k(&[b], &[y]), 256.0, "{}", k.name);
    }
}

fn random_k_matrix(rng: &mut Rng, dtype: GgmlType, rows: usize, nb: usize) -> Vec<u16> {
    let bytes: Vec<u8> = match dtype {
        GgmlType::Q2K => {
            bytemuck::cast_slice(&random_blocks::<BlockQ2K>(rng, rows * nb, false)).to_vec()
        }
        GgmlType::Q3K => {
            bytemuck::cast_slice(&random_blocks::<BlockQ3K>(rng, rows * nb, false)).to_vec()
        }
        GgmlType::Q4K => {
            bytemuck::cast_slice(&random_blocks::<BlockQ4K>(rng, rows * nb, false)).to_vec()
        }
        GgmlType::Q5K => {
            bytemuck::cast_slice(&random_blocks::<BlockQ5K>(rng, rows * nb, false)).to_vec()
        }
        _ => bytemuck::cast_slice(&random_blocks::<BlockQ6K>(rng, rows * nb, false)).to_vec(),
    };
    // 2-aligned storage, as QMatrix needs for the f16 fields.
    bytes
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn matmul_matches_naive_loop() {
    let mut rng = Rng(7);
    for dtype in [
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ] {
        // Over the parallel threshold with ragged chunks, and tiny.
        for (rows, cols) in [(203, 512), (5, 256), (64, 1024)] {
            let nb = cols / QK_K;
            let data = random_k_matrix(&mut rng, dtype, rows, nb);
            let bytes: &[u8] = bytemuck::cast_slice(&data);
            let w = QMatrix::new("test", dtype, rows, cols, bytes).unwrap();
            let mut wf = vec![0f32; rows * cols];
            dequantize(dtype, bytes, &mut wf).unwrap();
            for n_tok in [1usize, 2, 3, 8, 9, 17] {
                let x: Vec<f32> = (0..n_tok * cols).map(|_| rng.f()).collect();
                // Naive: dequantized weights times dequantized q8_K activations, in f64.
                let mut want = vec![(0.0f64, 0.0f64); n_tok * rows];
                for t in 0..n_tok {
                    let mut xd = vec![0f32; cols];
                    dequantize_row_q8_k(&q8k(&x[t * cols..(t + 1) * cols]), &mut xd);
                    for r in 0..rows {
                        let wr = &wf[r * cols..(r + 1) * cols];
                        want[t * rows + r] =
                            wr.iter().zip(&xd).fold((0.0, 0.0), |(s, m), (&a, &b)| {
                                (s + a as f64 * b as f64, m + (a as f64 * b as f64).abs())
                            });
                    }
                }
                for threads in [1usize, 2] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    for k in levels() {
                        // max_tokens 5 < 8, 9, 17: activations are quantized in rounds.
                        let mut scratch = MatmulScratch::new(5, cols);
                        let mut y = vec![f32::NAN; n_tok * rows];
                        pool.install(|| matmul_with(k, &w, &x, &mut y, n_tok, &mut scratch));
                        for (i, (&g, &(e, mag))) in y.iter().zip(&want).enumerate() {
                            let tol = 2e-5 * mag + 1e-30;
                            assert!(
                                (g as f64 - e).abs() <= tol,
                                "{dtype} {} {rows}x{cols} n_tok={n_tok} threads={threads}: y[{i}] = {g}, naive {e}",
                                k.name
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The direct entry (`kq::matmul_with`) equals the one through `qwen::matmul`, and a
/// non-finite activation gives NaN outputs instead of a rounded code.
#[test]
fn kq_entry_and_non_finite() {
    let mut rng = Rng(9);
    let (rows, cols, n_tok) = (37, 768, 3);
    let data = random_k_matrix(&mut rng, GgmlType::Q5K, rows, cols / QK_K);
    let bytes: &[u8] = bytemuck::cast_slice(&data);
    let w = QMatrix::new("t", GgmlType::Q5K, rows, cols, bytes).unwrap();
    let mut x: Vec<f32> = (0..n_tok * cols).map(|_| rng.f()).collect();
    for k in levels() {
        let mut a = vec![0f32; n_tok * rows];
        let mut b = vec![0f32; n_tok * rows];
        matmul_with(k, &w, &x, &mut a, n_tok, &mut MatmulScratch::new(4, cols));
        let kq = kq::table(k.name);
        kq::matmul_with(
            kq,
            &w,
            &x,
            &mut b,
            n_tok,
            &mut KqScratch::new(2, cols),
            true,
        );
        assert_eq!(a, b, "{}", k.name);
    }
    x[cols + 5] = f32::INFINITY;
    let mut y = vec![0f32; n_tok * rows];
    kq::matmul(&w, &x, &mut y, n_tok, &mut KqScratch::new(4, cols));
    assert!(y.iter().all(|v| v.is_nan()));
}

#[test]
fn qmatrix_k_shapes() {
    let data = vec![0u16; 144 * 3 / 2];
    let bytes: &[u8] = bytemuck::cast_slice(&data);
    assert!(QMatrix::new("a", GgmlType::Q4K, 3, 256, bytes).is_ok());
    let e = QMatrix::new("blk.0.ffn_down", GgmlType::Q4K, 1, 300, bytes).unwrap_err();
    assert!(
        e.contains("blk.0.ffn_down") && e.contains("300") && e.contains("256"),
        "{e}"
    );
    let e = QMatrix::new("a", GgmlType::Q6K, 2, 256, bytes).unwrap_err();
    assert!(e.contains("420") && e.contains("432"), "{e}");
}

/// The C generator of the ggml golden driver: a 64-bit LCG, values (s >> 40) / 2^24 - 0.5.
struct Lcg(u64);
impl Lcg {
    fn f(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u32 << 24) as f32 - 0.5
    }
}

/// ggml's own numbers (the vendored llama.cpp 0.3.36 build, x86-64 with AVX-512): a
/// throwaway C driver quantized 16 rows x 2048 of the `Lcg(12345)` data below with
/// `ggml_quantize_chunk` (no imatrix), the activations with the type's `from_float`
/// (q8_K) and called the type's `vec_dot` per row. Kept here: (ggml type tag, FNV-1a 64
/// of the quantized weights, the 16 dot products as f32 bits). Our quantizer must give
/// the same bytes and every kernel level the same dots up to float summation order.
const GGML_VEC_DOT: &[(u32, u64, [u32; 16])] = &[
    (
        10,
        0x72b602b2a9e5b604,
        [
            0xc30c079e, 0xc34fdad6, 0xc2efeadc, 0x4203d13a, 0xc2d0d1fe, 0x431c96a3, 0x439172d0,
            0x4333bb59, 0x41c68160, 0x42830901, 0xc31c5576, 0x43403c20, 0x42ec90ee, 0x42906910,
            0x422215d0, 0x43156cd2,
        ],
    ),
    (
        11,
        0x8e44301c51200cd7,
        [
            0xc31b85bb, 0xc350af3d, 0xc2b34ae2, 0xc2451327, 0xc3071fa6, 0x42c0b0b4, 0x4391319a,
            0x433e5a7d, 0xc12736d8, 0xc181f4f4, 0xc30c3484, 0x43711894, 0x42eb840d, 0x4236cdb2,
            0x40d648b0, 0x43164596,
        ],
    ),
    (
        12,
        0xfbe5ac70482ffd4a,
        [
            0xc32f6376, 0xc34d8d02, 0xc29e6d84, 0xc216d17a, 0xc2bb1023, 0x42d67717, 0x43899702,
            0x432d500d, 0x4137ab28, 0x41d29bd2, 0xc3274d66, 0x435867d0, 0x42ecb6a4, 0x427a6efc,
            0xc1b2b0a0, 0x43161ef0,
        ],
    ),
    (
        13,
        0xb677267aae6eed09,
        [
            0xc3361c02, 0xc34b4181, 0xc2c90634, 0xc1da3be0, 0xc2cd1f0c, 0x42eb6216, 0x438b40b3,
            0x43293e73, 0x417072fc, 0x412a9a36, 0xc327c7bd, 0x435cea33, 0x42e21c2e, 0x427a0854,
            0xc1b20868, 0x43130f67,
        ],
    ),
    (
        14,
        0x15b249851f5c40a4,
        [
            0xc334d276, 0xc3475537, 0xc2d0f6c4, 0xc1e60374, 0xc2d18864, 0x42e1bd0b, 0x4389b6f7,
            0x4325c001, 0x41260250, 0x4186e9f0, 0xc325244c, 0x435b08f6, 0x42ebc9c5, 0x42809f76,
            0xc1b8ad20, 0x43133658,
        ],
    ),
];

fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

#[test]
fn matches_ggml_vec_dot() {
    let (rows, cols) = (16usize, 2048usize);
    let mut g = Lcg(12345);
    // As the C driver: weights first, then activations; f32 arithmetic in the same order.
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| g.f() * (1 + (i / 256 % 7)) as f32)
        .collect();
    let x: Vec<f32> = (0..cols)
        .map(|i| g.f() * 3.0 * (1 + (i / 256 % 5)) as f32)
        .collect();
    for &(tag, hash, ref bits) in GGML_VEC_DOT {
        let dtype = GgmlType::from_tag(tag).unwrap();
        let q = quant_formats::reference::quantize(dtype, &w).unwrap();
        assert_eq!(
            fnv1a64(&q),
            hash,
            "{dtype}: quantized bytes differ from ggml's"
        );
        let al: Vec<u16> = q
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let m = QMatrix::new("w", dtype, rows, cols, bytemuck::cast_slice(&al)).unwrap();
        let want: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        for k in levels() {
            let mut y = vec![0f32; rows];
            let kq = kq::table(k.name);
            kq::matmul_with(kq, &m, &x, &mut y, 1, &mut KqScratch::new(1, cols), false);
            for (r, (&o, &e)) in y.iter().zip(&want).enumerate() {
                assert!(
                    (o - e).abs() <= 1e-6 * scale,
                    "{dtype} {}: row {r}: {o} vs ggml {e}",
                    k.name
                );
            }
        }
    }
}

/// A multi-matrix call mixing K and other types (q, k, v of a Q4_K_M file: q5_0, q6_K;
/// here also f16 and a second K type) gives
/// what one call per matrix gives, bit for bit, and leaves the output list intact.
#[test]
fn multi_matrix_call_with_k_types() {
    use qwen::matmul::matmul_multi_with;
    let mut rng = Rng(13);
    let cols = 512;
    let kdata = random_k_matrix(&mut rng, GgmlType::Q6K, 24, cols / QK_K);
    let wf: Vec<f32> = (0..40 * cols).map(|_| rng.f()).collect();
    let q50 = quant_formats::reference::quantize(GgmlType::Q5_0, &wf).unwrap();
    let q50: Vec<u16> = q50
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let f16s: Vec<f16> = wf[..8 * cols].iter().map(|&v| f16::from_f32(v)).collect();
    let a = QMatrix::new("a", GgmlType::Q5_0, 40, cols, bytemuck::cast_slice(&q50)).unwrap();
    let b = QMatrix::new("b", GgmlType::Q6K, 24, cols, bytemuck::cast_slice(&kdata)).unwrap();
    let c = QMatrix::new("c", GgmlType::F16, 8, cols, bytemuck::cast_slice(&f16s)).unwrap();
    let ddata = random_k_matrix(&mut rng, GgmlType::Q4K, 12, cols / QK_K);
    let d = QMatrix::new("d", GgmlType::Q4K, 12, cols, bytemuck::cast_slice(&ddata)).unwrap();
    for n_tok in [1usize, 5, 20] {
        let x: Vec<f32> = (0..n_tok * cols).map(|_| rng.f()).collect();
        for k in levels() {
            let mut scratch = MatmulScratch::new(32, cols);
            let (mut ya, mut yb, mut yc, mut yd) = (
                vec![0f32; n_tok * 40],
                vec![0f32; n_tok * 24],
                vec![0f32; n_tok * 8],
                vec![0f32; n_tok * 12],
            );
            let mut ys: [&mut [f32]; 4] = [&mut ya, &mut yb, &mut yc, &mut yd];
            matmul_multi_with(k, &[&a, &b, &c, &d], &x, &mut ys, n_tok, &mut scratch);
            assert_eq!(
                ys.iter().map(|y| y.len()).collect::<Vec<_>>(),
                [n_tok * 40, n_tok * 24, n_tok * 8, n_tok * 12]
            );
            for (w, y) in [(&a, &ya), (&b, &yb), (&c, &yc), (&d, &yd)] {
                let mut want = vec![0f32; y.len()];
                matmul_with(k, w, &x, &mut want, n_tok, &mut scratch);
                assert_eq!(y, &want, "{} {} n_tok={n_tok}", w.dtype, k.name);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// K GEMM (prefill, 4 rows x 16 tokens): unpackers and GEMMs of every level that has
// one equal the scalar twin bit for bit; the twin equals the exact integer
// decomposition up to float summation order; the matmul through the GEMM path equals
// a naive loop.

/// Unpacked rows owning their storage.
struct Unpacked {
    q: Vec<u8>,
    sc: Vec<i32>,
    mw: Vec<i32>,
    d: Vec<f32>,
    dmin: Vec<f32>,
}

impl Unpacked {
    fn new(n: usize) -> Self {
        Self {
            q: vec![0xAA; n * QK_K],
            sc: vec![-7; n * 16],
            mw: vec![-7; n * 8],
            d: vec![f32::NAN; n],
            dmin: vec![f32::NAN; n],
        }
    }
    fn rows(&mut self) -> KGemmRows<'_> {
        KGemmRows {
            q: &mut self.q,
            sc: &mut self.sc,
            mw: &mut self.mw,
            d: &mut self.d,
            dmin: &mut self.dmin,
        }
    }
    /// Equal arrays (the floats by their bits).
    fn same(&self, o: &Unpacked) -> bool {
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        self.q == o.q
            && self.sc == o.sc
            && self.mw == o.mw
            && bits(&self.d) == bits(&o.d)
            && bits(&self.dmin) == bits(&o.dmin)
    }
}

/// The GEMM levels to test against the scalar twin (those this CPU has).
fn gemm_levels() -> Vec<(&'static str, &'static KqGemm)> {
    let v: Vec<_> = kernels::available()
        .into_iter()
        .filter_map(|l| kq::gemm_table(l).map(|g| (l, g)))
        .collect();
    if v.is_empty() {
        eprintln!("no K GEMM level on this CPU/build: only the scalar twin is tested");
    }
    v
}

/// A token block of `tn` tokens of q8_K activations for `nb` super-blocks: (the
/// token-major blocks [tn, nb], the GEMM layout [nb]).
fn gemm_block(rng: &mut Rng, nb: usize, tn: usize) -> (Vec<BlockQ8K>, Vec<ActKGemm>) {
    let xq: Vec<BlockQ8K> = (0..tn).flat_map(|_| q8k(&acts(rng, nb))).collect();
    let mut gx = vec![ActKGemm::default(); nb];
    kq::kgemm_acts(&xq, tn, &mut gx);
    (xq, gx)
}

fn gemm_case<B: KBlock>(seed: u64) {
    let name = B::DTYPE.name();
    let mut rng = Rng(seed);
    let twin = B::gemm(&kq_generic::GEMM);
    for nb in [1usize, 2, 3, 5] {
        let w: Vec<B> = random_blocks(&mut rng, KQ_GEMM_ROWS * nb, false);
        let mut want = Unpacked::new(KQ_GEMM_ROWS * nb);
        (twin.unpack)(&w, &mut want.rows());
        for tn in [1usize, 2, 7, 15, 16] {
            let (xq, gx) = gemm_block(&mut rng, nb, tn);
            let mut out = vec![f32::NAN; KQ_GEMM_ROWS * KQ_GEMM_TOKENS];
            (twin.gemm)(&want.rows(), &gx, &mut out);
            for t in 0..KQ_GEMM_TOKENS {
                for r in 0..KQ_GEMM_ROWS {
                    let o = out[t * KQ_GEMM_ROWS + r];
                    if t >= tn {
                        assert_eq!(o, 0.0, "{name} padding token {t}");
                        continue;
                    }
                    let wr = &w[r * nb..(r + 1) * nb];
                    let (exact, mag) = exact_dot(wr, &xq[t * nb..(t + 1) * nb]);
                    let tol = 1e-5 * mag + 1e-30;
                    assert!(
                        (o as f64 - exact).abs() <= tol,
                        "{name} twin nb={nb} tn={tn} r={r} t={t}: {o} vs exact {exact}"
                    );
                }
            }
            for (level, g) in gemm_levels() {
                let mut got = Unpacked::new(KQ_GEMM_ROWS * nb);
                (B::gemm(g).unpack)(&w, &mut got.rows());
                assert!(got.same(&want), "{name} {level} nb={nb}: unpack");
                let mut o = vec![f32::NAN; out.len()];
                (B::gemm(g).gemm)(&got.rows(), &gx, &mut o);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&o), bits(&out), "{name} {level} nb={nb} tn={tn}");
            }
            // Two token blocks in one call (a full one, then this one): each block as
            // the one-block twin gives it, bit for bit.
            let (_, first) = gemm_block(&mut rng, nb, KQ_GEMM_TOKENS);
            let mut want2 = vec![f32::NAN; 2 * out.len()];
            (twin.gemm)(&want.rows(), &first, &mut want2[..out.len()]);
            want2[out.len()..].copy_from_slice(&out);
            let pair: Vec<ActKGemm> = first.iter().chain(&gx).copied().collect();
            let mut all = vec![("scalar", &kq_generic::GEMM)];
            all.extend(gemm_levels());
            for (level, g) in all {
                let mut u = Unpacked::new(KQ_GEMM_ROWS * nb);
                (B::gemm(g).unpack)(&w, &mut u.rows());
                let mut o = vec![f32::NAN; want2.len()];
                (B::gemm(g).gemm)(&u.rows(), &pair, &mut o);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&o),
                    bits(&want2),
                    "{name} {level} nb={nb} tn={tn}: 2 blocks"
                );
            }
        }
    }
    // Unit scales, small activation codes: every float step is exact, so the GEMM
    // equals the integer dot exactly.
    let nb = 3;
    let w: Vec<B> = random_blocks(&mut rng, KQ_GEMM_ROWS * nb, true);
    let xq: Vec<BlockQ8K> = (0..KQ_GEMM_TOKENS * nb)
        .map(|_| {
            let mut y = BlockQ8K {
                d: 1.0,
                ..Default::default()
            };
            for q in &mut y.qs {
                *q = (rng.next() % 7) as i8 - 3;
            }
            for (j, s) in y.bsums.iter_mut().enumerate() {
                *s = y.qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
            }
            y
        })
        .collect();
    let mut gx = vec![ActKGemm::default(); nb];
    kq::kgemm_acts(&xq, KQ_GEMM_TOKENS, &mut gx);
    let mut all = vec![("scalar", &kq_generic::GEMM)];
    all.extend(gemm_levels());
    for (level, g) in all {
        let mut u = Unpacked::new(KQ_GEMM_ROWS * nb);
        (B::gemm(g).unpack)(&w, &mut u.rows());
        let mut out = vec![f32::NAN; KQ_GEMM_ROWS * KQ_GEMM_TOKENS];
        (B::gemm(g).gemm)(&u.rows(), &gx, &mut out);
        for t in 0..KQ_GEMM_TOKENS {
            for r in 0..KQ_GEMM_ROWS {
                let (exact, _) = exact_dot(&w[r * nb..(r + 1) * nb], &xq[t * nb..(t + 1) * nb]);
                assert_eq!(
                    out[t * KQ_GEMM_ROWS + r] as f64,
                    exact,
                    "{name} {level} r={r} t={t}: not exact"
                );
            }
        }
    }
}

#[test]
fn gemm_q2_k() {
    gemm_case::<BlockQ2K>(31);
}

#[test]
fn gemm_q3_k() {
    gemm_case::<BlockQ3K>(32);
}

#[test]
fn gemm_q4_k() {
    gemm_case::<BlockQ4K>(33);
}

#[test]
fn gemm_q5_k() {
    gemm_case::<BlockQ5K>(34);
}

#[test]
fn gemm_q6_k() {
    gemm_case::<BlockQ6K>(35);
}

/// Extreme codes: every weight code at its maximum and every activation at -128 / 127
/// (the bounds the SIMD partial sums are sized for) through the twin and each level.
#[test]
fn gemm_extreme_codes() {
    let nb = 2;
    let xq: Vec<BlockQ8K> = (0..KQ_GEMM_TOKENS * nb)
        .map(|i| {
            let v: i8 = if i % 2 == 0 { -128 } else { 127 };
            BlockQ8K {
                d: 0.5,
                qs: [v; QK_K],
                bsums: [16 * v as i16; 16],
            }
        })
        .collect();
    let mut gx = vec![ActKGemm::default(); nb];
    kq::kgemm_acts(&xq, KQ_GEMM_TOKENS, &mut gx);
    fn check<B: KBlock>(w: &[B], xq: &[BlockQ8K], gx: &[ActKGemm]) {
        let nb = gx.len();
        let mut all = vec![("scalar", &kq_generic::GEMM)];
        all.extend(gemm_levels());
        for (level, g) in all {
            let mut u = Unpacked::new(KQ_GEMM_ROWS * nb);
            (B::gemm(g).unpack)(w, &mut u.rows());
            let mut out = vec![f32::NAN; KQ_GEMM_ROWS * KQ_GEMM_TOKENS];
            (B::gemm(g).gemm)(&u.rows(), gx, &mut out);
            for t in 0..KQ_GEMM_TOKENS {
                for r in 0..KQ_GEMM_ROWS {
                    let (e, mag) = exact_dot(&w[r * nb..(r + 1) * nb], &xq[t * nb..(t + 1) * nb]);
                    let o = out[t * KQ_GEMM_ROWS + r] as f64;
                    assert!(
                        (o - e).abs() <= 1e-6 * mag,
                        "{} {level} r={r} t={t}: {o} vs {e}",
                        B::DTYPE
                    );
                }
            }
        }
    }
    // All-ones bytes: the largest code of every type; scale bytes 0xFF give the
    // largest 6-bit scales / mins (q6_K: scale -1, so also the most negative codes).
    fn ones<B: KBlock>(n: usize) -> Vec<B> {
        let mut w = vec![B::default(); n];
        bytemuck::cast_slice_mut::<B, u8>(&mut w).fill(0xFF);
        let mut rng = Rng(1);
        for b in &mut w {
            b.fix_scales(&mut rng, true);
        }
        w
    }
    check(&ones::<BlockQ2K>(KQ_GEMM_ROWS * nb), &xq, &gx);
    check(&ones::<BlockQ3K>(KQ_GEMM_ROWS * nb), &xq, &gx);
    check(&ones::<BlockQ4K>(KQ_GEMM_ROWS * nb), &xq, &gx);
    check(&ones::<BlockQ5K>(KQ_GEMM_ROWS * nb), &xq, &gx);
    let mut w = ones::<BlockQ6K>(KQ_GEMM_ROWS * nb);
    for b in &mut w {
        b.scales = [-128i8 as u8 as i8; 16];
        b.scales[1] = 127;
    }
    check(&w, &xq, &gx);
}

/// The matmul through the GEMM path (16+ tokens per round) against a naive loop: odd
/// token counts (a padded last block, rounds of 16 and 32), rows not a multiple of 4
/// (the chunks' last rows through the tiles), several super-blocks, 1 and 2 threads;
/// and the GEMM path against the same call forced through the tiles (rounds of 8).
#[test]
fn gemm_matmul_matches_naive_loop() {
    let mut rng = Rng(17);
    for dtype in [
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ] {
        for (rows, cols) in [(203, 768), (6, 256)] {
            let nb = cols / QK_K;
            let data = random_k_matrix(&mut rng, dtype, rows, nb);
            let bytes: &[u8] = bytemuck::cast_slice(&data);
            let w = QMatrix::new("test", dtype, rows, cols, bytes).unwrap();
            let mut wf = vec![0f32; rows * cols];
            dequantize(dtype, bytes, &mut wf).unwrap();
            for n_tok in [16usize, 17, 31, 40, 50] {
                let x: Vec<f32> = (0..n_tok * cols).map(|_| rng.f()).collect();
                let mut want = vec![(0.0f64, 0.0f64); n_tok * rows];
                for t in 0..n_tok {
                    let mut xd = vec![0f32; cols];
                    dequantize_row_q8_k(&q8k(&x[t * cols..(t + 1) * cols]), &mut xd);
                    for r in 0..rows {
                        let wr = &wf[r * cols..(r + 1) * cols];
                        want[t * rows + r] =
                            wr.iter().zip(&xd).fold((0.0, 0.0), |(s, m), (&a, &b)| {
                                (s + a as f64 * b as f64, m + (a as f64 * b as f64).abs())
                            });
                    }
                }
                for threads in [1usize, 2] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    for k in levels() {
                        for max_tokens in [16usize, 32] {
                            let mut scratch = MatmulScratch::new(max_tokens, cols);
                            let mut y = vec![f32::NAN; n_tok * rows];
                            pool.install(|| matmul_with(k, &w, &x, &mut y, n_tok, &mut scratch));
                            for (i, (&g, &(e, mag))) in y.iter().zip(&want).enumerate() {
                                let tol = 2e-5 * mag + 1e-30;
                                assert!(
                                    (g as f64 - e).abs() <= tol,
                                    "{dtype} {} {rows}x{cols} n_tok={n_tok} max_tokens={max_tokens} threads={threads}: y[{i}] = {g}, naive {e}",
                                    k.name
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Each level's q8_K quantizer equals the reference (`quantize_row_q8_k`) byte for
/// byte: random blocks, a zero block, ties at .5 (iscale 1 and -1), +m and -m both
/// present in either order (the first sets the sign), huge and tiny values.
#[test]
fn quantizer_matches_reference() {
    let mut rng = Rng(41);
    let mut x: Vec<f32> = Vec::new();
    for case in 0..12 {
        let mut b: Vec<f32> = (0..QK_K).map(|_| rng.f() * 3.0).collect();
        match case {
            1 => b.fill(0.0),
            2 | 3 => {
                // max = -127 or 127: iscale = 1 or -1, every half-integer a tie.
                for (i, v) in b.iter_mut().enumerate() {
                    *v = ((i as i32 % 255) - 127) as f32 + 0.5 * (i % 2) as f32;
                    *v = v.clamp(-126.5, 126.5);
                }
                b[17] = if case == 2 { -127.0 } else { 127.0 };
            }
            4 => {
                b[3] = 5.0;
                b[200] = -5.0;
            }
            5 => {
                b[3] = -5.0;
                b[200] = 5.0;
            }
            6 => b.iter_mut().for_each(|v| *v *= 1e30),
            7 => b.iter_mut().for_each(|v| *v *= 1e-30),
            8 => {
                b.fill(-0.0);
                b[255] = 1e-3;
            }
            _ => {}
        }
        x.extend(b);
    }
    let nb = x.len() / QK_K;
    let mut want = vec![BlockQ8K::default(); nb];
    quantize_row_q8_k(&x, &mut want);
    for level in kernels::available() {
        let mut got = vec![BlockQ8K::default(); nb];
        kq::quantizer(level)(&x, &mut got);
        for (b, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                bytemuck::bytes_of(g) == bytemuck::bytes_of(w),
                "{level} block {b}: {g:?} vs reference {w:?}"
            );
        }
    }
}
