//! K-quant weights (q2_K, q3_K, q4_K, q5_K, q6_K): `y = x · Wᵀ` against activations quantized to
//! ggml's q8_K (256-value blocks, f32 scale, i16 sums of each 16 codes), as ggml does.
//!
//! - `kq_generic.rs`: the scalar twin, ggml's `ggml_vec_dot_q4_K_q8_K_generic` etc.
//!   line by line (same integer sums, same float order); the spec.
//! - `kq_x86.rs`: AVX2 (`maddubs` + `madd` with the sub-block scales) and AVX-512 VNNI
//!   (`vpdpbusd` then `vpdpwssd` with the scales).
//! - `kq_aarch64.rs`: NEON + dotprod (`sdot`, scales in i32 lanes).
//!
//! Every level computes each super-block's integer sums exactly as the scalar twin
//! does; they differ from it only in the order the per-super-block float products
//! are added. The level follows the runtime's kernel level (`crate::kernels::level()`,
//! so `QWEN_KERNELS` / `select` force it here too).
//!
//! The activation quantizer is `quant_formats::reference::quantize_row_q8_k`, ggml's
//! `quantize_row_q8_K_ref`, which is what ggml's x86 and generic builds use too (at
//! the avx512 level an AVX-512 copy of it, equal byte for byte: [`quantizer`]).
//!
//! Prefill (16+ tokens per round) at a level with a K GEMM ([`gemm_table`]: avx512) goes
//! through it instead of the tiles: per chunk of rows, [`KQ_GEMM_ROWS`] rows are
//! unpacked once ([`KGemmRows`]: codes as bytes in element order, scales and offsets
//! as ints) and run against the round's activations laid out in blocks of 16 tokens
//! ([`ActKGemm`]), 32 tokens per call; each broadcast weight word feeds 8 `vpdpbusd`.
//! Its scalar twin is `kq_generic::GEMM` (same integers as the tiles, its own float
//! order: one fused multiply-add per super-block and token).

use super::par::MAX_OUTPUTS;
use crate::kernels::{for_each_row_chunk_multi, RowChunkOut};
use crate::matmul::QMatrix;
use quant_formats::block::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QK_K};
use quant_formats::reference::quantize_row_q8_k;
use quant_formats::GgmlType;
use rayon::prelude::*;

/// Most tokens any K tile takes in one call.
pub const MAX_KQ_TILE_TOKENS: usize = 8;

/// The weight types this module multiplies.
pub const KQ_TYPES: &[GgmlType] = &[
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// A K tile: one weight row against `out.len()` tokens of activations.
///
/// `w`: [nb] super-blocks of one weight row; `x`: [out.len(), nb] q8_K blocks
/// (token-major); `out[t] = dot(w, x[t])`. Requires `1 <= out.len() <= tile_tokens`
/// and `x.len() == nb * out.len()` (checked; a violation panics, it is a bug).
pub type KqTileFn<W> = fn(w: &[W], x: &[BlockQ8K], out: &mut [f32]);

/// Weight rows a [`KqRowsFn`] takes.
pub const KQ_ROWS: usize = 4;

/// A K decode tile: [`KQ_ROWS`] weight rows against one token, the token's
/// activations loaded once for all of them. `w`: [KQ_ROWS, nb], `x`: [nb],
/// `out[r] = dot(w[r], x)`, each bit-identical to the level's one-row [`KqTileFn`]
/// (checked; a violation of the shapes panics, it is a bug).
pub type KqRowsFn<W> = fn(w: &[W], x: &[BlockQ8K], out: &mut [f32; KQ_ROWS]);

/// One instruction-set level's K-quant kernels.
#[derive(Debug)]
pub struct KqKernels {
    /// "scalar" | "avx2" | "avx512" | "neon": the runtime level this table serves.
    pub name: &'static str,
    /// Most tokens one tile call handles (<= [`MAX_KQ_TILE_TOKENS`]).
    pub tile_tokens: usize,
    pub q2_k: KqTileFn<BlockQ2K>,
    pub q3_k: KqTileFn<BlockQ3K>,
    pub q4_k: KqTileFn<BlockQ4K>,
    pub q5_k: KqTileFn<BlockQ5K>,
    pub q6_k: KqTileFn<BlockQ6K>,
    /// Decode tiles of [`KQ_ROWS`] rows where the level has them (else one row at a time).
    pub q4_k_rows: Option<KqRowsFn<BlockQ4K>>,
    pub q5_k_rows: Option<KqRowsFn<BlockQ5K>>,
    pub q6_k_rows: Option<KqRowsFn<BlockQ6K>>,
}

/// The K table of a runtime kernel level (as named by `crate::kernels::LEVELS`):
/// the level's own kernels when this build has them and this CPU supports them,
/// else the scalar twin.
pub fn table(level: &str) -> &'static KqKernels {
    let t = match level {
        #[cfg(target_arch = "x86_64")]
        "avx2" => super::kq_x86::avx2(),
        #[cfg(target_arch = "x86_64")]
        "avx512" => super::kq_x86::avx512(),
        #[cfg(target_arch = "aarch64")]
        "neon" => super::kq_aarch64::neon(),
        _ => None,
    };
    t.unwrap_or(&super::kq_generic::SCALAR)
}

/// The K table of the kernel level in use.
pub fn active() -> &'static KqKernels {
    table(super::level())
}

/// Tokens per K GEMM token block (the 16 i32 lanes of a 512-bit vector).
pub const KQ_GEMM_TOKENS: usize = 16;

/// Weight rows per K GEMM call.
pub const KQ_GEMM_ROWS: usize = 4;

/// Most super-blocks per row the K GEMM takes (its unpacked rows live on the stack:
/// ~90 KB); wider rows go through the tiles.
pub const MAX_KQ_GEMM_BLOCKS: usize = 64;

/// One q8_K super-block of [`KQ_GEMM_TOKENS`] tokens laid out for the K GEMM, which
/// broadcasts 4 weight codes against 16 tokens at a time:
/// - `q[c][4 * t + j]` = activation code `4c + j` of token `t`;
/// - `bs16[k][t]` = token t's `bsums[2k]` (low i16) and `bsums[2k + 1]` (high i16):
///   the sums of its codes 32k..32k+16 and 32k+16..32k+32;
/// - `bs32[k][t]` = the sums of its codes 64k..64k+32 (low) and 64k+32..64k+64 (high)
///   (each |.| <= 32 * 128, an i16);
/// - `d[t]` = token t's q8_K scale.
///
/// Padding tokens of a partial block are all zero (codes, sums and scale).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ActKGemm {
    pub q: [[i8; 64]; 64],
    pub bs16: [[i32; 16]; 8],
    pub bs32: [[i32; 16]; 4],
    pub d: [f32; 16],
}
const _: () = assert!(std::mem::size_of::<ActKGemm>() == 4928);

impl Default for ActKGemm {
    fn default() -> Self {
        bytemuck::Zeroable::zeroed()
    }
}

/// Two i16 in one i32 word: `lo` in the low half, `hi` in the high half.
#[inline]
pub fn pair16(lo: i16, hi: i16) -> i32 {
    (lo as u16 as u32 | (hi as u16 as u32) << 16) as i32
}

/// Builds token block `x` ([nb] of [`ActKGemm`]) from `nt` tokens of q8_K activations
/// `acts` ([nt, nb]); tokens past `nt` are zero. Panics (a bug) if `nt` is not in
/// 1..=16 or the lengths do not fit.
pub fn kgemm_acts(acts: &[BlockQ8K], nt: usize, x: &mut [ActKGemm]) {
    let nb = x.len();
    assert!(
        (1..=KQ_GEMM_TOKENS).contains(&nt) && acts.len() == nt * nb,
        "kgemm_acts: {} blocks for {nt} tokens x {nb}",
        acts.len()
    );
    for (b, xb) in x.iter_mut().enumerate() {
        if nt < KQ_GEMM_TOKENS {
            *xb = ActKGemm::default();
        }
        for t in 0..nt {
            let y = &acts[t * nb + b];
            for (c, q) in xb.q.iter_mut().enumerate() {
                q[4 * t..4 * t + 4].copy_from_slice(&y.qs[4 * c..4 * c + 4]);
            }
            let s = &y.bsums;
            for k in 0..8 {
                xb.bs16[k][t] = pair16(s[2 * k], s[2 * k + 1]);
            }
            for k in 0..4 {
                // A q8_K sum of 16 codes is at most 16 * 128: two of them fit an i16.
                let lo = s[4 * k].wrapping_add(s[4 * k + 1]);
                let hi = s[4 * k + 2].wrapping_add(s[4 * k + 3]);
                xb.bs32[k][t] = pair16(lo, hi);
            }
            xb.d[t] = y.d;
        }
    }
}

/// [`KQ_GEMM_ROWS`] weight rows of a K type unpacked for the GEMM, block `i = r * nb +
/// b` (row r, super-block b) at index i of each array:
/// - `q`: [rows * nb, 256] the codes as unsigned bytes in element order (q6_K's `+ 32`
///   and q3_K's `+ 4` offsets kept: they go through `mw`);
/// - `sc`: [rows * nb, 16] the scale of each 16 codes, its low i16 signed (the high
///   half is zero, except q6_K's, which is the sign extension);
/// - `mw`: [rows * nb, 8] i16 pairs weighting the activations' block sums: q4_K /
///   q5_K (the mins of the 8 sub-blocks, against `bs32`, words 0..4), q2_K (its 16
///   mins, against `bs16`), q3_K / q6_K (`-4 * scale` / `-32 * scale`, against `bs16`);
/// - `d`: [rows * nb] the super-block scale; `dmin`: [rows * nb] `-dmin` (q2_K, q4_K,
///   q5_K; 0 for the others, whose `mw` sums join the codes' integer sum).
///
/// The value of super-block i against token t's q8_K block with scale dx is then
/// `d * dx * (isum + [msum]) + dmin * dx * [msum]`, isum = sum over codes of code *
/// activation * scale, msum = sum over `mw` pairs of weight * block sum.
#[derive(Debug)]
pub struct KGemmRows<'a> {
    pub q: &'a mut [u8],
    pub sc: &'a mut [i32],
    pub mw: &'a mut [i32],
    pub d: &'a mut [f32],
    pub dmin: &'a mut [f32],
}

impl KGemmRows<'_> {
    /// Super-blocks held (rows * nb).
    pub fn blocks(&self) -> usize {
        self.d.len()
    }

    /// Panics (a bug) unless every array holds `n` blocks.
    pub fn check(&self, n: usize) {
        assert!(
            self.q.len() == n * 256
                && self.sc.len() == n * 16
                && self.mw.len() == n * 8
                && self.d.len() == n
                && self.dmin.len() == n,
            "KGemmRows: arrays of {} / {} / {} / {} / {} for {n} blocks",
            self.q.len(),
            self.sc.len(),
            self.mw.len(),
            self.d.len(),
            self.dmin.len()
        );
    }
}

/// Unpacks super-blocks `w` ([n]) into `rows` (which holds exactly n blocks).
pub type KUnpackFn<W> = fn(w: &[W], rows: &mut KGemmRows);

/// Most token blocks one [`KGemmFn`] call takes.
pub const MAX_KQ_GEMM_BLOCKS_PER_CALL: usize = 2;

/// GEMM of [`KQ_GEMM_ROWS`] unpacked rows `w` (`nb` super-blocks each) against `n` = 1
/// or 2 token blocks `x` ([n, nb] of [`ActKGemm`]): `out[(j * 16 + t) * 4 + r]` ([n *
/// 16, 4]) = the sum over super-blocks b, in order, of (q2_K / q4_K / q5_K first
/// `acc = fma(f32(msum), dmin * dx, acc)`, then) `acc = fma(f32(isum + [msum]), d * dx,
/// acc)` (see [`KGemmRows`]), with exact integer sums. The scalar twin is
/// `kq_generic::GEMM`; SIMD levels equal it bit for bit. (Only the float order differs
/// from the tiles'.)
pub type KGemmFn = fn(w: &KGemmRows, x: &[ActKGemm], out: &mut [f32]);

/// The unpacker and GEMM of one K type.
#[derive(Debug)]
pub struct KGemmType<W: 'static> {
    pub unpack: KUnpackFn<W>,
    pub gemm: KGemmFn,
}

/// One level's K GEMM kernels.
#[derive(Debug)]
pub struct KqGemm {
    /// Hints bytes into the cache (the next row group's weights, a part before each
    /// GEMM call, so the prefetches spread over the GEMM's time); no effect on results.
    pub prefetch: fn(bytes: &[u8]),
    pub q2_k: KGemmType<BlockQ2K>,
    pub q3_k: KGemmType<BlockQ3K>,
    pub q4_k: KGemmType<BlockQ4K>,
    pub q5_k: KGemmType<BlockQ5K>,
    pub q6_k: KGemmType<BlockQ6K>,
}

/// The K GEMM of a runtime kernel level, if this build and CPU have one (AVX-512 VNNI).
pub fn gemm_table(level: &str) -> Option<&'static KqGemm> {
    match level {
        #[cfg(target_arch = "x86_64")]
        "avx512" => super::kq_x86::gemm_avx512(),
        _ => None,
    }
}

/// The `nb` and token-block count of a [`KGemmFn`] call. Panics (a bug) unless `w`
/// holds `KQ_GEMM_ROWS * nb` blocks, `x` 1 or 2 token blocks of nb and `out` their 16 x
/// 4 values each.
pub fn kgemm_shape(w: &KGemmRows, x: usize, out: usize) -> (usize, usize) {
    let nb = w.blocks() / KQ_GEMM_ROWS;
    let n = out / (KQ_GEMM_ROWS * KQ_GEMM_TOKENS);
    assert!(
        nb > 0
            && (1..=MAX_KQ_GEMM_BLOCKS_PER_CALL).contains(&n)
            && x == n * nb
            && out == n * KQ_GEMM_ROWS * KQ_GEMM_TOKENS,
        "kq gemm: {} unpacked blocks, {x} activation blocks, output of {out} values",
        w.blocks()
    );
    w.check(KQ_GEMM_ROWS * nb);
    (nb, n)
}

impl KqKernels {
    /// Single dot products through the tile kernels (tests, one-token callers).
    pub fn dot_q2_k(&self, w: &[BlockQ2K], x: &[BlockQ8K]) -> f32 {
        dot1(self.q2_k, w, x)
    }
    pub fn dot_q3_k(&self, w: &[BlockQ3K], x: &[BlockQ8K]) -> f32 {
        dot1(self.q3_k, w, x)
    }
    pub fn dot_q4_k(&self, w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
        dot1(self.q4_k, w, x)
    }
    pub fn dot_q5_k(&self, w: &[BlockQ5K], x: &[BlockQ8K]) -> f32 {
        dot1(self.q5_k, w, x)
    }
    pub fn dot_q6_k(&self, w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
        dot1(self.q6_k, w, x)
    }
}

fn dot1<W>(f: KqTileFn<W>, w: &[W], x: &[BlockQ8K]) -> f32 {
    let mut out = [0.0f32];
    f(w, x, &mut out);
    out[0]
}

/// q8_K activations, allocated once at load: room for `max_tokens` rows of
/// `max_cols` values (rounded up to whole super-blocks).
#[derive(Debug, Clone)]
pub struct KqScratch {
    max_tokens: usize,
    max_blocks: usize,
    /// [max_tokens, max_blocks]
    acts: Vec<BlockQ8K>,
    /// The same activations for the K GEMM: [max_tokens / 16 (rounded up), max_blocks]
    /// token blocks; empty when no level of this CPU has a K GEMM or max_tokens < 16.
    gemm: Vec<ActKGemm>,
}

impl KqScratch {
    /// `max_tokens`: most tokens quantized at once (more are done in rounds);
    /// `max_cols`: the widest matrix row.
    pub fn new(max_tokens: usize, max_cols: usize) -> Self {
        let max_tokens = max_tokens.max(1);
        let max_blocks = max_cols.div_ceil(QK_K);
        Self {
            max_tokens,
            max_blocks,
            acts: vec![BlockQ8K::default(); max_tokens * max_blocks],
            gemm: if max_tokens >= KQ_GEMM_TOKENS
                && max_blocks <= MAX_KQ_GEMM_BLOCKS
                && super::LEVELS.iter().any(|l| gemm_table(l).is_some())
            {
                vec![ActKGemm::default(); max_tokens.div_ceil(KQ_GEMM_TOKENS) * max_blocks]
            } else {
                Vec::new()
            },
        }
    }
}

/// Activations `x` ([32 * 8 * nb]) to q8_K blocks `y` ([nb]): ggml's `quantize_row_q8_K_ref`.
pub fn quantize_acts(x: &[f32], y: &mut [BlockQ8K]) {
    quantize_row_q8_k(x, y);
}

/// Quantizes `x` ([256 * nb]) to q8_K blocks `y` ([nb]).
pub type QuantizeFn = fn(x: &[f32], y: &mut [BlockQ8K]);

/// The q8_K activation quantizer of a runtime kernel level: AVX-512 when this CPU has
/// it (bit for bit [`quantize_acts`] for finite input, tested), else [`quantize_acts`].
pub fn quantizer(level: &str) -> QuantizeFn {
    match level {
        #[cfg(target_arch = "x86_64")]
        "avx512" => super::kq_x86::quantize_avx512().unwrap_or(quantize_acts),
        _ => quantize_acts,
    }
}

/// `y[t*rows + r] = sum_c W[r,c] * x[t*cols + c]` for a K-quant `w`, with the kernel
/// level in use; see [`matmul_with`].
pub fn matmul(w: &QMatrix, x: &[f32], y: &mut [f32], n_tok: usize, scratch: &mut KqScratch) {
    matmul_with(active(), w, x, y, n_tok, scratch, true)
}

/// [`matmul`] with an explicit table. `x`: [n_tok, cols], `y`: [n_tok, rows]. Rows are
/// split over rayon's current pool in chunks when `parallel` and the call is big
/// enough; no allocation. Non-finite activations give an all-NaN `y` (rounding them to
/// 8 bits would hide them from the caller's logits check). Panics (a caller bug) when
/// `w` is not a K type, the slice lengths do not match the shapes, or `w.cols`
/// exceeds the scratch's width.
pub fn matmul_with(
    k: &KqKernels,
    w: &QMatrix,
    x: &[f32],
    y: &mut [f32],
    n_tok: usize,
    scratch: &mut KqScratch,
    parallel: bool,
) {
    matmul_multi_with(k, &[w], x, &mut [y], n_tok, scratch, parallel)
}

/// Several K matrices with the same input `x` ([n_tok, cols]) in one call: `ys[i] = x ·
/// ws[i]ᵀ` ([n_tok, ws[i].rows]), bit for bit what [`matmul_with`] gives each, with `x`
/// quantized once and all the rows in ONE parallel dispatch (q, k, v; gate, up). `ws`:
/// 1 to `MAX_OUTPUTS` K-quant matrices with the same `cols`. Panics (a caller bug) on
/// mismatched shapes, a non-K matrix or a row wider than the scratch.
pub fn matmul_multi_with(
    k: &KqKernels,
    ws: &[&QMatrix],
    x: &[f32],
    ys: &mut [&mut [f32]],
    n_tok: usize,
    scratch: &mut KqScratch,
    parallel: bool,
) {
    let n = ws.len();
    assert!(
        (1..=MAX_OUTPUTS).contains(&n) && ys.len() == n,
        "kq matmul: {n} matrices and {} outputs (1..={MAX_OUTPUTS})",
        ys.len()
    );
    let cols = ws[0].cols;
    assert_eq!(
        x.len(),
        n_tok * cols,
        "kq matmul: x has {} values, want {n_tok} x {cols}",
        x.len()
    );
    assert!(
        cols.is_multiple_of(QK_K) && cols / QK_K <= scratch.max_blocks,
        "kq matmul: row length {cols} is not a multiple of {QK_K} or exceeds the scratch's {} blocks",
        scratch.max_blocks
    );
    let mut rows = [0usize; MAX_OUTPUTS];
    for (i, (w, y)) in ws.iter().zip(ys.iter()).enumerate() {
        assert!(
            w.cols == cols && KQ_TYPES.contains(&w.dtype) && y.len() == n_tok * w.rows,
            "kq matmul: matrix {i} ({} x {} {}) against {cols} columns, output of {} values for {n_tok} tokens",
            w.rows,
            w.cols,
            w.dtype,
            y.len()
        );
        rows[i] = w.rows;
    }
    let total_rows: usize = rows.iter().sum();
    if n_tok == 0 || total_rows == 0 {
        return;
    }
    // One pass over x, in parallel when it is big (128 tokens of 8960 values).
    let finite = if parallel && x.len() >= 1 << 16 && rayon::current_num_threads() > 1 {
        x.par_chunks(cols.max(1))
            .all(|r| r.iter().all(|v| v.is_finite()))
    } else {
        x.iter().all(|v| v.is_finite())
    };
    if !finite {
        for y in ys.iter_mut() {
            y.fill(f32::NAN);
        }
        return;
    }
    let nb = cols / QK_K;
    let threads = rayon::current_num_threads().max(1);
    // Same split as the other types (matmul.rs): parallel above ~64K multiply-adds,
    // ~16 chunks per thread of 4..=256 rows, at least ~16K weights per chunk.
    let parallel =
        parallel && threads > 1 && total_rows > 1 && total_rows * cols * n_tok >= 1 << 16;
    let min_rows = (16384 / cols).clamp(4, 256);
    let mut chunks = [1usize; MAX_OUTPUTS];
    for (c, &r) in chunks.iter_mut().zip(&rows[..n]) {
        *c = (r / (threads * 16))
            .clamp(min_rows, 256)
            .next_multiple_of(4);
    }
    let tile_t = k.tile_tokens.clamp(1, MAX_KQ_TILE_TOKENS);
    let step = scratch.max_tokens;
    let quantize = quantizer(k.name);
    for t0 in (0..n_tok).step_by(step) {
        let nt = step.min(n_tok - t0);
        let acts = &mut scratch.acts[..nt * nb];
        let xs = &x[t0 * cols..(t0 + nt) * cols];
        if parallel && nt > 1 {
            acts.par_chunks_mut(nb)
                .zip(xs.par_chunks(cols))
                .for_each(|(a, xt)| quantize(xt, a));
        } else {
            for (a, xt) in acts.chunks_mut(nb).zip(xs.chunks(cols)) {
                quantize(xt, a);
            }
        }
        let acts = &scratch.acts[..nt * nb];
        // Blocks of 16+ tokens: the GEMM layout too (the last block padded).
        let gemm = gemm_table(k.name).filter(|_| {
            nt >= KQ_GEMM_TOKENS
                && nb <= MAX_KQ_GEMM_BLOCKS
                && scratch.gemm.len() >= nt.div_ceil(KQ_GEMM_TOKENS) * nb
        });
        let n_gx = if gemm.is_some() {
            nt.div_ceil(KQ_GEMM_TOKENS) * nb
        } else {
            0
        };
        let gx = &mut scratch.gemm[..n_gx];
        let build = |(tb, g): (usize, &mut [ActKGemm])| {
            let t = tb * KQ_GEMM_TOKENS;
            let tn = KQ_GEMM_TOKENS.min(nt - t);
            kgemm_acts(&acts[t * nb..(t + tn) * nb], tn, g);
        };
        if n_gx > 0 && parallel {
            gx.par_chunks_mut(nb).enumerate().for_each(build);
        } else if n_gx > 0 {
            gx.chunks_mut(nb).enumerate().for_each(build);
        }
        let gx = &*gx;
        for_each_row_chunk_multi(
            ys,
            &rows[..n],
            n_tok,
            t0..t0 + nt,
            &chunks[..n],
            parallel,
            |i, mut out| {
                let w = ws[i];
                let o = &mut out;
                match (w.dtype, gemm) {
                    (GgmlType::Q2K, g) => {
                        let r = g.map_or(0, |g| {
                            gemm_rows(&g.q2_k, g.prefetch, cast(w), nb, gx, nt, o)
                        });
                        chunk_rows(k.q2_k, None, cast(w), nb, acts, nt, tile_t, r, o)
                    }
                    (GgmlType::Q3K, g) => {
                        let r = g.map_or(0, |g| {
                            gemm_rows(&g.q3_k, g.prefetch, cast(w), nb, gx, nt, o)
                        });
                        chunk_rows(k.q3_k, None, cast(w), nb, acts, nt, tile_t, r, o)
                    }
                    (GgmlType::Q4K, g) => {
                        let r = g.map_or(0, |g| {
                            gemm_rows(&g.q4_k, g.prefetch, cast(w), nb, gx, nt, o)
                        });
                        chunk_rows(k.q4_k, k.q4_k_rows, cast(w), nb, acts, nt, tile_t, r, o)
                    }
                    (GgmlType::Q5K, g) => {
                        let r = g.map_or(0, |g| {
                            gemm_rows(&g.q5_k, g.prefetch, cast(w), nb, gx, nt, o)
                        });
                        chunk_rows(k.q5_k, k.q5_k_rows, cast(w), nb, acts, nt, tile_t, r, o)
                    }
                    (GgmlType::Q6K, g) => {
                        let r = g.map_or(0, |g| {
                            gemm_rows(&g.q6_k, g.prefetch, cast(w), nb, gx, nt, o)
                        });
                        chunk_rows(k.q6_k, k.q6_k_rows, cast(w), nb, acts, nt, tile_t, r, o)
                    }
                    (other, _) => panic!("kq matmul: type {other} is not a K-quant type"),
                }
            },
        );
    }
}

/// The weight bytes as blocks; `QMatrix::new` checked size and 2-byte alignment.
fn cast<'a, T: bytemuck::Pod>(w: &QMatrix<'a>) -> &'a [T] {
    bytemuck::cast_slice(w.data)
}

/// The chunk's rows in groups of [`KQ_GEMM_ROWS`] through the K GEMM: each group
/// unpacked once (on the stack) and run against every token block of `gx` ([nt / 16
/// rounded up, nb]). Returns the first row it did not do (the last rows of a chunk
/// that is not a multiple of 4 go to the tiles).
fn gemm_rows<W: bytemuck::Pod>(
    g: &KGemmType<W>,
    prefetch: fn(&[u8]),
    w: &[W],
    nb: usize,
    gx: &[ActKGemm],
    nt: usize,
    out: &mut RowChunkOut,
) -> usize {
    // The unpacked rows' stack buffers are zeroed per chunk: sized in tiers so narrow
    // rows (most matrices) do not pay for the widest.
    match nb {
        0..=8 => gemm_rows_n::<W, 8>(g, prefetch, w, nb, gx, nt, out),
        9..=40 => gemm_rows_n::<W, 40>(g, prefetch, w, nb, gx, nt, out),
        _ => gemm_rows_n::<W, MAX_KQ_GEMM_BLOCKS>(g, prefetch, w, nb, gx, nt, out),
    }
}

/// [`gemm_rows`] with buffers for `MAXB` super-blocks per row.
fn gemm_rows_n<W: bytemuck::Pod, const MAXB: usize>(
    g: &KGemmType<W>,
    prefetch: fn(&[u8]),
    w: &[W],
    nb: usize,
    gx: &[ActKGemm],
    nt: usize,
    out: &mut RowChunkOut,
) -> usize {
    let range = out.rows();
    let n = KQ_GEMM_ROWS * nb;
    let mut q = [[[0u8; 256]; MAXB]; KQ_GEMM_ROWS];
    let mut sc = [[[0i32; 16]; MAXB]; KQ_GEMM_ROWS];
    let mut mw = [[[0i32; 8]; MAXB]; KQ_GEMM_ROWS];
    let mut d = [[0.0f32; MAXB]; KQ_GEMM_ROWS];
    let mut dmin = [[0.0f32; MAXB]; KQ_GEMM_ROWS];
    let mut rows = KGemmRows {
        q: &mut q.as_flattened_mut().as_flattened_mut()[..n * 256],
        sc: &mut sc.as_flattened_mut().as_flattened_mut()[..n * 16],
        mw: &mut mw.as_flattened_mut().as_flattened_mut()[..n * 8],
        d: &mut d.as_flattened_mut()[..n],
        dmin: &mut dmin.as_flattened_mut()[..n],
    };
    const PER_CALL: usize = MAX_KQ_GEMM_BLOCKS_PER_CALL;
    let mut buf = [0.0f32; PER_CALL * KQ_GEMM_ROWS * KQ_GEMM_TOKENS];
    let mut r = range.start;
    while r + KQ_GEMM_ROWS <= range.end {
        (g.unpack)(&w[r * nb..(r + KQ_GEMM_ROWS) * nb], &mut rows);
        // The next group's weights are cold (read once per round): prefetch them a
        // part per call, not all at once (that stalls on the line fill buffers).
        let next: &[u8] = if r + 2 * KQ_GEMM_ROWS <= range.end {
            bytemuck::cast_slice(&w[(r + KQ_GEMM_ROWS) * nb..(r + 2 * KQ_GEMM_ROWS) * nb])
        } else {
            &[]
        };
        let calls = gx.len().div_ceil(PER_CALL * nb);
        let part = next.len().div_ceil(calls).next_multiple_of(64);
        for (call, xb) in gx.chunks(PER_CALL * nb).enumerate() {
            (prefetch)(
                next.get(call * part..)
                    .map_or(&[], |b| &b[..part.min(b.len())]),
            );
            let t0 = call * PER_CALL * KQ_GEMM_TOKENS;
            let o = &mut buf[..xb.len() / nb * KQ_GEMM_ROWS * KQ_GEMM_TOKENS];
            (g.gemm)(&rows, xb, o);
            let tn = (nt - t0).min(o.len() / KQ_GEMM_ROWS);
            out.write_tile(r, KQ_GEMM_ROWS, t0, &o[..tn * KQ_GEMM_ROWS]);
        }
        r += KQ_GEMM_ROWS;
    }
    r
}

/// The chunk's rows from `first` on, of `w` ([rows, nb]), against the round's
/// activations `acts` ([nt, nb]) through the tiles; `out` is relative to the round's
/// first token.
#[allow(clippy::too_many_arguments)]
fn chunk_rows<W>(
    tile: KqTileFn<W>,
    rows4: Option<KqRowsFn<W>>,
    w: &[W],
    nb: usize,
    acts: &[BlockQ8K],
    nt: usize,
    tile_t: usize,
    first: usize,
    out: &mut RowChunkOut,
) {
    let rows = first.max(out.rows().start)..out.rows().end;
    if rows.is_empty() {
        return;
    }
    let mut buf = [0.0f32; MAX_KQ_TILE_TOKENS];
    // Token blocks outside, rows inside: one block of activations (tile_t tokens)
    // stays in cache while the chunk's weight rows stream past it.
    let mut t0 = 0;
    while t0 < nt {
        let tb = tile_t.min(nt - t0);
        let xs = &acts[t0 * nb..(t0 + tb) * nb];
        let mut r = rows.start;
        // One token (decode): KQ_ROWS rows per call where the level has such tiles.
        if let (Some(f), 1) = (rows4, tb) {
            let mut o = [0.0f32; KQ_ROWS];
            while r + KQ_ROWS <= rows.end {
                f(&w[r * nb..(r + KQ_ROWS) * nb], xs, &mut o);
                out.write_tile(r, KQ_ROWS, t0, &o);
                r += KQ_ROWS;
            }
        }
        for r in r..rows.end {
            tile(&w[r * nb..(r + 1) * nb], xs, &mut buf[..tb]);
            out.write(r, t0, &buf[..tb]);
        }
        t0 += tb;
    }
}
