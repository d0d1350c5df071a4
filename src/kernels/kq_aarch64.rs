//! aarch64 K-quant tiles: NEON with the dot-product extension (`sdot`).
//!
//! A weight super-block is unpacked once into 16 registers of 16 codes (element
//! order, unsigned, so they are valid i8); per token each register is `sdot`ted with
//! its 16 activation codes and multiplied by its sub-block scale into an i32x4
//! (`mla` by scalar). Offsets go through the activations' `bsums`: q2_K / q4_K / q5_K
//! subtract `dmin * sum(bsums * min)`, q6_K's `- 32` is `- 32 * sum(bsums * scale)`,
//! q3_K's `- 4` likewise.
//! Integer sums are exact (|lane| < 2^29), so each super-block contributes the same
//! integers as the scalar twin; only the f32 order differs.
//!
//! Run in CI under qemu-aarch64 by scripts/test_aarch64.sh: tests/kquants.rs holds it
//! against the scalar twin there, and the K-quant fixture's logits against transformers'.

use super::aarch64::{h2f, sdot};
use super::kq::KqKernels;
use super::kq_generic::{scales_mins_k4, scales_q3_k};
use core::arch::aarch64::*;
use quant_formats::block::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};

/// The NEON K table, if this CPU has NEON, the dot-product extension and fp16 conversions.
pub(super) fn neon() -> Option<&'static KqKernels> {
    let ok = std::arch::is_aarch64_feature_detected!("neon")
        && std::arch::is_aarch64_feature_detected!("dotprod")
        && std::arch::is_aarch64_feature_detected!("fp16");
    ok.then_some(&NEON)
}

static NEON: KqKernels = KqKernels {
    name: "neon",
    tile_tokens: 4,
    q2_k,
    q3_k,
    q4_k,
    q5_k,
    q6_k,
    q4_k_rows: None,
    q5_k_rows: None,
    q6_k_rows: None,
};

#[target_feature(enable = "neon")]
#[inline]
fn ld_u8(s: &[u8]) -> uint8x16_t {
    assert!(s.len() >= 16);
    // SAFETY: s holds at least 16 readable bytes (checked).
    unsafe { vld1q_u8(s.as_ptr()) }
}

#[target_feature(enable = "neon")]
#[inline]
fn ld_s8(s: &[i8]) -> int8x16_t {
    assert!(s.len() >= 16);
    // SAFETY: s holds at least 16 readable bytes (checked).
    unsafe { vld1q_s8(s.as_ptr()) }
}

#[target_feature(enable = "neon")]
#[inline]
fn ld_s16(s: &[i16]) -> int16x8_t {
    assert!(s.len() >= 8);
    // SAFETY: s holds at least 8 readable i16 (checked).
    unsafe { vld1q_s16(s.as_ptr()) }
}

/// `sum(bsums[j] * m[j])` over the 16 bsums of a q8_K block (|result| < 2^23).
#[target_feature(enable = "neon")]
#[inline]
fn dot_bsums(bs: &[i16; 16], m: [int16x8_t; 2]) -> i32 {
    let (b0, b1) = (ld_s16(&bs[..8]), ld_s16(&bs[8..]));
    let p = vmull_s16(vget_low_s16(b0), vget_low_s16(m[0]));
    let p = vmlal_high_s16(p, b0, m[0]);
    let p = vmlal_s16(p, vget_low_s16(b1), vget_low_s16(m[1]));
    let p = vmlal_high_s16(p, b1, m[1]);
    vaddvq_s32(p)
}

/// The 256 4-bit codes of q4_K / q5_K in element order, 16 per register.
#[target_feature(enable = "neon")]
#[inline]
fn codes_k4(qs: &[u8; 128]) -> [uint8x16_t; 16] {
    let m4 = vdupq_n_u8(0x0F);
    let mut q = [vdupq_n_u8(0); 16];
    for j in 0..4 {
        // 32 bytes hold 64 elements: low nibbles, then high nibbles.
        let (a, b) = (ld_u8(&qs[32 * j..]), ld_u8(&qs[32 * j + 16..]));
        q[4 * j] = vandq_u8(a, m4);
        q[4 * j + 1] = vandq_u8(b, m4);
        q[4 * j + 2] = vshrq_n_u8::<4>(a);
        q[4 * j + 3] = vshrq_n_u8::<4>(b);
    }
    q
}

/// Per token: `sum_s sc[s] * dot(sub-block s)`, sub-blocks of 32 (q4_K / q5_K).
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn isum_k4(q: &[uint8x16_t; 16], sc: &[u8; 8], y: &[i8; 256]) -> i32 {
    let z = vdupq_n_s32(0);
    let mut isum = z;
    for s in 0..8 {
        let p = sdot(z, vreinterpretq_s8_u8(q[2 * s]), ld_s8(&y[32 * s..]));
        let p = sdot(
            p,
            vreinterpretq_s8_u8(q[2 * s + 1]),
            ld_s8(&y[32 * s + 16..]),
        );
        isum = vmlaq_n_s32(isum, p, sc[s] as i32);
    }
    vaddvq_s32(isum)
}

/// q4_K / q5_K tile over already unpacked codes.
macro_rules! k4_tile {
    ($inner:ident, $w:ty, |$b:ident| $codes:expr) => {
        #[target_feature(enable = "neon,dotprod,fp16")]
        fn $inner<const NT: usize>(w: &[$w], x: &[BlockQ8K], out: &mut [f32]) {
            let nb = w.len();
            let mut sumf = [0.0f32; NT];
            for (i, $b) in w.iter().enumerate() {
                let q = $codes;
                let (sc, mn) = scales_mins_k4(&$b.scales);
                let m: [i16; 16] = std::array::from_fn(|j| mn[j / 2] as i16);
                let mins = [ld_s16(&m[..8]), ld_s16(&m[8..])];
                let (dw, dmw) = (h2f($b.d), h2f($b.dmin));
                for t in 0..NT {
                    let y = &x[t * nb + i];
                    let isum = isum_k4(&q, &sc, &y.qs);
                    let msum = dot_bsums(&y.bsums, mins);
                    sumf[t] += (dw * y.d) * isum as f32 - (dmw * y.d) * msum as f32;
                }
            }
            out.copy_from_slice(&sumf);
        }
    };
}

k4_tile!(q4_k_t, BlockQ4K, |b| codes_k4(&b.qs));

// q5_K: bit 2j of qh[l] is the fifth bit of the j-th 64's low-nibble element l, bit
// 2j + 1 that of its high-nibble element.
k4_tile!(q5_k_t, BlockQ5K, |b| {
    let mut q = codes_k4(&b.qs);
    let (h0, h1) = (ld_u8(&b.qh[..16]), ld_u8(&b.qh[16..]));
    let s = vdupq_n_u8(16);
    for j in 0..4 {
        let (lo, hi) = (vdupq_n_u8(1 << (2 * j)), vdupq_n_u8(2 << (2 * j)));
        q[4 * j] = vorrq_u8(q[4 * j], vandq_u8(vtstq_u8(h0, lo), s));
        q[4 * j + 1] = vorrq_u8(q[4 * j + 1], vandq_u8(vtstq_u8(h1, lo), s));
        q[4 * j + 2] = vorrq_u8(q[4 * j + 2], vandq_u8(vtstq_u8(h0, hi), s));
        q[4 * j + 3] = vorrq_u8(q[4 * j + 3], vandq_u8(vtstq_u8(h1, hi), s));
    }
    q
});

/// The 256 6-bit codes of q6_K (unsigned, before `- 32`) in element order.
#[target_feature(enable = "neon")]
#[inline]
fn codes_q6(ql: &[u8; 128], qh: &[u8; 64]) -> [uint8x16_t; 16] {
    let m4 = vdupq_n_u8(0x0F);
    let m3 = vdupq_n_u8(0x03);
    let mut q = [vdupq_n_u8(0); 16];
    for h in 0..2 {
        let l: [uint8x16_t; 4] = std::array::from_fn(|k| ld_u8(&ql[64 * h + 16 * k..]));
        for half in 0..2 {
            let hb = ld_u8(&qh[32 * h + 16 * half..]);
            // Elements 128h + 32 * quarter + 16 * half + (0..16).
            let hi = |v: uint8x16_t| vshlq_n_u8::<4>(vandq_u8(v, m3));
            q[8 * h + half] = vorrq_u8(vandq_u8(l[half], m4), hi(hb));
            q[8 * h + 2 + half] = vorrq_u8(vandq_u8(l[2 + half], m4), hi(vshrq_n_u8::<2>(hb)));
            q[8 * h + 4 + half] = vorrq_u8(vshrq_n_u8::<4>(l[half]), hi(vshrq_n_u8::<4>(hb)));
            q[8 * h + 6 + half] = vorrq_u8(
                vshrq_n_u8::<4>(l[2 + half]),
                vshlq_n_u8::<4>(vshrq_n_u8::<6>(hb)),
            );
        }
    }
    q
}

#[target_feature(enable = "neon,dotprod,fp16")]
fn q6_k_t<const NT: usize>(w: &[BlockQ6K], x: &[BlockQ8K], out: &mut [f32]) {
    let nb = w.len();
    let mut sumf = [0.0f32; NT];
    for (i, b) in w.iter().enumerate() {
        let q = codes_q6(&b.ql, &b.qh);
        let sc8 = ld_s8(&b.scales);
        let sc16 = [vmovl_s8(vget_low_s8(sc8)), vmovl_high_s8(sc8)];
        let sc: [i32; 16] = std::array::from_fn(|k| b.scales[k] as i32);
        let dw = h2f(b.d);
        for t in 0..NT {
            let y = &x[t * nb + i];
            let isum = isum_16(&q, &sc, &y.qs);
            let off = dot_bsums(&y.bsums, sc16);
            sumf[t] += (dw * y.d) * (isum - 32 * off) as f32;
        }
    }
    out.copy_from_slice(&sumf);
}

/// The 256 two-bit codes of q2_K / q3_K's `qs` in element order: per 128 elements, 32
/// bytes whose bits 2j..2j+2 are elements 32j..32j+32.
#[target_feature(enable = "neon")]
#[inline]
fn codes_k2(qs: &[u8; 64]) -> [uint8x16_t; 16] {
    let m3 = vdupq_n_u8(3);
    let mut q = [vdupq_n_u8(0); 16];
    for k in 0..2 {
        for half in 0..2 {
            let v = ld_u8(&qs[32 * k + 16 * half..]);
            q[8 * k + half] = vandq_u8(v, m3);
            q[8 * k + 2 + half] = vandq_u8(vshrq_n_u8::<2>(v), m3);
            q[8 * k + 4 + half] = vandq_u8(vshrq_n_u8::<4>(v), m3);
            q[8 * k + 6 + half] = vshrq_n_u8::<6>(v);
        }
    }
    q
}

/// Per token: `sum_k sc[k] * dot(codes k, y[16k..16k + 16])`, sub-blocks of 16.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn isum_16(q: &[uint8x16_t; 16], sc: &[i32; 16], y: &[i8; 256]) -> i32 {
    let z = vdupq_n_s32(0);
    let mut isum = z;
    for k in 0..16 {
        let p = sdot(z, vreinterpretq_s8_u8(q[k]), ld_s8(&y[16 * k..]));
        isum = vmlaq_n_s32(isum, p, sc[k]);
    }
    vaddvq_s32(isum)
}

#[target_feature(enable = "neon,dotprod,fp16")]
fn q2_k_t<const NT: usize>(w: &[BlockQ2K], x: &[BlockQ8K], out: &mut [f32]) {
    let nb = w.len();
    let mut sumf = [0.0f32; NT];
    for (i, b) in w.iter().enumerate() {
        let q = codes_k2(&b.qs);
        let sc: [i32; 16] = std::array::from_fn(|k| (b.scales[k] & 0x0F) as i32);
        let m: [i16; 16] = std::array::from_fn(|k| (b.scales[k] >> 4) as i16);
        let mins = [ld_s16(&m[..8]), ld_s16(&m[8..])];
        let (dw, dmw) = (h2f(b.d), h2f(b.dmin));
        for t in 0..NT {
            let y = &x[t * nb + i];
            let isum = isum_16(&q, &sc, &y.qs);
            let msum = dot_bsums(&y.bsums, mins);
            sumf[t] += (dw * y.d) * isum as f32 - (dmw * y.d) * msum as f32;
        }
    }
    out.copy_from_slice(&sumf);
}

#[target_feature(enable = "neon,dotprod,fp16")]
fn q3_k_t<const NT: usize>(w: &[BlockQ3K], x: &[BlockQ8K], out: &mut [f32]) {
    let nb = w.len();
    let mut sumf = [0.0f32; NT];
    for (i, b) in w.iter().enumerate() {
        let mut q = codes_k2(&b.qs);
        // Third bit: bit i / 32 of hmask[i % 32] (register k holds elements 16k..16k+16).
        let h = [ld_u8(&b.hmask[..16]), ld_u8(&b.hmask[16..])];
        let four = vdupq_n_u8(4);
        for k in 0..16 {
            let bit = vdupq_n_u8(1 << (k / 2));
            q[k] = vorrq_u8(q[k], vandq_u8(vtstq_u8(h[k % 2], bit), four));
        }
        let sc8 = scales_q3_k(&b.scales);
        let sc: [i32; 16] = std::array::from_fn(|k| sc8[k] as i32);
        let s16 = ld_s8(&sc8);
        let sc16 = [vmovl_s8(vget_low_s8(s16)), vmovl_high_s8(s16)];
        let dw = h2f(b.d);
        for t in 0..NT {
            let y = &x[t * nb + i];
            let isum = isum_16(&q, &sc, &y.qs);
            let off = dot_bsums(&y.bsums, sc16);
            sumf[t] += (dw * y.d) * (isum - 4 * off) as f32;
        }
    }
    out.copy_from_slice(&sumf);
}

/// Safe entry point over the `#[target_feature]` tile `$inner::<NT>`, NT in 1..=4.
macro_rules! wrap_tile {
    ($name:ident, $inner:ident, $w:ty) => {
        fn $name(w: &[$w], x: &[BlockQ8K], out: &mut [f32]) {
            let nb = w.len();
            let nt = out.len();
            assert!(
                (1..=4).contains(&nt) && x.len() == nb * nt,
                "kq tile: {} activation blocks for {nt} tokens x {nb} (max 4 tokens)",
                x.len()
            );
            // SAFETY: only reachable through the table `neon()` returns after checking
            // NEON, dotprod and fp16 at run time; lengths were checked just above.
            unsafe {
                match nt {
                    1 => $inner::<1>(w, x, out),
                    2 => $inner::<2>(w, x, out),
                    3 => $inner::<3>(w, x, out),
                    _ => $inner::<4>(w, x, out),
                }
            }
        }
    };
}

wrap_tile!(q2_k, q2_k_t, BlockQ2K);
wrap_tile!(q3_k, q3_k_t, BlockQ3K);
wrap_tile!(q4_k, q4_k_t, BlockQ4K);
wrap_tile!(q5_k, q5_k_t, BlockQ5K);
wrap_tile!(q6_k, q6_k_t, BlockQ6K);
