//! The scalar kernels: the spec every SIMD kernel is tested against.
//!
//! Quantizers and integer dot products follow ggml's reference code line by line
//! (`quantize_row_q8_0_ref`, `quantize_row_q8_1_ref` in `ggml/src/ggml-quants.c`;
//! `ggml_vec_dot_q4_0_q8_0_generic` etc. in `ggml/src/ggml-cpu/quants.c`), including
//! the order of the float multiplications, so a block's contribution is the same
//! value ggml computes. Float weights (f32, f16, bf16) are widened to f32 and
//! dotted with f32 activations; ggml instead rounds the activations to f16/bf16
//! first, so ours is the more exact of the two.

use super::Kernels;
use half::{bf16, f16};
use quant_formats::block::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, QK};

/// The scalar dispatch table.
pub static SCALAR: Kernels = Kernels {
    name: "scalar",
    tile_tokens: 4,
    quantize_q8_0: quantize_row_q8_0,
    quantize_q8_1: quantize_row_q8_1,
    q4_0: tile_q4_0_q8_0,
    q4_1: tile_q4_1_q8_1,
    q5_0: tile_q5_0_q8_0,
    q5_1: tile_q5_1_q8_1,
    q8_0: tile_q8_0_q8_0,
    f32: tile_f32_f32,
    f16: tile_f16_f32,
    bf16: tile_bf16_f32,
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

/// Absolute maximum of one block, in ggml's order.
#[inline]
fn block_amax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| ggml_max(m, v.abs()))
}

/// Activations -> q8_0, exactly `quantize_row_q8_0_ref`. `x`: [32 * y.len()].
pub fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    assert_eq!(
        x.len(),
        y.len() * QK,
        "q8_0: x has {} values for {} blocks",
        x.len(),
        y.len()
    );
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let amax = block_amax(xb);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = f16::from_f32(d);
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
        }
    }
}

/// Activations -> q8_1, exactly `quantize_row_q8_1_ref` (`s = d * sum(qs)` with the
/// unrounded f32 `d`). `x`: [32 * y.len()].
pub fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    assert_eq!(
        x.len(),
        y.len() * QK,
        "q8_1: x has {} values for {} blocks",
        x.len(),
        y.len()
    );
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let amax = block_amax(xb);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = f16::from_f32(d);
        let mut sum = 0i32;
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        yb.s = f16::from_f32(sum as f32 * d);
    }
}

/// q4_0 · q8_0 (`ggml_vec_dot_q4_0_q8_0_generic`).
pub fn vec_dot_q4_0_q8_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut sumf = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let (mut s0, mut s1) = (0i32, 0i32);
        for j in 0..QK / 2 {
            let v0 = (a.qs[j] & 0x0F) as i32 - 8;
            let v1 = (a.qs[j] >> 4) as i32 - 8;
            s0 += v0 * b.qs[j] as i32;
            s1 += v1 * b.qs[j + QK / 2] as i32;
        }
        sumf += (s0 + s1) as f32 * a.d.to_f32() * b.d.to_f32();
    }
    sumf
}

/// q4_1 · q8_1 (`ggml_vec_dot_q4_1_q8_1_generic`).
pub fn vec_dot_q4_1_q8_1(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut sumf = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let (mut s0, mut s1) = (0i32, 0i32);
        for j in 0..QK / 2 {
            let v0 = (a.qs[j] & 0x0F) as i32;
            let v1 = (a.qs[j] >> 4) as i32;
            s0 += v0 * b.qs[j] as i32;
            s1 += v1 * b.qs[j + QK / 2] as i32;
        }
        sumf += (a.d.to_f32() * b.d.to_f32()) * (s0 + s1) as f32 + a.m.to_f32() * b.s.to_f32();
    }
    sumf
}

/// q5_0 · q8_0 (`ggml_vec_dot_q5_0_q8_0_generic`).
pub fn vec_dot_q5_0_q8_0(w: &[BlockQ5_0], x: &[BlockQ8_0]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut sumf = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let qh = u32::from_le_bytes(a.qh);
        let (mut s0, mut s1) = (0i32, 0i32);
        for j in 0..QK / 2 {
            let h0 = (((qh >> j) & 1) << 4) as u8;
            let h1 = (((qh >> (j + 16)) & 1) << 4) as u8;
            let v0 = ((a.qs[j] & 0x0F) | h0) as i32 - 16;
            let v1 = ((a.qs[j] >> 4) | h1) as i32 - 16;
            s0 += v0 * b.qs[j] as i32;
            s1 += v1 * b.qs[j + QK / 2] as i32;
        }
        sumf += (a.d.to_f32() * b.d.to_f32()) * (s0 + s1) as f32;
    }
    sumf
}

/// q5_1 · q8_1 (`ggml_vec_dot_q5_1_q8_1_generic`).
pub fn vec_dot_q5_1_q8_1(w: &[BlockQ5_1], x: &[BlockQ8_1]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut sumf = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let qh = u32::from_le_bytes(a.qh);
        let (mut s0, mut s1) = (0i32, 0i32);
        for j in 0..QK / 2 {
            let h0 = (((qh >> j) & 1) << 4) as u8;
            let h1 = (((qh >> (j + 16)) & 1) << 4) as u8;
            let v0 = ((a.qs[j] & 0x0F) | h0) as i32;
            let v1 = ((a.qs[j] >> 4) | h1) as i32;
            s0 += v0 * b.qs[j] as i32;
            s1 += v1 * b.qs[j + QK / 2] as i32;
        }
        sumf += (a.d.to_f32() * b.d.to_f32()) * (s0 + s1) as f32 + a.m.to_f32() * b.s.to_f32();
    }
    sumf
}

/// q8_0 · q8_0 (`ggml_vec_dot_q8_0_q8_0_generic`).
pub fn vec_dot_q8_0_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut sumf = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let s: i32 =
            a.qs.iter()
                .zip(&b.qs)
                .map(|(&p, &q)| p as i32 * q as i32)
                .sum();
        sumf += s as f32 * (a.d.to_f32() * b.d.to_f32());
    }
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

/// A tile kernel from a dot product: `out[t] = dot(w, x[t])`, `x`: [out.len(), w.len()].
macro_rules! tile_from_dot {
    ($name:ident, $dot:ident, $w:ty, $a:ty) => {
        #[doc = concat!("Tile of `", stringify!($dot), "`: `out[t] = dot(w, x[t])`; `w`: [nb], `x`: [out.len(), nb].")]
        pub fn $name(w: &[$w], x: &[$a], out: &mut [f32]) {
            let nb = w.len();
            assert_eq!(x.len(), nb * out.len(), "tile: x has {} blocks, want {} x {}", x.len(), out.len(), nb);
            if nb == 0 {
                out.fill(0.0);
                return;
            }
            for (o, xt) in out.iter_mut().zip(x.chunks_exact(nb)) {
                *o = $dot(w, xt);
            }
        }
    };
}

tile_from_dot!(tile_q4_0_q8_0, vec_dot_q4_0_q8_0, BlockQ4_0, BlockQ8_0);
tile_from_dot!(tile_q4_1_q8_1, vec_dot_q4_1_q8_1, BlockQ4_1, BlockQ8_1);
tile_from_dot!(tile_q5_0_q8_0, vec_dot_q5_0_q8_0, BlockQ5_0, BlockQ8_0);
tile_from_dot!(tile_q5_1_q8_1, vec_dot_q5_1_q8_1, BlockQ5_1, BlockQ8_1);
tile_from_dot!(tile_q8_0_q8_0, vec_dot_q8_0_q8_0, BlockQ8_0, BlockQ8_0);
tile_from_dot!(tile_f32_f32, vec_dot_f32, f32, f32);
tile_from_dot!(tile_f16_f32, vec_dot_f16_f32, f16, f32);
tile_from_dot!(tile_bf16_f32, vec_dot_bf16_f32, bf16, f32);
