//! Scalar reference quantizers and dequantizers: the spec.
//!
//! A line-by-line port of the `*_ref` quantizers and `dequantize_row_*`
//! functions of ggml (`ggml/src/ggml-quants.c` in ggml-org/llama.cpp), with the
//! same float operations in the same order, so the same input gives the same
//! bytes as ggml on every machine. `tests/golden.rs` holds this to bit
//! equality against ggml's C (every quantizer here, K-quants included) and
//! against the `gguf` PyPI package (legacy quantizers, K-quant dequantizers).
//! Notes on the port:
//! - f32 -> f16 is round-to-nearest-even (`half::f16::from_f32`, as ggml's
//!   `GGML_FP32_TO_FP16`); f32 -> bf16 is ggml's `ggml_compute_fp32_to_bf16`
//!   (round-to-nearest-even, NaN made quiet, subnormals kept).
//! - C's `(int8_t)(x + 8.5f)` truncation becomes Rust's `as i8`, which agrees for
//!   every finite in-range value; `roundf` is `f32::round` (half away from zero);
//!   `nearest_int` is ggml's `+ 12582912.f` trick (half to even).
//! - ggml does not define what happens to NaN or infinite input of a block type
//!   (C's float-to-int casts are undefined there); the whole-tensor [`quantize`]
//!   rejects such input with [`QuantError::NonFinite`] instead of writing junk.
//!   f32/f16/bf16 pass non-finite values through as ggml does.
//!
//! The row functions take whole blocks: `x.len() == y.len() * block size`. A
//! length mismatch there is a bug in the caller and panics; [`quantize`] and
//! [`dequantize`] check lengths of user data and return a [`QuantError`].

// Index loops mirror ggml's C so the port can be reviewed line by line.
#![allow(clippy::needless_range_loop)]

use crate::block::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1, QK, QK_K,
};
use crate::GgmlType;
use bytemuck::Pod;
use half::{bf16, f16};
use std::mem::size_of;

/// Error of the whole-tensor [`quantize`] / [`dequantize`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    #[error("{dtype}: {len} values is not a multiple of the block size {block_size}")]
    Length {
        dtype: GgmlType,
        len: usize,
        block_size: usize,
    },
    #[error("{dtype}: {n_values} values take {expected} bytes, got {got} bytes")]
    ByteLength {
        dtype: GgmlType,
        n_values: usize,
        expected: usize,
        got: usize,
    },
    #[error("{dtype}: value {value} at index {index} is not finite; refusing to quantize it")]
    NonFinite {
        dtype: GgmlType,
        index: usize,
        value: f32,
    },
    #[error("quantizing to {0} is not supported (supported: {QUANTIZE_TYPES})")]
    QuantizeUnsupported(GgmlType),
    #[error("dequantizing {0} is not supported (supported: {DEQUANTIZE_TYPES})")]
    DequantizeUnsupported(GgmlType),
}

const QUANTIZE_TYPES: &str =
    "f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q8_1, q2_K, q3_K, q4_K, q5_K, q6_K, q8_K";
const DEQUANTIZE_TYPES: &str =
    "f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q8_1, q2_K, q3_K, q4_K, q5_K, q6_K, q8_K";

// ---------------------------------------------------------------- scalars

/// f32 -> f16, round to nearest even (ggml's `GGML_FP32_TO_FP16`).
#[inline]
pub fn fp32_to_fp16(x: f32) -> f16 {
    f16::from_f32(x)
}

/// f32 -> bf16 exactly as ggml's `ggml_compute_fp32_to_bf16`: NaN becomes a quiet
/// NaN keeping the top payload bits, everything else rounds to nearest even.
#[inline]
pub fn fp32_to_bf16(x: f32) -> bf16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return bf16::from_bits(((u >> 16) | 64) as u16);
    }
    bf16::from_bits((u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16)
}

/// ggml's `nearest_int`: round half to even via the 1.5 * 2^23 trick. Exact for
/// |x| <= 4194303; beyond that (never reached by finite ggml inputs) it wraps
/// like the C code instead of panicking.
#[inline]
fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0f32;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// C's `(x) ? a : b` on a float: true unless x is zero (NaN is true).
#[inline]
fn nonzero(x: f32) -> bool {
    x != 0.0
}

// ---------------------------------------------------------------- q4_0 .. q8_1

fn check_rows(n_x: usize, n_blocks: usize, qk: usize) {
    assert_eq!(
        n_x,
        n_blocks * qk,
        "row of {n_x} values does not fill {n_blocks} blocks of {qk}"
    );
}

/// `quantize_row_q4_0_ref`. x: `[32 * y.len()]`.
pub fn quantize_row_q4_0(x: &[f32], y: &mut [BlockQ4_0]) {
    check_rows(x.len(), y.len(), QK);
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        // the signed value of largest magnitude (first one on ties)
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if nonzero(d) { 1.0 / d } else { 0.0 };
        yb.d = fp32_to_fp16(d);
        for j in 0..QK / 2 {
            let x0 = xb[j] * id;
            let x1 = xb[QK / 2 + j] * id;
            let xi0 = ((x0 + 8.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 8.5) as i8).min(15) as u8;
            yb.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

/// `quantize_row_q4_1_ref`. x: `[32 * y.len()]`.
pub fn quantize_row_q4_1(x: &[f32], y: &mut [BlockQ4_1]) {
    check_rows(x.len(), y.len(), QK);
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let mut min = f32::MAX;
        let mut max = -f32::MAX;
        for &v in xb {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 15.0;
        let id = if nonzero(d) { 1.0 / d } else { 0.0 };
        yb.d = fp32_to_fp16(d);
        yb.m = fp32_to_fp16(min);
        for j in 0..QK / 2 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[QK / 2 + j] - min) * id;
            let xi0 = ((x0 + 0.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 0.5) as i8).min(15) as u8;
            yb.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

/// `quantize_row_q5_0_ref`. x: `[32 * y.len()]`.
pub fn quantize_row_q5_0(x: &[f32], y: &mut [BlockQ5_0]) {
    check_rows(x.len(), y.len(), QK);
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -16.0;
        let id = if nonzero(d) { 1.0 / d } else { 0.0 };
        yb.d = fp32_to_fp16(d);
        let mut qh: u32 = 0;
        for j in 0..QK / 2 {
            let x0 = xb[j] * id;
            let x1 = xb[QK / 2 + j] * id;
            let xi0 = ((x0 + 16.5) as i8).min(31) as u8;
            let xi1 = ((x1 + 16.5) as i8).min(31) as u8;
            yb.qs[j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
            qh |= (((xi0 & 0x10) >> 4) as u32) << j;
            qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK / 2);
        }
        yb.qh = qh.to_le_bytes();
    }
}

/// `quantize_row_q5_1_ref`. x: `[32 * y.len()]`.
pub fn quantize_row_q5_1(x: &[f32], y: &mut [BlockQ5_1]) {
    check_rows(x.len(), y.len(), QK);
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let mut min = f32::MAX;
        let mut max = -f32::MAX;
        for &v in xb {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 31.0;
        let id = if nonzero(d) { 1.0 / d } else { 0.0 };
        yb.d = fp32_to_fp16(d);
        yb.m = fp32_to_fp16(min);
        let mut qh: u32 = 0;
        for j in 0..QK / 2 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[QK / 2 + j] - min) * id;
            // ggml: (uint8_t)(x0 + 0.5f), no clamp
            let xi0 = (x0 + 0.5) as u8;
            let xi1 = (x1 + 0.5) as u8;
            yb.qs[j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
            qh |= (((xi0 & 0x10) >> 4) as u32) << j;
            qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK / 2);
        }
        yb.qh = qh.to_le_bytes();
    }
}

/// `quantize_row_q8_0_ref`. x: `[32 * y.len()]`.
pub fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    check_rows(x.len(), y.len(), QK);
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let mut amax = 0.0f32;
        for &v in xb {
            amax = amax.max(v.abs());
        }
        let d = amax / 127.0;
        let id = if nonzero(d) { 1.0 / d } else { 0.0 };
        yb.d = fp32_to_fp16(d);
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
        }
    }
}

/// `quantize_row_q8_1_ref` (activations for q4_1 / q5_1 dot products).
/// x: `[32 * y.len()]`. `s = fp16(sum(qs) * d)` with the unrounded f32 `d`.
pub fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    check_rows(x.len(), y.len(), QK);
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let mut amax = 0.0f32;
        for &v in xb {
            amax = amax.max(v.abs());
        }
        let d = amax / 127.0;
        let id = if nonzero(d) { 1.0 / d } else { 0.0 };
        yb.d = fp32_to_fp16(d);
        let mut sum: i32 = 0;
        for j in 0..QK / 2 {
            let v0 = xb[j] * id;
            let v1 = xb[QK / 2 + j] * id;
            yb.qs[j] = v0.round() as i8;
            yb.qs[QK / 2 + j] = v1.round() as i8;
            sum += yb.qs[j] as i32;
            sum += yb.qs[QK / 2 + j] as i32;
        }
        yb.s = fp32_to_fp16(sum as f32 * d);
    }
}

/// `dequantize_row_q4_0`. y: `[32 * x.len()]`.
pub fn dequantize_row_q4_0(x: &[BlockQ4_0], y: &mut [f32]) {
    check_rows(y.len(), x.len(), QK);
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = xb.d.to_f32();
        for j in 0..QK / 2 {
            let x0 = (xb.qs[j] & 0x0f) as i32 - 8;
            let x1 = (xb.qs[j] >> 4) as i32 - 8;
            yb[j] = x0 as f32 * d;
            yb[j + QK / 2] = x1 as f32 * d;
        }
    }
}

/// `dequantize_row_q4_1`. y: `[32 * x.len()]`.
pub fn dequantize_row_q4_1(x: &[BlockQ4_1], y: &mut [f32]) {
    check_rows(y.len(), x.len(), QK);
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = xb.d.to_f32();
        let m = xb.m.to_f32();
        for j in 0..QK / 2 {
            let x0 = (xb.qs[j] & 0x0f) as i32;
            let x1 = (xb.qs[j] >> 4) as i32;
            yb[j] = x0 as f32 * d + m;
            yb[j + QK / 2] = x1 as f32 * d + m;
        }
    }
}

/// `dequantize_row_q5_0`. y: `[32 * x.len()]`.
pub fn dequantize_row_q5_0(x: &[BlockQ5_0], y: &mut [f32]) {
    check_rows(y.len(), x.len(), QK);
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = xb.d.to_f32();
        let qh = u32::from_le_bytes(xb.qh);
        for j in 0..QK / 2 {
            let xh0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
            let x0 = ((xb.qs[j] & 0x0f) | xh0) as i32 - 16;
            let x1 = ((xb.qs[j] >> 4) | xh1) as i32 - 16;
            yb[j] = x0 as f32 * d;
            yb[j + QK / 2] = x1 as f32 * d;
        }
    }
}

/// `dequantize_row_q5_1`. y: `[32 * x.len()]`.
pub fn dequantize_row_q5_1(x: &[BlockQ5_1], y: &mut [f32]) {
    check_rows(y.len(), x.len(), QK);
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = xb.d.to_f32();
        let m = xb.m.to_f32();
        let qh = u32::from_le_bytes(xb.qh);
        for j in 0..QK / 2 {
            let xh0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
            let x0 = ((xb.qs[j] & 0x0f) | xh0) as i32;
            let x1 = ((xb.qs[j] >> 4) | xh1) as i32;
            yb[j] = x0 as f32 * d + m;
            yb[j + QK / 2] = x1 as f32 * d + m;
        }
    }
}

/// `dequantize_row_q8_0`. y: `[32 * x.len()]`.
pub fn dequantize_row_q8_0(x: &[BlockQ8_0], y: &mut [f32]) {
    check_rows(y.len(), x.len(), QK);
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = xb.d.to_f32();
        for (o, &q) in yb.iter_mut().zip(&xb.qs) {
            *o = q as f32 * d;
        }
    }
}

/// Dequantize q8_1 (ggml has no `dequantize_row_q8_1`; `s` is not needed).
/// y: `[32 * x.len()]`.
pub fn dequantize_row_q8_1(x: &[BlockQ8_1], y: &mut [f32]) {
    check_rows(y.len(), x.len(), QK);
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = xb.d.to_f32();
        for (o, &q) in yb.iter_mut().zip(&xb.qs) {
            *o = q as f32 * d;
        }
    }
}

// ---------------------------------------------------------------- K-quant helpers

/// ggml's `make_qx_quants`: symmetric levels in `-nmax..nmax`, stored as
/// `l + nmax` in `l_out`; returns the scale. `qw = None` with rmse_type 1 means
/// weights `x^2`.
fn make_qx_quants(
    nmax: i32,
    x: &[f32],
    l_out: &mut [u8],
    rmse_type: i32,
    qw: Option<&[f32]>,
) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let mut iscale = -(nmax as f32) / max;
    if rmse_type == 0 {
        for i in 0..n {
            let l = nearest_int(iscale * x[i]);
            l_out[i] = (nmax + l.clamp(-nmax, nmax - 1)) as u8;
        }
        return 1.0 / iscale;
    }
    let (rmse_type, return_early) = if rmse_type < 0 {
        (-rmse_type, true)
    } else {
        (rmse_type, false)
    };
    let weight = |i: usize| -> f32 {
        match qw {
            Some(w) => w[i],
            None => match rmse_type {
                1 => x[i] * x[i],
                2 => 1.0,
                3 => x[i].abs(),
                _ => x[i].abs().sqrt(),
            },
        }
    };
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as u8;
        let w = weight(i);
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if nonzero(suml2) { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 {
            0.5 * (scale + 1.0 / iscale)
        } else {
            1.0 / iscale
        };
    }
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            let w = weight(i);
            sumlx += w * x[i] * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]);
                l_out[i] = (nmax + l.clamp(-nmax, nmax - 1)) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_q3_quants` (levels `-nmax..nmax` stored as `l + nmax`).
fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8], do_rmse: bool) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    if do_rmse {
        let mut sumlx = 0.0f32;
        let mut suml2 = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            l_out[i] = l as i8;
            let w = x[i] * x[i];
            sumlx += w * x[i] * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        for _itry in 0..5 {
            let mut n_changed = 0;
            for i in 0..n {
                let w = x[i] * x[i];
                let li = l_out[i] as i32;
                let mut slx = sumlx - w * x[i] * li as f32;
                if slx > 0.0 {
                    let mut sl2 = suml2 - w * li as f32 * li as f32;
                    let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                    if new_l != li {
                        slx += w * x[i] * new_l as f32;
                        sl2 += w * new_l as f32 * new_l as f32;
                        if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                            l_out[i] = new_l as i8;
                            sumlx = slx;
                            suml2 = sl2;
                            n_changed += 1;
                        }
                    }
                }
            }
            if n_changed == 0 {
                break;
            }
        }
        for l in l_out[..n].iter_mut() {
            *l += nmax as i8;
        }
        return if suml2 > 0.0 { sumlx / suml2 } else { 0.0 };
    }
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
    }
    1.0 / iscale
}

/// ggml's `make_qkx2_quants`: asymmetric levels `0..=nmax` with a min; returns
/// `(scale, the_min)` where `x ≈ scale * l - the_min`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    l_aux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = l.clamp(0, nmax) as u8;
        let mut diff = scale * l_out[i] as f32 + min - x[i];
        diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            l_aux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let dd = sum_w * sum_l2 - sum_l * sum_l;
        if dd > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / dd;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / dd;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let mut diff = this_scale * l_aux[i] as f32 + this_min - x[i];
                diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&l_aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `get_scale_min_k4`: the j-th 6-bit (scale, min) of q4_K / q5_K.
#[inline]
pub fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Pack 8 (scale, min) pairs of 6 bits into q4_K / q5_K's 12 bytes.
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

// ---------------------------------------------------------------- K-quants

/// `quantize_row_q2_K_ref`. x: `[256 * y.len()]`.
pub fn quantize_row_q2_k(x: &[f32], y: &mut [BlockQ2K]) {
    check_rows(x.len(), y.len(), QK_K);
    const Q4SCALE: f32 = 15.0;
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut l = [0u8; QK_K];
        let mut l_aux = [0u8; 16];
        let mut weights = [0f32; 16];
        let mut mins = [0f32; QK_K / 16];
        let mut scales = [0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for j in 0..QK_K / 16 {
            let xs = &xb[16 * j..16 * j + 16];
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            let (sc, mn) = make_qkx2_quants(
                3,
                xs,
                &weights,
                &mut l[16 * j..16 * j + 16],
                &mut l_aux,
                -0.5,
                0.1,
                15,
                true,
            );
            scales[j] = sc;
            mins[j] = mn;
            if sc > max_scale {
                max_scale = sc;
            }
            if mn > max_min {
                max_min = mn;
            }
        }
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for j in 0..QK_K / 16 {
                yb.scales[j] = nearest_int(iscale * scales[j]) as u8;
            }
            yb.d = fp32_to_fp16(max_scale / Q4SCALE);
        } else {
            yb.scales = [0; QK_K / 16];
            yb.d = fp32_to_fp16(0.0);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for j in 0..QK_K / 16 {
                let lm = nearest_int(iscale * mins[j]);
                yb.scales[j] |= (lm << 4) as u8;
            }
            yb.dmin = fp32_to_fp16(max_min / Q4SCALE);
        } else {
            yb.dmin = fp32_to_fp16(0.0);
        }
        for j in 0..QK_K / 16 {
            let d = yb.d.to_f32() * (yb.scales[j] & 0x0f) as f32;
            if !nonzero(d) {
                continue;
            }
            let dm = yb.dmin.to_f32() * (yb.scales[j] >> 4) as f32;
            for ii in 0..16 {
                let q = nearest_int((xb[16 * j + ii] + dm) / d).clamp(0, 3);
                l[16 * j + ii] = q as u8;
            }
        }
        for j in (0..QK_K).step_by(128) {
            for k in 0..32 {
                yb.qs[j / 4 + k] =
                    l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
            }
        }
    }
}

/// `dequantize_row_q2_K`. y: `[256 * x.len()]`.
pub fn dequantize_row_q2_k(x: &[BlockQ2K], y: &mut [f32]) {
    check_rows(y.len(), x.len(), QK_K);
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = xb.d.to_f32();
        let min = xb.dmin.to_f32();
        let mut out = 0;
        let mut is = 0;
        for n in (0..QK_K).step_by(128) {
            let q = &xb.qs[n / 4..n / 4 + 32];
            for shift in [0u32, 2, 4, 6] {
                for half in 0..2 {
                    let sc = xb.scales[is];
                    is += 1;
                    let dl = d * (sc & 0x0f) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for &qv in &q[16 * half..16 * half + 16] {
                        yb[out] = dl * ((qv >> shift) & 3) as f32 - ml;
                        out += 1;
                    }
                }
            }
        }
    }
}

/// `quantize_row_q3_K_ref`. x: `[256 * y.len()]`.
pub fn quantize_row_q3_k(x: &[f32], y: &mut [BlockQ3K]) {
    check_rows(x.len(), y.len(), QK_K);
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut amax = 0.0f32;
        for j in 0..QK_K / 16 {
            scales[j] = make_q3_quants(
                4,
                &xb[16 * j..16 * j + 16],
                &mut l[16 * j..16 * j + 16],
                true,
            );
            let scale = scales[j].abs();
            if scale > amax {
                amax = scale;
                max_scale = scales[j];
            }
        }
        yb.scales = [0; 12];
        if nonzero(max_scale) {
            let iscale = -32.0 / max_scale;
            for j in 0..QK_K / 16 {
                // C: int8_t l = nearest_int(...); l = MAX(-32, MIN(31, l)) + 32;
                let mut ls = (nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32;
                if j < 8 {
                    yb.scales[j] = (ls & 0x0f) as u8;
                } else {
                    yb.scales[j - 8] |= ((ls & 0x0f) << 4) as u8;
                }
                ls >>= 4;
                yb.scales[j % 4 + 8] |= (ls << (2 * (j / 4))) as u8;
            }
            yb.d = fp32_to_fp16(1.0 / iscale);
        } else {
            yb.d = fp32_to_fp16(0.0);
        }
        for j in 0..QK_K / 16 {
            let lo = if j < 8 {
                yb.scales[j] & 0x0f
            } else {
                yb.scales[j - 8] >> 4
            };
            let sc = (lo | (((yb.scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32 - 32;
            let d = yb.d.to_f32() * sc as f32;
            if !nonzero(d) {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(xb[16 * j + ii] / d).clamp(-4, 3);
                l[16 * j + ii] = (q + 4) as i8;
            }
        }
        yb.hmask = [0; QK_K / 8];
        let mut m = 0;
        let mut hm: u8 = 1;
        for lj in l.iter_mut() {
            if *lj > 3 {
                yb.hmask[m] |= hm;
                *lj -= 4;
            }
            m += 1;
            if m == QK_K / 8 {
                m = 0;
                hm = hm.wrapping_shl(1);
            }
        }
        for j in (0..QK_K).step_by(128) {
            for k in 0..32 {
                let q = |i: usize| l[i] as u8;
                yb.qs[j / 4 + k] =
                    q(j + k) | (q(j + k + 32) << 2) | (q(j + k + 64) << 4) | (q(j + k + 96) << 6);
            }
        }
    }
}

/// Unpack q3_K's sixteen 6-bit scales (stored +32) into signed values.
fn q3k_scales(s: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let lo = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
        let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (lo | (hi << 4)) as i8 - 32;
    }
    out
}

/// `dequantize_row_q3_K`. y: `[256 * x.len()]`.
pub fn dequantize_row_q3_k(x: &[BlockQ3K], y: &mut [f32]) {
    check_rows(y.len(), x.len(), QK_K);
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d_all = xb.d.to_f32();
        let scales = q3k_scales(&xb.scales);
        let mut out = 0;
        let mut is = 0;
        let mut m: u8 = 1;
        for n in (0..QK_K).step_by(128) {
            let q = &xb.qs[n / 4..n / 4 + 32];
            for shift in [0u32, 2, 4, 6] {
                for half in 0..2 {
                    let dl = d_all * scales[is] as f32;
                    is += 1;
                    for l in 16 * half..16 * half + 16 {
                        let low = ((q[l] >> shift) & 3) as i32;
                        let sub = if xb.hmask[l] & m != 0 { 0 } else { 4 };
                        yb[out] = dl * (low - sub) as f32;
                        out += 1;
                    }
                }
                m = m.wrapping_shl(1);
            }
        }
    }
}

/// `quantize_row_q4_K_ref`. x: `[256 * y.len()]`.
pub fn quantize_row_q4_k(x: &[f32], y: &mut [BlockQ4K]) {
    check_rows(x.len(), y.len(), QK_K);
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut l = [0u8; QK_K];
        let (scales, mins) = k_subblock_scales(xb, 15, &mut l, -1.0, 0.1, 20);
        let (d, dmin) = k_pack_scales(&scales, &mins, &mut yb.scales);
        yb.d = d;
        yb.dmin = dmin;
        k_requantize(xb, &yb.scales, d, dmin, 15, &mut l);
        for (j, q) in (0..QK_K).step_by(64).zip(yb.qs.chunks_exact_mut(32)) {
            for k in 0..32 {
                q[k] = l[j + k] | (l[j + k + 32] << 4);
            }
        }
    }
}

/// Shared part of q4_K / q5_K: per 32-value sub-block `make_qkx2_quants` with
/// weights `sqrt(mean(x^2)) + |x|`; returns (scales, mins).
fn k_subblock_scales(
    xb: &[f32],
    nmax: i32,
    l: &mut [u8; QK_K],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> ([f32; 8], [f32; 8]) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut weights = [0f32; 32];
    let mut l_aux = [0u8; 32];
    for j in 0..QK_K / 32 {
        let xs = &xb[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (sc, mn) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            &mut l_aux,
            rmin,
            rdelta,
            nstep,
            false,
        );
        scales[j] = sc;
        mins[j] = mn;
    }
    (scales, mins)
}

/// Quantize the 8 sub-block scales and mins to 6 bits; returns (d, dmin).
fn k_pack_scales(scales: &[f32; 8], mins: &[f32; 8], packed: &mut [u8; 12]) -> (f16, f16) {
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        // C: uint8_t ls = nearest_int(...); ls = MIN(63, ls);
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    *packed = pack_scale_min_k4(&ls, &lm);
    (fp32_to_fp16(max_scale / 63.0), fp32_to_fp16(max_min / 63.0))
}

/// Re-quantize every element against the final 6-bit scales (values 0..=nmax).
fn k_requantize(xb: &[f32], packed: &[u8; 12], d: f16, dmin: f16, nmax: i32, l: &mut [u8; QK_K]) {
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, packed);
        let d = d.to_f32() * sc as f32;
        if !nonzero(d) {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for ii in 0..32 {
            let q = nearest_int((xb[32 * j + ii] + dm) / d).clamp(0, nmax);
            l[32 * j + ii] = q as u8;
        }
    }
}

/// `dequantize_row_q4_K`. y: `[256 * x.len()]`.
pub fn dequantize_row_q4_k(x: &[BlockQ4K], y: &mut [f32]) {
    check_rows(y.len(), x.len(), QK_K);
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = xb.d.to_f32();
        let min = xb.dmin.to_f32();
        for (g, (q, out)) in xb
            .qs
            .chunks_exact(32)
            .zip(yb.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc, m) = get_scale_min_k4(2 * g, &xb.scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = get_scale_min_k4(2 * g + 1, &xb.scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            for l in 0..32 {
                out[l] = d1 * (q[l] & 0x0f) as f32 - m1;
                out[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// `quantize_row_q5_K_ref`. x: `[256 * y.len()]`.
pub fn quantize_row_q5_k(x: &[f32], y: &mut [BlockQ5K]) {
    check_rows(x.len(), y.len(), QK_K);
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut l = [0u8; QK_K];
        let (scales, mins) = k_subblock_scales(xb, 31, &mut l, -0.5, 0.1, 15);
        let (d, dmin) = k_pack_scales(&scales, &mins, &mut yb.scales);
        yb.d = d;
        yb.dmin = dmin;
        k_requantize(xb, &yb.scales, d, dmin, 31, &mut l);
        yb.qh = [0; QK_K / 8];
        let (mut m1, mut m2) = (1u8, 2u8);
        for (n, ql) in (0..QK_K).step_by(64).zip(yb.qs.chunks_exact_mut(32)) {
            for j in 0..32 {
                let mut l1 = l[n + j];
                if l1 > 15 {
                    l1 -= 16;
                    yb.qh[j] |= m1;
                }
                let mut l2 = l[n + j + 32];
                if l2 > 15 {
                    l2 -= 16;
                    yb.qh[j] |= m2;
                }
                ql[j] = l1 | (l2 << 4);
            }
            m1 = m1.wrapping_shl(2);
            m2 = m2.wrapping_shl(2);
        }
    }
}

/// `dequantize_row_q5_K`. y: `[256 * x.len()]`.
pub fn dequantize_row_q5_k(x: &[BlockQ5K], y: &mut [f32]) {
    check_rows(y.len(), x.len(), QK_K);
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = xb.d.to_f32();
        let min = xb.dmin.to_f32();
        let (mut u1, mut u2) = (1u8, 2u8);
        for (g, (ql, out)) in xb
            .qs
            .chunks_exact(32)
            .zip(yb.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc, m) = get_scale_min_k4(2 * g, &xb.scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = get_scale_min_k4(2 * g + 1, &xb.scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            for l in 0..32 {
                let h1 = if xb.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if xb.qh[l] & u2 != 0 { 16 } else { 0 };
                out[l] = d1 * ((ql[l] & 0x0f) + h1) as f32 - m1;
                out[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
            u1 = u1.wrapping_shl(2);
            u2 = u2.wrapping_shl(2);
        }
    }
}

/// `quantize_row_q6_K_ref`. x: `[256 * y.len()]`.
pub fn quantize_row_q6_k(x: &[f32], y: &mut [BlockQ6K]) {
    check_rows(x.len(), y.len(), QK_K);
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut l = [0u8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for ib in 0..QK_K / 16 {
            let scale = make_qx_quants(
                32,
                &xb[16 * ib..16 * ib + 16],
                &mut l[16 * ib..16 * ib + 16],
                1,
                None,
            );
            scales[ib] = scale;
            let abs_scale = scale.abs();
            if abs_scale > max_abs_scale {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            *yb = BlockQ6K::default();
            yb.d = fp32_to_fp16(0.0);
            continue;
        }
        let iscale = -128.0 / max_scale;
        yb.d = fp32_to_fp16(1.0 / iscale);
        for ib in 0..QK_K / 16 {
            yb.scales[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        }
        for j in 0..QK_K / 16 {
            let d = yb.d.to_f32() * yb.scales[j] as f32;
            if !nonzero(d) {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(xb[16 * j + ii] / d).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as u8;
            }
        }
        for (h, j) in (0..QK_K).step_by(128).enumerate() {
            let ql = &mut yb.ql[64 * h..64 * h + 64];
            for k in 0..32 {
                let q1 = l[j + k] & 0x0f;
                let q2 = l[j + k + 32] & 0x0f;
                let q3 = l[j + k + 64] & 0x0f;
                let q4 = l[j + k + 96] & 0x0f;
                ql[k] = q1 | (q3 << 4);
                ql[k + 32] = q2 | (q4 << 4);
            }
            let qh = &mut yb.qh[32 * h..32 * h + 32];
            for k in 0..32 {
                qh[k] = (l[j + k] >> 4)
                    | ((l[j + k + 32] >> 4) << 2)
                    | ((l[j + k + 64] >> 4) << 4)
                    | ((l[j + k + 96] >> 4) << 6);
            }
        }
    }
}

/// `dequantize_row_q6_K`. y: `[256 * x.len()]`.
pub fn dequantize_row_q6_k(x: &[BlockQ6K], y: &mut [f32]) {
    check_rows(y.len(), x.len(), QK_K);
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = xb.d.to_f32();
        for h in 0..2 {
            let ql = &xb.ql[64 * h..64 * h + 64];
            let qh = &xb.qh[32 * h..32 * h + 32];
            let sc = &xb.scales[8 * h..8 * h + 8];
            let out = &mut yb[128 * h..128 * h + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                out[l] = d * sc[is] as f32 * q1 as f32;
                out[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                out[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                out[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
            }
        }
    }
}

/// `quantize_row_q8_K_ref` (activations for K-quant dot products).
/// x: `[256 * y.len()]`. Unlike ggml, an all-zero block also zeroes `bsums`.
pub fn quantize_row_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    check_rows(x.len(), y.len(), QK_K);
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in xb {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if !nonzero(amax) {
            *yb = BlockQ8K::default();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, q) in yb.bsums.iter_mut().zip(yb.qs.chunks_exact(16)) {
            *s = q.iter().map(|&v| v as i16).sum();
        }
        yb.d = 1.0 / iscale;
    }
}

/// `dequantize_row_q8_K`. y: `[256 * x.len()]`.
pub fn dequantize_row_q8_k(x: &[BlockQ8K], y: &mut [f32]) {
    check_rows(y.len(), x.len(), QK_K);
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        for (o, &q) in yb.iter_mut().zip(&xb.qs) {
            *o = xb.d * q as f32;
        }
    }
}

// ---------------------------------------------------------------- whole tensors

/// Quantize blocks one at a time into unaligned bytes.
fn quantize_blocks<B: Pod + Default>(
    qk: usize,
    x: &[f32],
    out: &mut [u8],
    f: fn(&[f32], &mut [B]),
) {
    for (xb, ob) in x.chunks_exact(qk).zip(out.chunks_exact_mut(size_of::<B>())) {
        let mut b = [B::default()];
        f(xb, &mut b);
        ob.copy_from_slice(bytemuck::bytes_of(&b[0]));
    }
}

/// Dequantize blocks read one at a time from unaligned bytes.
fn dequantize_blocks<B: Pod>(qk: usize, bytes: &[u8], out: &mut [f32], f: fn(&[B], &mut [f32])) {
    for (bb, ob) in bytes
        .chunks_exact(size_of::<B>())
        .zip(out.chunks_exact_mut(qk))
    {
        let b: B = bytemuck::pod_read_unaligned(bb);
        f(std::slice::from_ref(&b), ob);
    }
}

/// Bytes taken by `n` values of `dtype`, or the error saying why not.
fn byte_len(dtype: GgmlType, n: usize) -> Result<usize, QuantError> {
    let bs = dtype.block_size();
    if n % bs != 0 {
        return Err(QuantError::Length {
            dtype,
            len: n,
            block_size: bs,
        });
    }
    Ok(n / bs * dtype.type_size())
}

fn quantizable(dtype: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        dtype,
        F32 | F16
            | Bf16
            | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q8_0
            | Q8_1
            | Q2K
            | Q3K
            | Q4K
            | Q5K
            | Q6K
            | Q8K
    )
}

/// Quantize `x` (row-major; rows need not be marked, since a row is a whole
/// number of blocks) to `dtype`, as ggml's reference quantizers would.
/// `x.len()` must be a multiple of the block size. Values of a block type must
/// be finite.
pub fn quantize(dtype: GgmlType, x: &[f32]) -> Result<Vec<u8>, QuantError> {
    if !quantizable(dtype) {
        return Err(QuantError::QuantizeUnsupported(dtype));
    }
    let mut out = vec![0u8; byte_len(dtype, x.len())?];
    quantize_into(dtype, x, &mut out)?;
    Ok(out)
}

/// [`quantize`] into a caller's buffer of exactly the right size (lets a
/// streaming converter reuse one buffer).
pub fn quantize_into(dtype: GgmlType, x: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    if !quantizable(dtype) {
        return Err(QuantError::QuantizeUnsupported(dtype));
    }
    let expected = byte_len(dtype, x.len())?;
    if out.len() != expected {
        return Err(QuantError::ByteLength {
            dtype,
            n_values: x.len(),
            expected,
            got: out.len(),
        });
    }
    if dtype.block_size() > 1 {
        if let Some(index) = x.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::NonFinite {
                dtype,
                index,
                value: x[index],
            });
        }
    }
    let bs = dtype.block_size();
    use GgmlType::*;
    match dtype {
        F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        F16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&fp32_to_fp16(v).to_bits().to_le_bytes());
            }
        }
        Bf16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&fp32_to_bf16(v).to_bits().to_le_bytes());
            }
        }
        Q4_0 => quantize_blocks(bs, x, out, quantize_row_q4_0),
        Q4_1 => quantize_blocks(bs, x, out, quantize_row_q4_1),
        Q5_0 => quantize_blocks(bs, x, out, quantize_row_q5_0),
        Q5_1 => quantize_blocks(bs, x, out, quantize_row_q5_1),
        Q8_0 => quantize_blocks(bs, x, out, quantize_row_q8_0),
        Q8_1 => quantize_blocks(bs, x, out, quantize_row_q8_1),
        Q2K => quantize_blocks(bs, x, out, quantize_row_q2_k),
        Q3K => quantize_blocks(bs, x, out, quantize_row_q3_k),
        Q4K => quantize_blocks(bs, x, out, quantize_row_q4_k),
        Q5K => quantize_blocks(bs, x, out, quantize_row_q5_k),
        Q6K => quantize_blocks(bs, x, out, quantize_row_q6_k),
        Q8K => quantize_blocks(bs, x, out, quantize_row_q8_k),
        _ => return Err(QuantError::QuantizeUnsupported(dtype)),
    }
    Ok(())
}

/// Dequantize `bytes` of `dtype` into `out`; `out.len()` is the number of
/// values and `bytes` must hold exactly that many. `bytes` need not be aligned.
pub fn dequantize(dtype: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    use GgmlType::*;
    if !quantizable(dtype) {
        return Err(QuantError::DequantizeUnsupported(dtype));
    }
    let expected = byte_len(dtype, out.len())?;
    if bytes.len() != expected {
        return Err(QuantError::ByteLength {
            dtype,
            n_values: out.len(),
            expected,
            got: bytes.len(),
        });
    }
    let bs = dtype.block_size();
    match dtype {
        F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        Bf16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        Q4_0 => dequantize_blocks(bs, bytes, out, dequantize_row_q4_0),
        Q4_1 => dequantize_blocks(bs, bytes, out, dequantize_row_q4_1),
        Q5_0 => dequantize_blocks(bs, bytes, out, dequantize_row_q5_0),
        Q5_1 => dequantize_blocks(bs, bytes, out, dequantize_row_q5_1),
        Q8_0 => dequantize_blocks(bs, bytes, out, dequantize_row_q8_0),
        Q8_1 => dequantize_blocks(bs, bytes, out, dequantize_row_q8_1),
        Q2K => dequantize_blocks(bs, bytes, out, dequantize_row_q2_k),
        Q3K => dequantize_blocks(bs, bytes, out, dequantize_row_q3_k),
        Q4K => dequantize_blocks(bs, bytes, out, dequantize_row_q4_k),
        Q5K => dequantize_blocks(bs, bytes, out, dequantize_row_q5_k),
        Q6K => dequantize_blocks(bs, bytes, out, dequantize_row_q6_k),
        Q8K => dequantize_blocks(bs, bytes, out, dequantize_row_q8_k),
        _ => return Err(QuantError::DequantizeUnsupported(dtype)),
    }
    Ok(())
}
