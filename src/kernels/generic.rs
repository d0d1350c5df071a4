//! The scalar kernels: the spec every SIMD kernel is tested against.
//!
//! Quantizers and integer dot products follow ggml's reference code line by line
//! (`quantize_row_q8_0_ref`, `quantize_row_q8_1_ref` in `ggml/src/ggml-quants.c`;
//! `ggml_vec_dot_q4_0_q8_0_generic` etc. in `ggml/src/ggml-cpu/quants.c`), including
//! the order of the float multiplications, so a block's contribution is the same
//! value ggml computes. Float weights (f32, f16, bf16) are widened to f32 and
//! dotted with f32 activations; ggml instead rounds the activations to f16/bf16
//! first, so ours is the more exact of the two.

use super::{act_groups, ActGemm, ActQ8x4, GemmRows, Kernels, GEMM_ROWS, GEMM_TOKENS};
use half::{bf16, f16};
use quant_formats::block::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QK};

/// The scalar dispatch table.
pub static SCALAR: Kernels = Kernels {
    name: "scalar",
    variant: "",
    tile_tokens: 4,
    quantize: quantize_q8,
    q4_0: tile_q4_0,
    q4_1: tile_q4_1,
    q5_0: tile_q5_0,
    q5_1: tile_q5_1,
    q8_0: tile_q8_0,
    f32: tile_f32,
    f16: tile_f16,
    bf16: tile_bf16,
    gemm: None,
};

/// `MAX(a, b)` as ggml's macro: `a > b ? a : b` (a NaN `b` wins, as with `maxps`).
#[inline]
fn ggml_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// One block as `quantize_row_q8_1_ref` does it: (d, codes, s), `d` and `s` already
/// rounded to f16 and widened back. The q8_0 part (d, codes) is `quantize_row_q8_0_ref`.
pub fn quantize_block(xb: &[f32]) -> (f32, [i8; 32], f32) {
    assert_eq!(xb.len(), QK);
    let amax = xb.iter().fold(0.0f32, |m, v| ggml_max(m, v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let qs: [i8; 32] = std::array::from_fn(|j| (xb[j] * id).round() as i8);
    let sum: i32 = qs.iter().map(|&q| q as i32).sum();
    (
        f16::from_f32(d).to_f32(),
        qs,
        f16::from_f32(sum as f32 * d).to_f32(),
    )
}

/// Stores block `b` (< 4) of a group; `sum` = sum of `qs`.
pub fn store_block(g: &mut ActQ8x4, b: usize, d: f32, qs: &[i8; 32], sum: i32, s: f32) {
    g.lo[16 * b..16 * b + 16].copy_from_slice(&qs[..16]);
    g.hi[16 * b..16 * b + 16].copy_from_slice(&qs[16..]);
    g.bias[4 * b] = -8 * sum;
    g.d[b] = d;
    g.s[b] = s;
}

/// Activations -> q8 groups; `x`: [32 * nb], `y`: [act_groups(nb)]; blocks past nb
/// zeroed. Returns whether every value of `x` is finite.
pub fn quantize_q8(x: &[f32], y: &mut [ActQ8x4]) -> bool {
    let nb = x.len() / QK;
    assert!(
        x.len().is_multiple_of(QK) && y.len() == act_groups(nb),
        "quantize: {} values into {} groups of 4 blocks of 32",
        x.len(),
        y.len()
    );
    let mut finite = true;
    for (g, xg) in y.iter_mut().zip(x.chunks(4 * QK)) {
        *g = ActQ8x4::default();
        for (b, xb) in xg.chunks_exact(QK).enumerate() {
            finite &= xb.iter().all(|v| v.is_finite());
            let (d, qs, s) = quantize_block(xb);
            let sum = qs.iter().map(|&q| q as i32).sum();
            store_block(g, b, d, &qs, sum, s);
        }
    }
    finite
}

/// Σ w_j · y_j over one block with integer weights `wq` (element order).
#[inline]
fn isum(wq: &[i32; 32], y: &[i8; 32]) -> i32 {
    wq.iter().zip(y).map(|(&a, &b)| a * b as i32).sum()
}

/// Codes of a q4 block in element order (low nibbles, then high), plus `qh` bit 4 for q5.
#[inline]
fn codes4(qs: &[u8; 16], qh: u32) -> [i32; 32] {
    std::array::from_fn(|j| {
        let nib = if j < 16 {
            qs[j] & 0x0F
        } else {
            qs[j - 16] >> 4
        };
        nib as i32 | ((((qh >> j) & 1) << 4) as i32)
    })
}

/// Runs `f(weight block, act group, index in group)` over a row.
#[inline]
fn blocks<W>(w: &[W], x: &[ActQ8x4], mut f: impl FnMut(&W, &ActQ8x4, usize)) {
    for (i, wb) in w.iter().enumerate() {
        f(wb, &x[i / 4], i % 4);
    }
}

/// q4_0 · q8_0 (`ggml_vec_dot_q4_0_q8_0_generic`: sumi * d_w * d_x per block).
pub fn vec_dot_q4_0(w: &[BlockQ4_0], x: &[ActQ8x4]) -> f32 {
    let mut sumf = 0.0f32;
    blocks(w, x, |a, g, b| {
        let q = codes4(&a.qs, 0).map(|v| v - 8);
        sumf += isum(&q, &g.codes(b)) as f32 * a.d.to_f32() * g.d[b];
    });
    sumf
}

/// q4_1 · q8_1 (`ggml_vec_dot_q4_1_q8_1_generic`: (d_w d_x) sumi + m s).
pub fn vec_dot_q4_1(w: &[BlockQ4_1], x: &[ActQ8x4]) -> f32 {
    let mut sumf = 0.0f32;
    blocks(w, x, |a, g, b| {
        let q = codes4(&a.qs, 0);
        sumf += (a.d.to_f32() * g.d[b]) * isum(&q, &g.codes(b)) as f32 + a.m.to_f32() * g.s[b];
    });
    sumf
}

/// q5_0 · q8_0 (`ggml_vec_dot_q5_0_q8_0_generic`).
pub fn vec_dot_q5_0(w: &[BlockQ5_0], x: &[ActQ8x4]) -> f32 {
    let mut sumf = 0.0f32;
    blocks(w, x, |a, g, b| {
        let q = codes4(&a.qs, u32::from_le_bytes(a.qh)).map(|v| v - 16);
        sumf += (a.d.to_f32() * g.d[b]) * isum(&q, &g.codes(b)) as f32;
    });
    sumf
}

/// q5_1 · q8_1 (`ggml_vec_dot_q5_1_q8_1_generic`).
pub fn vec_dot_q5_1(w: &[BlockQ5_1], x: &[ActQ8x4]) -> f32 {
    let mut sumf = 0.0f32;
    blocks(w, x, |a, g, b| {
        let q = codes4(&a.qs, u32::from_le_bytes(a.qh));
        sumf += (a.d.to_f32() * g.d[b]) * isum(&q, &g.codes(b)) as f32 + a.m.to_f32() * g.s[b];
    });
    sumf
}

/// q8_0 · q8_0 (`ggml_vec_dot_q8_0_q8_0_generic`: sumi * (d_w * d_x)).
pub fn vec_dot_q8_0(w: &[BlockQ8_0], x: &[ActQ8x4]) -> f32 {
    let mut sumf = 0.0f32;
    blocks(w, x, |a, g, b| {
        let q = a.qs.map(|v| v as i32);
        sumf += isum(&q, &g.codes(b)) as f32 * (a.d.to_f32() * g.d[b]);
    });
    sumf
}

/// Float dot with 8 running sums (lane `i % 8`), added pairwise at the end: the
/// same order the 8-wide SIMD kernels use, so they differ from this only by FMA
/// rounding and by how their extra lanes are folded.
#[inline]
fn dot_widened<T: Copy>(w: &[T], x: &[f32], to_f32: impl Fn(T) -> f32) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut acc = [0.0f32; 8];
    let mut wc = w.chunks_exact(8);
    let mut xc = x.chunks_exact(8);
    for (wb, xb) in (&mut wc).zip(&mut xc) {
        for i in 0..8 {
            acc[i] += to_f32(wb[i]) * xb[i];
        }
    }
    let mut tail = 0.0f32;
    for (&a, &b) in wc.remainder().iter().zip(xc.remainder()) {
        tail += to_f32(a) * b;
    }
    let s4 = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (s4[0] + s4[2]) + (s4[1] + s4[3]) + tail
}

/// f32 · f32.
pub fn vec_dot_f32(w: &[f32], x: &[f32]) -> f32 {
    dot_widened(w, x, |v| v)
}

/// f16 · f32: each weight widened exactly to f32.
pub fn vec_dot_f16_f32(w: &[f16], x: &[f32]) -> f32 {
    dot_widened(w, x, f16::to_f32)
}

/// bf16 · f32: each weight widened exactly to f32.
pub fn vec_dot_bf16_f32(w: &[bf16], x: &[f32]) -> f32 {
    dot_widened(w, x, bf16::to_f32)
}

/// A tile kernel from a dot product: `out[t * rows + r] = dot(w[r], x[t])`.
macro_rules! tile_from_dot {
    ($name:ident, $dot:ident, $w:ty) => {
        #[doc = concat!("Tile of `", stringify!($dot), "`: `out[t * rows + r] = dot(w[r], x[t])`.")]
        pub fn $name(w: &[$w], rows: usize, x: &[ActQ8x4], out: &mut [f32]) {
            let (nb, nt) =
                super::q_tile_shape(w.len(), rows, x.len(), out.len(), super::MAX_TILE_TOKENS);
            let ng = act_groups(nb);
            for t in 0..nt {
                for r in 0..rows {
                    out[t * rows + r] = $dot(&w[r * nb..(r + 1) * nb], &x[t * ng..(t + 1) * ng]);
                }
            }
        }
    };
}

tile_from_dot!(tile_q4_0, vec_dot_q4_0, BlockQ4_0);
tile_from_dot!(tile_q4_1, vec_dot_q4_1, BlockQ4_1);
tile_from_dot!(tile_q5_0, vec_dot_q5_0, BlockQ5_0);
tile_from_dot!(tile_q5_1, vec_dot_q5_1, BlockQ5_1);
tile_from_dot!(tile_q8_0, vec_dot_q8_0, BlockQ8_0);

/// A float tile from a dot product: `out[t * rows + r] = dot(w[r], x[t])`.
macro_rules! float_tile_from_dot {
    ($name:ident, $dot:ident, $w:ty) => {
        #[doc = concat!("Float tile of `", stringify!($dot), "`: `out[t * rows + r] = dot(w[r], x[t])`.")]
        pub fn $name(w: &[$w], rows: usize, x: &[f32], out: &mut [f32]) {
            let (n, nt) = super::float_tile_shape(w.len(), rows, x.len(), out.len(), super::MAX_TILE_TOKENS);
            for t in 0..nt {
                for r in 0..rows {
                    out[t * rows + r] = $dot(&w[r * n..(r + 1) * n], &x[t * n..(t + 1) * n]);
                }
            }
        }
    };
}

float_tile_from_dot!(tile_f32, vec_dot_f32, f32);
float_tile_from_dot!(tile_f16, vec_dot_f16_f32, f16);
float_tile_from_dot!(tile_bf16, vec_dot_bf16_f32, bf16);

/// The GEMM's spec ([`super::GemmFn`]): per row and token, over blocks in order,
/// `acc = fma(f32(isum), d_w * d_x, acc)`.
pub fn gemm(w: &GemmRows, x: &[ActGemm], out: &mut [f32]) {
    let nb = x.len();
    super::gemm_shape(w, nb, out.len());
    for r in 0..GEMM_ROWS {
        for t in 0..GEMM_TOKENS {
            let mut acc = 0.0f32;
            for (b, xb) in x.iter().enumerate() {
                let wq = &w.q[(r * nb + b) * 32..(r * nb + b + 1) * 32];
                let mut isum = w.bias[r * nb + b];
                for (k, q) in xb.q.iter().enumerate() {
                    for j in 0..4 {
                        isum += q[4 * t + j] as i32 * wq[4 * k + j] as i32;
                    }
                }
                acc = (isum as f32).mul_add(w.d[r * nb + b] * xb.d[t], acc);
            }
            out[t * GEMM_ROWS + r] = acc;
        }
    }
}

/// `-128 * sum(codes)` of one unpacked block.
#[inline]
fn gemm_bias(q: &[i8]) -> i32 {
    let mut sum = 0i32;
    for &c in q {
        sum += c as i32;
    }
    -128 * sum
}

// The unpackers run once per 4 rows per prefill round (amortized over every token
// block), written as plain loops the compiler vectorizes.

/// q4_0 rows ([rows, nb]) into GEMM rows: codes `nibble - 8`.
pub fn unpack_gemm_q4_0(w: &[BlockQ4_0], q: &mut [i8], bias: &mut [i32], d: &mut [f32]) {
    for (i, blk) in w.iter().enumerate() {
        let qb = &mut q[32 * i..32 * i + 32];
        for j in 0..16 {
            qb[j] = (blk.qs[j] & 0x0F) as i8 - 8;
            qb[j + 16] = (blk.qs[j] >> 4) as i8 - 8;
        }
        bias[i] = gemm_bias(qb);
        d[i] = blk.d.to_f32();
    }
}

/// q5_0 rows into GEMM rows: codes `(nibble | fifth bit << 4) - 16`.
pub fn unpack_gemm_q5_0(w: &[BlockQ5_0], q: &mut [i8], bias: &mut [i32], d: &mut [f32]) {
    for (i, blk) in w.iter().enumerate() {
        let qb = &mut q[32 * i..32 * i + 32];
        let h = u32::from_le_bytes(blk.qh);
        for j in 0..16 {
            let (h0, h1) = (((h >> j) & 1) << 4, ((h >> (j + 16)) & 1) << 4);
            qb[j] = ((blk.qs[j] & 0x0F) as u32 | h0) as i8 - 16;
            qb[j + 16] = ((blk.qs[j] >> 4) as u32 | h1) as i8 - 16;
        }
        bias[i] = gemm_bias(qb);
        d[i] = blk.d.to_f32();
    }
}

/// q8_0 rows into GEMM rows: the codes as they are.
pub fn unpack_gemm_q8_0(w: &[BlockQ8_0], q: &mut [i8], bias: &mut [i32], d: &mut [f32]) {
    for (i, blk) in w.iter().enumerate() {
        let qb = &mut q[32 * i..32 * i + 32];
        qb.copy_from_slice(&blk.qs);
        bias[i] = gemm_bias(qb);
        d[i] = blk.d.to_f32();
    }
}
