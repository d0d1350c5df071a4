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
//! `quantize_row_q8_K_ref`, which is what ggml's x86 and generic builds use too.

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
        }
    }
}

/// Activations `x` ([32 * 8 * nb]) to q8_K blocks `y` ([nb]): ggml's `quantize_row_q8_K_ref`.
pub fn quantize_acts(x: &[f32], y: &mut [BlockQ8K]) {
    quantize_row_q8_k(x, y);
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
    if !x.iter().all(|v| v.is_finite()) {
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
    for t0 in (0..n_tok).step_by(step) {
        let nt = step.min(n_tok - t0);
        let acts = &mut scratch.acts[..nt * nb];
        let xs = &x[t0 * cols..(t0 + nt) * cols];
        if parallel && nt > 1 {
            acts.par_chunks_mut(nb)
                .zip(xs.par_chunks(cols))
                .for_each(|(a, xt)| quantize_acts(xt, a));
        } else {
            for (a, xt) in acts.chunks_mut(nb).zip(xs.chunks(cols)) {
                quantize_acts(xt, a);
            }
        }
        let acts = &scratch.acts[..nt * nb];
        for_each_row_chunk_multi(
            ys,
            &rows[..n],
            n_tok,
            t0..t0 + nt,
            &chunks[..n],
            parallel,
            |i, mut out| {
                let w = ws[i];
                match w.dtype {
                    GgmlType::Q2K => chunk_rows(k.q2_k, cast(w), nb, acts, nt, tile_t, &mut out),
                    GgmlType::Q3K => chunk_rows(k.q3_k, cast(w), nb, acts, nt, tile_t, &mut out),
                    GgmlType::Q4K => chunk_rows(k.q4_k, cast(w), nb, acts, nt, tile_t, &mut out),
                    GgmlType::Q5K => chunk_rows(k.q5_k, cast(w), nb, acts, nt, tile_t, &mut out),
                    GgmlType::Q6K => chunk_rows(k.q6_k, cast(w), nb, acts, nt, tile_t, &mut out),
                    other => panic!("kq matmul: type {other} is not a K-quant type"),
                }
            },
        );
    }
}

/// The weight bytes as blocks; `QMatrix::new` checked size and 2-byte alignment.
fn cast<'a, T: bytemuck::Pod>(w: &QMatrix<'a>) -> &'a [T] {
    bytemuck::cast_slice(w.data)
}

/// One chunk of rows of `w` ([rows, nb]) against the round's activations `acts`
/// ([nt, nb]); `out` is relative to the round's first token.
fn chunk_rows<W>(
    tile: KqTileFn<W>,
    w: &[W],
    nb: usize,
    acts: &[BlockQ8K],
    nt: usize,
    tile_t: usize,
    out: &mut RowChunkOut,
) {
    let mut buf = [0.0f32; MAX_KQ_TILE_TOKENS];
    // Token blocks outside, rows inside: one block of activations (tile_t tokens)
    // stays in cache while the chunk's weight rows stream past it.
    let mut t0 = 0;
    while t0 < nt {
        let tb = tile_t.min(nt - t0);
        let xs = &acts[t0 * nb..(t0 + tb) * nb];
        for r in out.rows() {
            tile(&w[r * nb..(r + 1) * nb], xs, &mut buf[..tb]);
            out.write(r, t0, &buf[..tb]);
        }
        t0 += tb;
    }
}
