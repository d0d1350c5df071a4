//! Compute kernels: one dispatch table of function pointers per instruction-set
//! level, chosen once at start-up (or forced by [`select`] / `QWEN_KERNELS`).
//!
//! - `generic.rs`: the scalar twin of every kernel, always compiled; the spec.
//! - `x86.rs`: AVX2 (+FMA, F16C) and AVX-512 (F, BW, VL, VNNI) kernels.
//! - `aarch64.rs`: NEON (+dotprod) kernels.
//! - `par.rs`: the row-parallel driver (disjoint writes into a `[n_tok, rows]` output).
//!
//! All `unsafe` of the runtime lives under this directory. Every SIMD kernel has
//! a safe signature over typed block slices; its table is only handed out after
//! the CPU features it needs were detected at run time.
//!
//! Quantized weights are multiplied with activations quantized to 8 bits per block
//! of 32 (ggml's q8_0 for q4_0/q5_0/q8_0 weights, q8_1 for q4_1/q5_1), stored as
//! [`ActQ8x4`]. Float weights (f32, f16, bf16) are widened to f32 and dotted with the
//! f32 activations (ggml rounds the activations to f16/bf16 instead; ours is the more
//! exact of the two).
//!
//! Needs Rust 1.89 (AVX-512 intrinsics, safe `#[target_feature]` functions).

#[cfg(target_arch = "aarch64")]
mod aarch64;
pub mod attn;
pub mod generic;
pub mod kq;
#[cfg(target_arch = "aarch64")]
mod kq_aarch64;
pub mod kq_generic;
#[cfg(target_arch = "x86_64")]
mod kq_x86;
mod par;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use par::{
    for_each_row_chunk, for_each_row_chunk_multi, run_on_pool, with_polling_peer, RowChunkOut,
};

use half::{bf16, f16};
use quant_formats::block::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Most tokens any table's tile kernel takes in one call.
pub const MAX_TILE_TOKENS: usize = 8;

/// Four q8 activation blocks (128 values) laid out for the kernels. The values are
/// exactly ggml's q8_0 / q8_1 quantization (`quantize_row_q8_0_ref` / `_q8_1_ref`);
/// only the storage differs: scales as f32 (each the f16-rounded value ggml keeps),
/// the two 16-byte halves of the four blocks side by side so one 64-byte load feeds
/// four blocks, and the code sums ready for the kernels' unsigned-weight trick.
/// A row of `nb` blocks is `nb.div_ceil(4)` of these; missing blocks are all zero.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ActQ8x4 {
    /// `lo[16 * b + j]` = code `j` of block `b` (j < 16).
    pub lo: [i8; 64],
    /// `hi[16 * b + j]` = code `16 + j` of block `b`.
    pub hi: [i8; 64],
    /// `bias[4 * b]` = -8 * (sum of block `b`'s codes); the other lanes are 0. An i32
    /// dot of unsigned codes `u` started from this gives `sum((u - 8) * y)` per block.
    pub bias: [i32; 16],
    /// Block scales `d` (f16 values widened to f32).
    pub d: [f32; 4],
    /// q8_1's `s = f16(d * sum(codes))` widened to f32 (with the unrounded f32 `d`).
    pub s: [f32; 4],
    /// Zero; rounds the size up to four cache lines.
    pub pad: [u8; 32],
}
const _: () = assert!(std::mem::size_of::<ActQ8x4>() == 256);

impl Default for ActQ8x4 {
    fn default() -> Self {
        bytemuck::Zeroable::zeroed()
    }
}

impl ActQ8x4 {
    /// The 32 codes of block `b` (< 4) in element order.
    pub fn codes(&self, b: usize) -> [i8; 32] {
        std::array::from_fn(|j| {
            if j < 16 {
                self.lo[16 * b + j]
            } else {
                self.hi[16 * b + j - 16]
            }
        })
    }
    /// Block `b` as ggml's q8_0 block.
    pub fn to_q8_0(&self, b: usize) -> BlockQ8_0 {
        BlockQ8_0 {
            d: f16::from_f32(self.d[b]),
            qs: self.codes(b),
        }
    }
    /// Block `b` as ggml's q8_1 block.
    pub fn to_q8_1(&self, b: usize) -> BlockQ8_1 {
        BlockQ8_1 {
            d: f16::from_f32(self.d[b]),
            s: f16::from_f32(self.s[b]),
            qs: self.codes(b),
        }
    }
}

/// Activation groups for a row of `nb` blocks.
pub const fn act_groups(nb: usize) -> usize {
    nb.div_ceil(4)
}

/// Most weight rows any tile kernel (quantized or float) takes in one call.
pub const MAX_TILE_ROWS: usize = 4;

/// Most weight rows a float tile takes in one call (= [`MAX_TILE_ROWS`]).
pub const MAX_FLOAT_ROWS: usize = MAX_TILE_ROWS;

/// A quantized tile: `rows` weight rows against `nt` tokens of q8 activations, so
/// each activation group is loaded once for all rows and each weight block unpacked
/// once for all tokens.
///
/// `w`: [rows, nb] blocks; `x`: [nt, act_groups(nb)] (token-major); `out`: [nt, rows]
/// with `out[t * rows + r] = dot(w[r], x[t])`. Requires `1 <= rows <= MAX_TILE_ROWS`,
/// `1 <= nt <= Kernels::tile_tokens` and matching lengths (checked; a violation
/// panics, it is a bug). A row's result does not depend on `rows` or `nt` (each
/// row and token is summed in the same order whatever tile it is part of), so
/// results are identical however the matmul splits a matrix.
pub type TileFn<W> = fn(w: &[W], rows: usize, x: &[ActQ8x4], out: &mut [f32]);

/// A float tile: `rows` weight rows against `nt` tokens of f32 activations.
/// `w`: [rows, n]; `x`: [nt, n]; `out`: [nt, rows] (`out[t * rows + r]`), with
/// `1 <= rows <= MAX_FLOAT_ROWS`, `1 <= nt <= Kernels::tile_tokens` (checked).
pub type FloatTileFn<W> = fn(w: &[W], rows: usize, x: &[f32], out: &mut [f32]);

/// One instruction-set level: every kernel the matmul needs.
#[derive(Debug)]
pub struct Kernels {
    /// "scalar" | "avx2" | "avx512" | "neon".
    pub name: &'static str,
    /// Which of the level's tables ("" when it has one; "vnni" or "vnni+vbmi" for
    /// avx512). Variants give identical results.
    pub variant: &'static str,
    /// Most tokens one tile call handles (<= [`MAX_TILE_TOKENS`]).
    pub tile_tokens: usize,
    /// f32 -> q8 activations (ggml's `_ref` rounding, q8_0 and q8_1 data at once);
    /// `x`: [32 * nb], `y`: [act_groups(nb)] with `nb = x.len() / 32`. Returns whether
    /// every value of `x` was finite (if not, `y` holds meaningless codes): the
    /// matmul's NaN check rides on this pass over the activations.
    pub quantize: fn(x: &[f32], y: &mut [ActQ8x4]) -> bool,
    pub q4_0: TileFn<BlockQ4_0>,
    pub q4_1: TileFn<BlockQ4_1>,
    pub q5_0: TileFn<BlockQ5_0>,
    pub q5_1: TileFn<BlockQ5_1>,
    pub q8_0: TileFn<BlockQ8_0>,
    pub f32: FloatTileFn<f32>,
    pub f16: FloatTileFn<f16>,
    pub bf16: FloatTileFn<bf16>,
    /// The prefill GEMM (see [`GemmFn`]) where this level has one; `None`: blocks of
    /// tokens go through the tiles.
    pub gemm: Option<GemmFn>,
}

/// Tokens per GEMM token block (the 16 i32 lanes of a zmm register).
pub const GEMM_TOKENS: usize = 16;

/// Rows per GEMM call.
pub const GEMM_ROWS: usize = 4;

/// One weight block's q8 activations for a block of [`GEMM_TOKENS`] tokens, laid out
/// for a GEMM that broadcasts 4 weight codes against 16 tokens at a time:
/// `q[k][4 * t + j]` = code `4k + j` of token `t`, plus 128 (as u8, so that `vpdpbusd`
/// can take it as its unsigned operand); `d[t]` = token t's block scale (0 for the
/// padding tokens of a partial block, whose codes are 128).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ActGemm {
    pub q: [[u8; 64]; 8],
    pub d: [f32; 16],
}
const _: () = assert!(std::mem::size_of::<ActGemm>() == 576);

impl Default for ActGemm {
    fn default() -> Self {
        bytemuck::Zeroable::zeroed()
    }
}

/// Weight rows unpacked for the GEMM: for each of [`GEMM_ROWS`] rows and each of its
/// `nb` blocks, the 32 codes as signed bytes in element order (`q`: [rows, nb, 32]),
/// `-128 * sum(codes)` (`bias`: [rows, nb], undoes the +128 of the activations) and
/// the block scale (`d`: [rows, nb]). Weight types whose value is `d * code`
/// (q4_0, q5_0, q8_0) unpack to this; see `generic::unpack_gemm_*`.
#[derive(Debug)]
pub struct GemmRows<'a> {
    pub q: &'a [i8],
    pub bias: &'a [i32],
    pub d: &'a [f32],
}

/// GEMM of [`GEMM_ROWS`] unpacked weight rows `w` ([rows, nb]) against one token block
/// `x` ([nb] of [`ActGemm`]): `out[t * GEMM_ROWS + r]` ([16, 4]) =
/// `sum over blocks b, in order, of f32(isum(r, b, t)) * (d_w * d_x)` with one fused
/// multiply-add per block, isum the exact integer dot of the block's codes. The
/// scalar twin is `generic::gemm`; SIMD levels equal it bit for bit. (The sum order
/// differs from the tiles', so a token's prefill result may differ from its decode
/// result in the last bits.)
pub type GemmFn = fn(w: &GemmRows, x: &[ActGemm], out: &mut [f32]);

/// Builds token block `x` ([nb] of [`ActGemm`]) from up to 16 tokens of quantized
/// activations `acts` ([nt, act_groups(nb)]); tokens past `nt` are padding (codes
/// 128, scale 0). Panics (a bug) if `nt` is not in 1..=16 or lengths do not fit.
pub fn gemm_acts(acts: &[ActQ8x4], nt: usize, x: &mut [ActGemm]) {
    let nb = x.len();
    let ng = act_groups(nb);
    assert!(
        (1..=GEMM_TOKENS).contains(&nt) && acts.len() == nt * ng,
        "gemm_acts: {} groups for {nt} tokens x {nb} blocks",
        acts.len()
    );
    for (b, xb) in x.iter_mut().enumerate() {
        let (gi, bb) = (b / 4, b % 4);
        for t in 0..GEMM_TOKENS {
            let (codes, d) = if t < nt {
                let g = &acts[t * ng + gi];
                let (lo, hi) = (&g.lo[16 * bb..16 * bb + 16], &g.hi[16 * bb..16 * bb + 16]);
                (Some((lo, hi)), g.d[bb])
            } else {
                (None, 0.0)
            };
            for k in 0..8 {
                // Four codes as one word, each byte + 128 (flip the sign bit).
                let word = match codes {
                    Some((lo, hi)) => {
                        let src = if k < 4 { lo } else { hi };
                        let j = 4 * (k % 4);
                        u32::from_le_bytes([
                            src[j] as u8,
                            src[j + 1] as u8,
                            src[j + 2] as u8,
                            src[j + 3] as u8,
                        ]) ^ 0x8080_8080
                    }
                    None => 0x8080_8080,
                };
                xb.q[k][4 * t..4 * t + 4].copy_from_slice(&word.to_le_bytes());
            }
            xb.d[t] = d;
        }
    }
}

/// Every level this build knows, best last. Whether the CPU has it is asked by [`table`].
pub const LEVELS: &[&str] = &["scalar", "avx2", "avx512", "neon"];

/// The table of `level` if this build has it and this CPU supports it.
pub fn table(level: &str) -> Option<&'static Kernels> {
    match level {
        "scalar" => Some(&generic::SCALAR),
        #[cfg(target_arch = "x86_64")]
        "avx2" => x86::avx2(),
        #[cfg(target_arch = "x86_64")]
        "avx512" => x86::avx512(),
        #[cfg(target_arch = "aarch64")]
        "neon" => aarch64::neon(),
        _ => None,
    }
}

/// Every table of `level` this CPU supports (a level may have variants that differ
/// only in how they compute, e.g. avx512 with and without VBMI), the one
/// [`table`] picks last. Tests hold each against the scalar twin.
pub fn variants(level: &str) -> Vec<&'static Kernels> {
    match level {
        #[cfg(target_arch = "x86_64")]
        "avx2" => x86::avx2_variants(),
        #[cfg(target_arch = "x86_64")]
        "avx512" => x86::avx512_variants(),
        _ => table(level).into_iter().collect(),
    }
}

/// Wrapping sum of `v`, read as fast as this CPU streams memory (wide loads and the
/// kernels' prefetch where available): the read-bandwidth probe of the benchmarks.
pub fn stream_sum(v: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if let Some(s) = x86::stream_sum(v) {
        return s;
    }
    v.iter().fold(0u64, |s, &x| s.wrapping_add(x))
}

/// [`stream_sum`] of `v` by the current rayon pool's threads, 512 KiB per task: the
/// read-bandwidth probe of `qwen-bench --read-bw` and `cargo bench -- read_bandwidth`.
pub fn par_stream_sum(v: &[u64]) -> u64 {
    use rayon::prelude::*;
    v.par_chunks(1 << 16)
        .map(stream_sum)
        .reduce(|| 0, u64::wrapping_add)
}

/// The levels this CPU supports, worst first ("scalar" always).
pub fn available() -> Vec<&'static str> {
    LEVELS
        .iter()
        .copied()
        .filter(|l| table(l).is_some())
        .collect()
}

fn best() -> &'static str {
    available().last().copied().unwrap_or("scalar")
}

/// Index + 1 into [`LEVELS`] of the level in use; 0 = not chosen yet.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// Chooses the kernel level: `Some(name)` forces one ("scalar" | "avx2" | "avx512" |
/// "neon"); `None` takes `QWEN_KERNELS` if set, else the best this CPU has. Returns
/// the level now in use, or an error naming the level and what is available.
pub fn select(level: Option<&str>) -> Result<&'static str, String> {
    let env = std::env::var("QWEN_KERNELS").ok().filter(|s| !s.is_empty());
    let want = match (level, env.as_deref()) {
        (Some(l), _) => l.to_string(),
        (None, Some(e)) => e.to_string(),
        (None, None) => best().to_string(),
    };
    let want = want.trim().to_ascii_lowercase();
    let Some(idx) = LEVELS.iter().position(|l| *l == want) else {
        return Err(format!(
            "unknown kernel level '{want}' (known: {})",
            LEVELS.join(", ")
        ));
    };
    if table(LEVELS[idx]).is_none() {
        return Err(format!(
            "kernel level '{want}' is not supported by this CPU/build (available: {})",
            available().join(", ")
        ));
    }
    ACTIVE.store(idx + 1, Ordering::Relaxed);
    Ok(LEVELS[idx])
}

/// The table in use; chosen by `select(None)` on first use (falling back to the
/// best level if `QWEN_KERNELS` names one this CPU lacks).
pub fn active() -> &'static Kernels {
    let mut i = ACTIVE.load(Ordering::Relaxed);
    if i == 0 {
        if select(None).is_err() {
            let b = best();
            ACTIVE.store(
                LEVELS.iter().position(|l| *l == b).unwrap_or(0) + 1,
                Ordering::Relaxed,
            );
        }
        i = ACTIVE.load(Ordering::Relaxed);
    }
    table(LEVELS[i - 1]).unwrap_or(&generic::SCALAR)
}

/// Name of the level in use.
pub fn level() -> &'static str {
    active().name
}

impl Kernels {
    /// Single dot products through the tile kernels (tests, one-token callers).
    pub fn dot_q4_0(&self, w: &[BlockQ4_0], x: &[ActQ8x4]) -> f32 {
        dot1(self.q4_0, w, x)
    }
    pub fn dot_q4_1(&self, w: &[BlockQ4_1], x: &[ActQ8x4]) -> f32 {
        dot1(self.q4_1, w, x)
    }
    pub fn dot_q5_0(&self, w: &[BlockQ5_0], x: &[ActQ8x4]) -> f32 {
        dot1(self.q5_0, w, x)
    }
    pub fn dot_q5_1(&self, w: &[BlockQ5_1], x: &[ActQ8x4]) -> f32 {
        dot1(self.q5_1, w, x)
    }
    pub fn dot_q8_0(&self, w: &[BlockQ8_0], x: &[ActQ8x4]) -> f32 {
        dot1(self.q8_0, w, x)
    }
    pub fn dot_f32(&self, w: &[f32], x: &[f32]) -> f32 {
        fdot1(self.f32, w, x)
    }
    pub fn dot_f16(&self, w: &[f16], x: &[f32]) -> f32 {
        fdot1(self.f16, w, x)
    }
    pub fn dot_bf16(&self, w: &[bf16], x: &[f32]) -> f32 {
        fdot1(self.bf16, w, x)
    }
}

fn dot1<W>(f: TileFn<W>, w: &[W], x: &[ActQ8x4]) -> f32 {
    let mut out = [0.0f32];
    f(w, 1, x, &mut out);
    out[0]
}

fn fdot1<W>(f: FloatTileFn<W>, w: &[W], x: &[f32]) -> f32 {
    let mut out = [0.0f32];
    f(w, 1, x, &mut out);
    out[0]
}

/// Checks a GEMM call's shapes. Panics (a bug) when they do not fit.
pub(crate) fn gemm_shape(w: &GemmRows, nb: usize, out_len: usize) {
    assert!(
        w.q.len() == GEMM_ROWS * nb * 32
            && w.bias.len() == GEMM_ROWS * nb
            && w.d.len() == GEMM_ROWS * nb
            && out_len == GEMM_ROWS * GEMM_TOKENS,
        "gemm: {} codes, {} sums, {} scales for {GEMM_ROWS} rows x {nb} blocks, {out_len} outputs",
        w.q.len(),
        w.bias.len(),
        w.d.len()
    );
}

/// Checks a quantized tile's shapes; returns (nb, nt). Panics (a bug) when they do not fit.
pub(crate) fn q_tile_shape(
    w_len: usize,
    rows: usize,
    x_len: usize,
    out_len: usize,
    max_nt: usize,
) -> (usize, usize) {
    assert!(
        (1..=MAX_TILE_ROWS).contains(&rows),
        "tile: {rows} rows (max {MAX_TILE_ROWS})"
    );
    let (nb, nt) = (w_len / rows, out_len / rows);
    assert!(
        w_len == nb * rows
            && out_len == nt * rows
            && (1..=max_nt).contains(&nt)
            && x_len == nt * act_groups(nb),
        "tile: {w_len} blocks, {rows} rows, {x_len} activation groups, {out_len} outputs (max {max_nt} tokens)"
    );
    (nb, nt)
}

/// Checks a float tile's shapes; returns (n, nt). Panics (a bug) when they do not fit.
pub(crate) fn float_tile_shape(
    w_len: usize,
    rows: usize,
    x_len: usize,
    out_len: usize,
    max_nt: usize,
) -> (usize, usize) {
    assert!(
        (1..=MAX_FLOAT_ROWS).contains(&rows),
        "float tile: {rows} rows (max {MAX_FLOAT_ROWS})"
    );
    let (n, nt) = (w_len / rows, out_len / rows);
    assert!(
        w_len == n * rows && out_len == nt * rows && (1..=max_nt).contains(&nt) && x_len == nt * n,
        "float tile: {w_len} weights, {rows} rows, {x_len} activations, {out_len} outputs (max {max_nt} tokens)"
    );
    (n, nt)
}
