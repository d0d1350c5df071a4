//! Scalar K-quant dot products against q8_K activations: the spec the SIMD levels are
//! tested against. A port of ggml's `ggml_vec_dot_q4_K_q8_K_generic`,
//! `ggml_vec_dot_q5_K_q8_K_generic`, `ggml_vec_dot_q6_K_q8_K_generic` and
//! `ggml_vec_dot_q3_K_q8_K_generic` (`ggml/src/ggml-cpu/quants.c`): the codes of a
//! super-block are unpacked to i8, multiplied with the activation codes in 8 integer
//! lanes (element `i % 8`) weighted by the sub-block scale, and each lane is added to
//! its own f32 sum as `d_w * d_x * lane`; q4_K / q5_K subtract `dmin_w * d_x *
//! sum(bsums * mins)` per super-block. q2_K follows `ggml_vec_dot_q2_K_q8_K_generic`
//! (one integer sum per super-block, `d * isum - dmin * summs`). The result is the
//! value ggml's generic build computes, in the same float order.

use super::kq::{
    kgemm_shape, pair16, ActKGemm, KGemmRows, KGemmType, KqGemm, KqKernels, KQ_GEMM_ROWS,
    KQ_GEMM_TOKENS, MAX_KQ_TILE_TOKENS,
};
use half::f16;
use quant_formats::block::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QK_K};

/// The scalar K table.
pub static SCALAR: KqKernels = KqKernels {
    name: "scalar",
    tile_tokens: 4,
    q2_k: tile_q2_k,
    q3_k: tile_q3_k,
    q4_k: tile_q4_k,
    q5_k: tile_q5_k,
    q6_k: tile_q6_k,
    q4_k_rows: None,
    q5_k_rows: None,
    q6_k_rows: None,
};

/// The 8 six-bit scales and 8 six-bit mins packed in a q4_K / q5_K block's 12 bytes,
/// unpacked as ggml's `utmp` shuffle does (kmask1/2/3): (scales, mins).
#[inline]
pub fn scales_mins_k4(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let u = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (u0, u1, u2) = (u(0), u(1), u(2));
    let sc_lo = u0 & KMASK1;
    let sc_hi = (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4);
    let mn_lo = u1 & KMASK1;
    let mn_hi = ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4);
    let join = |a: u32, b: u32| {
        let (a, b) = (a.to_le_bytes(), b.to_le_bytes());
        [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]
    };
    (join(sc_lo, sc_hi), join(mn_lo, mn_hi))
}

/// One super-block's integer part: `aux32[l] += scale(j) * a[i] * q8[i]` over every
/// element `i` (lane `l = i % 8`), with `scale(j)` the scale of element `i`'s
/// sub-block of `sub` elements.
#[inline]
fn lanes(a: &[i8; QK_K], q8: &[i8; QK_K], scales: impl Fn(usize) -> i32, sub: usize) -> [i32; 8] {
    let mut aux32 = [0i32; 8];
    for (j, (aj, qj)) in a.chunks_exact(sub).zip(q8.chunks_exact(sub)).enumerate() {
        let scale = scales(j);
        for (a8, q8) in aj.chunks_exact(8).zip(qj.chunks_exact(8)) {
            for l in 0..8 {
                // ggml's aux16 = q8 * a fits i16: |a| <= 32, |q8| <= 128.
                aux32[l] += scale * (q8[l] as i16 * a8[l] as i16) as i32;
            }
        }
    }
    aux32
}

/// q4_K codes of a super-block in element order: for each 64 elements, the low
/// nibbles of 32 bytes then their high nibbles.
#[inline]
fn codes_q4_k(qs: &[u8; QK_K / 2]) -> [i8; QK_K] {
    std::array::from_fn(|i| {
        let (j, l) = (i / 64, i % 64);
        let b = qs[32 * j + l % 32];
        (if l < 32 { b & 0x0F } else { b >> 4 }) as i8
    })
}

/// q4_K · q8_K (`ggml_vec_dot_q4_K_q8_K_generic`).
pub fn vec_dot_q4_k(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
    assert_eq!(
        w.len(),
        x.len(),
        "vec_dot_q4_k: {} weight blocks, {} activation blocks",
        w.len(),
        x.len()
    );
    let mut sums = [0.0f32; 8];
    let mut sumf = 0.0f32;
    for (b, y) in w.iter().zip(x) {
        let a = codes_q4_k(&b.qs);
        let (sc, mn) = scales_mins_k4(&b.scales);
        let sumi: i32 = (0..QK_K / 16)
            .map(|j| y.bsums[j] as i32 * mn[j / 2] as i32)
            .sum();
        let aux32 = lanes(&a, &y.qs, |j| sc[j] as i32, 32);
        let d = b.d.to_f32() * y.d;
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
        let dmin = b.dmin.to_f32() * y.d;
        sumf -= dmin * sumi as f32;
    }
    for s in sums {
        sumf += s;
    }
    sumf
}

/// q5_K codes of a super-block in element order: q4_K's nibbles plus 16 where the
/// element's bit of `qh` is set (bit `2j` for the low nibbles of the j-th 64, `2j+1`
/// for the high ones).
#[inline]
fn codes_q5_k(qs: &[u8; QK_K / 2], qh: &[u8; QK_K / 8]) -> [i8; QK_K] {
    let lo = codes_q4_k(qs);
    std::array::from_fn(|i| {
        let bit = i / 32;
        lo[i] + if qh[i % 32] & (1 << bit) != 0 { 16 } else { 0 }
    })
}

/// q5_K · q8_K (`ggml_vec_dot_q5_K_q8_K_generic`).
pub fn vec_dot_q5_k(w: &[BlockQ5K], x: &[BlockQ8K]) -> f32 {
    assert_eq!(
        w.len(),
        x.len(),
        "vec_dot_q5_k: {} weight blocks, {} activation blocks",
        w.len(),
        x.len()
    );
    let mut sums = [0.0f32; 8];
    let mut sumf = 0.0f32;
    for (b, y) in w.iter().zip(x) {
        let a = codes_q5_k(&b.qs, &b.qh);
        let (sc, mn) = scales_mins_k4(&b.scales);
        let sumi: i32 = (0..QK_K / 16)
            .map(|j| y.bsums[j] as i32 * mn[j / 2] as i32)
            .sum();
        let aux32 = lanes(&a, &y.qs, |j| sc[j] as i32, 32);
        let d = b.d.to_f32() * y.d;
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
        let dmin = b.dmin.to_f32() * y.d;
        sumf -= dmin * sumi as f32;
    }
    for s in sums {
        sumf += s;
    }
    sumf
}

/// q6_K codes of a super-block in element order, minus 32: per 128 elements, low
/// nibbles of `ql[0..32]`, `ql[32..64]`, then high nibbles of the same, each with two
/// bits of `qh[0..32]` (bits 0-1, 2-3, 4-5, 6-7) on top.
#[inline]
fn codes_q6_k(ql: &[u8; QK_K / 2], qh: &[u8; QK_K / 4]) -> [i8; QK_K] {
    std::array::from_fn(|i| {
        let (h, r) = (i / 128, i % 128);
        let (quarter, l) = (r / 32, r % 32);
        let q = &ql[64 * h..64 * h + 64];
        let hb = (qh[32 * h + l] >> (2 * quarter)) & 3;
        let lo = match quarter {
            0 => q[l] & 0x0F,
            1 => q[l + 32] & 0x0F,
            2 => q[l] >> 4,
            _ => q[l + 32] >> 4,
        };
        (lo | (hb << 4)) as i8 - 32
    })
}

/// q6_K · q8_K (`ggml_vec_dot_q6_K_q8_K_generic`).
pub fn vec_dot_q6_k(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
    assert_eq!(
        w.len(),
        x.len(),
        "vec_dot_q6_k: {} weight blocks, {} activation blocks",
        w.len(),
        x.len()
    );
    let mut sums = [0.0f32; 8];
    for (b, y) in w.iter().zip(x) {
        let a = codes_q6_k(&b.ql, &b.qh);
        let aux32 = lanes(&a, &y.qs, |j| b.scales[j] as i32, 16);
        let d = b.d.to_f32() * y.d;
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
    }
    let mut sumf = 0.0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}

/// q2_K · q8_K (`ggml_vec_dot_q2_K_q8_K_generic`): 2-bit codes, per 16 values a 4-bit
/// scale (low nibble of `scales[j]`) and a 4-bit min (high nibble).
pub fn vec_dot_q2_k(w: &[BlockQ2K], x: &[BlockQ8K]) -> f32 {
    assert_eq!(
        w.len(),
        x.len(),
        "vec_dot_q2_k: {} weight blocks, {} activation blocks",
        w.len(),
        x.len()
    );
    let mut sumf = 0.0f32;
    for (b, y) in w.iter().zip(x) {
        let summs: i32 = (0..16)
            .map(|j| y.bsums[j] as i32 * (b.scales[j] >> 4) as i32)
            .sum();
        let dall = y.d * b.d.to_f32();
        let dmin = y.d * b.dmin.to_f32();
        let mut isum = 0i32;
        for i in 0..QK_K {
            // Element i: byte 32 * (i / 128) + i % 32, bits 2 * ((i / 32) % 4).
            let q = (b.qs[32 * (i / 128) + i % 32] >> (2 * ((i / 32) % 4))) & 3;
            isum += (b.scales[i / 16] & 0x0F) as i32 * (y.qs[i] as i32 * q as i32);
        }
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

/// q3_K's sixteen 6-bit scales (stored + 32) as signed values, as ggml's `auxs` shuffle.
#[inline]
pub fn scales_q3_k(s: &[u8; 12]) -> [i8; 16] {
    std::array::from_fn(|j| {
        let lo = if j < 8 { s[j] & 0x0F } else { s[j - 8] >> 4 };
        let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        (lo | (hi << 4)) as i8 - 32
    })
}

/// q3_K codes of a super-block in element order: two bits of `qs` (q2_K's order) minus
/// 4 unless the element's bit of `hmask` is set (bit `i / 32` of `hmask[i % 32]`).
#[inline]
fn codes_q3_k(qs: &[u8; QK_K / 4], hmask: &[u8; QK_K / 8]) -> [i8; QK_K] {
    std::array::from_fn(|i| {
        let q = (qs[32 * (i / 128) + i % 32] >> (2 * ((i / 32) % 4))) & 3;
        let h = hmask[i % 32] & (1 << (i / 32)) != 0;
        q as i8 - if h { 0 } else { 4 }
    })
}

/// q3_K · q8_K (`ggml_vec_dot_q3_K_q8_K_generic`).
pub fn vec_dot_q3_k(w: &[BlockQ3K], x: &[BlockQ8K]) -> f32 {
    assert_eq!(
        w.len(),
        x.len(),
        "vec_dot_q3_k: {} weight blocks, {} activation blocks",
        w.len(),
        x.len()
    );
    let mut sums = [0.0f32; 8];
    for (b, y) in w.iter().zip(x) {
        let a = codes_q3_k(&b.qs, &b.hmask);
        let sc = scales_q3_k(&b.scales);
        let aux32 = lanes(&a, &y.qs, |j| sc[j] as i32, 16);
        let d = b.d.to_f32() * y.d;
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
    }
    let mut sumf = 0.0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}

/// A tile kernel from a dot product: `out[t] = dot(w, x[t])`.
macro_rules! kq_tile {
    ($name:ident, $dot:ident, $w:ty) => {
        #[doc = concat!("Tile of `", stringify!($dot), "`: `out[t] = dot(w, x[t])`.")]
        pub fn $name(w: &[$w], x: &[BlockQ8K], out: &mut [f32]) {
            let nb = w.len();
            assert!(
                (1..=MAX_KQ_TILE_TOKENS).contains(&out.len()) && x.len() == nb * out.len(),
                "kq tile: {} activation blocks for {} tokens x {nb}",
                x.len(),
                out.len()
            );
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

kq_tile!(tile_q2_k, vec_dot_q2_k, BlockQ2K);
kq_tile!(tile_q3_k, vec_dot_q3_k, BlockQ3K);
kq_tile!(tile_q4_k, vec_dot_q4_k, BlockQ4K);
kq_tile!(tile_q5_k, vec_dot_q5_k, BlockQ5K);
kq_tile!(tile_q6_k, vec_dot_q6_k, BlockQ6K);

// ---------------------------------------------------------------------------
// K GEMM (prefill): the scalar twin of the SIMD GEMMs, see `kq::KGemmRows` and
// `kq::KGemmFn`. The integers are the tiles' (exact); the float steps are one fused
// multiply-add per super-block and sum, as the SIMD kernels do them.

/// The scalar K GEMM table: the spec the SIMD GEMMs are tested against.
pub static GEMM: KqGemm = KqGemm {
    prefetch: |_| {},
    q2_k: KGemmType {
        unpack: unpack_q2_k,
        gemm: gemm_sep::<false>,
    },
    q3_k: KGemmType {
        unpack: unpack_q3_k,
        gemm: gemm_joint,
    },
    q4_k: KGemmType {
        unpack: unpack_q4_k,
        gemm: gemm_sep::<true>,
    },
    q5_k: KGemmType {
        unpack: unpack_q5_k,
        gemm: gemm_sep::<true>,
    },
    q6_k: KGemmType {
        unpack: unpack_q6_k,
        gemm: gemm_joint,
    },
};

/// Unpacks each block of `w`: its codes with `codes` (None: left for the caller, the
/// SIMD unpackers), its scales, pair weights, d and dmin with `meta`.
#[inline]
pub fn unpack_with<W>(
    w: &[W],
    rows: &mut KGemmRows,
    codes: Option<fn(&W, &mut [u8; QK_K])>,
    meta: impl Fn(&W, &mut [i32; 16], &mut [i32; 8]) -> (f32, f32),
) {
    rows.check(w.len());
    for (i, b) in w.iter().enumerate() {
        if let Some(codes) = codes {
            let q = &mut rows.q[i * QK_K..(i + 1) * QK_K];
            codes(b, q.try_into().expect("QK_K codes"));
        }
        let sc = &mut rows.sc[i * 16..(i + 1) * 16];
        let mw = &mut rows.mw[i * 8..(i + 1) * 8];
        (rows.d[i], rows.dmin[i]) = meta(
            b,
            sc.try_into().expect("16 scales"),
            mw.try_into().expect("8 pairs"),
        );
    }
}

/// q4_K / q5_K scales and mins: each 6-bit scale for its two 16s, the mins as pairs
/// (against `bs32`); (d, -dmin).
#[inline(always)]
fn meta_k4(s: &[u8; 12], d: f16, dmin: f16, sc: &mut [i32; 16], mw: &mut [i32; 8]) -> (f32, f32) {
    let (s8, m8) = scales_mins_k4(s);
    for (j, v) in sc.iter_mut().enumerate() {
        *v = s8[j / 2] as i32;
    }
    for (k, v) in mw.iter_mut().enumerate() {
        *v = if k < 4 {
            pair16(m8[2 * k] as i16, m8[2 * k + 1] as i16)
        } else {
            0
        };
    }
    (d.to_f32(), -dmin.to_f32())
}

/// q4_K: scales, mins and (d, -dmin) for the GEMM.
#[inline]
pub fn meta_q4_k(b: &BlockQ4K, sc: &mut [i32; 16], mw: &mut [i32; 8]) -> (f32, f32) {
    meta_k4(&b.scales, b.d, b.dmin, sc, mw)
}

/// q5_K: as q4_K.
#[inline]
pub fn meta_q5_k(b: &BlockQ5K, sc: &mut [i32; 16], mw: &mut [i32; 8]) -> (f32, f32) {
    meta_k4(&b.scales, b.d, b.dmin, sc, mw)
}

/// q6_K: scales sign-extended, the `- 32` as `-32 * scale` pairs (against `bs16`); (d, 0).
#[inline]
pub fn meta_q6_k(b: &BlockQ6K, sc: &mut [i32; 16], mw: &mut [i32; 8]) -> (f32, f32) {
    for (v, &s) in sc.iter_mut().zip(&b.scales) {
        *v = s as i32;
    }
    for (k, v) in mw.iter_mut().enumerate() {
        let (lo, hi) = (b.scales[2 * k] as i16, b.scales[2 * k + 1] as i16);
        *v = pair16(-32 * lo, -32 * hi);
    }
    (b.d.to_f32(), 0.0)
}

/// q3_K: scales in the low i16, the `- 4` as `-4 * scale` pairs (against `bs16`); (d, 0).
#[inline]
pub fn meta_q3_k(b: &BlockQ3K, sc: &mut [i32; 16], mw: &mut [i32; 8]) -> (f32, f32) {
    let s = scales_q3_k(&b.scales);
    for (v, &s) in sc.iter_mut().zip(&s) {
        *v = pair16(s as i16, 0);
    }
    for (k, v) in mw.iter_mut().enumerate() {
        *v = pair16(-4 * s[2 * k] as i16, -4 * s[2 * k + 1] as i16);
    }
    (b.d.to_f32(), 0.0)
}

/// q2_K: 4-bit scales, the 4-bit mins as pairs (against `bs16`); (d, -dmin).
#[inline]
pub fn meta_q2_k(b: &BlockQ2K, sc: &mut [i32; 16], mw: &mut [i32; 8]) -> (f32, f32) {
    for (v, &s) in sc.iter_mut().zip(&b.scales) {
        *v = (s & 0x0F) as i32;
    }
    for (k, v) in mw.iter_mut().enumerate() {
        *v = pair16(
            (b.scales[2 * k] >> 4) as i16,
            (b.scales[2 * k + 1] >> 4) as i16,
        );
    }
    (b.d.to_f32(), -b.dmin.to_f32())
}

/// q4_K rows for the GEMM: codes 0..16.
pub fn unpack_q4_k(w: &[BlockQ4K], rows: &mut KGemmRows) {
    let codes = |b: &BlockQ4K, q: &mut [u8; QK_K]| {
        for (o, c) in q.iter_mut().zip(codes_q4_k(&b.qs)) {
            *o = c as u8;
        }
    };
    unpack_with(w, rows, Some(codes), meta_q4_k)
}

/// q5_K rows for the GEMM: codes 0..32.
pub fn unpack_q5_k(w: &[BlockQ5K], rows: &mut KGemmRows) {
    let codes = |b: &BlockQ5K, q: &mut [u8; QK_K]| {
        for (o, c) in q.iter_mut().zip(codes_q5_k(&b.qs, &b.qh)) {
            *o = c as u8;
        }
    };
    unpack_with(w, rows, Some(codes), meta_q5_k)
}

/// q6_K rows for the GEMM: codes 0..64 (the stored ones, `- 32` not applied).
pub fn unpack_q6_k(w: &[BlockQ6K], rows: &mut KGemmRows) {
    let codes = |b: &BlockQ6K, q: &mut [u8; QK_K]| {
        for (o, c) in q.iter_mut().zip(codes_q6_k(&b.ql, &b.qh)) {
            *o = (c + 32) as u8;
        }
    };
    unpack_with(w, rows, Some(codes), meta_q6_k)
}

/// q3_K rows for the GEMM: codes 0..8 (`- 4` not applied).
pub fn unpack_q3_k(w: &[BlockQ3K], rows: &mut KGemmRows) {
    let codes = |b: &BlockQ3K, q: &mut [u8; QK_K]| {
        for (o, c) in q.iter_mut().zip(codes_q3_k(&b.qs, &b.hmask)) {
            *o = (c + 4) as u8;
        }
    };
    unpack_with(w, rows, Some(codes), meta_q3_k)
}

/// q2_K rows for the GEMM: codes 0..4.
pub fn unpack_q2_k(w: &[BlockQ2K], rows: &mut KGemmRows) {
    let codes = |b: &BlockQ2K, q: &mut [u8; QK_K]| {
        for (i, o) in q.iter_mut().enumerate() {
            *o = (b.qs[32 * (i / 128) + i % 32] >> (2 * ((i / 32) % 4))) & 3;
        }
    };
    unpack_with(w, rows, Some(codes), meta_q2_k)
}

/// (isum, msum) of unpacked block `i` against token `t` of `xb`: isum = sum of code *
/// activation * scale (the scale is the word's low i16), msum = sum of the `mw` pairs
/// times the block sums (`bs32` when `BS32`, else `bs16`).
#[inline]
fn kgemm_ints<const BS32: bool>(w: &KGemmRows, i: usize, xb: &ActKGemm, t: usize) -> (i32, i32) {
    let mut isum = 0i32;
    for c in 0..QK_K / 4 {
        let s = w.sc[i * 16 + c / 4] as i16 as i32;
        let a = &xb.q[c][4 * t..4 * t + 4];
        let q = &w.q[i * QK_K + 4 * c..i * QK_K + 4 * c + 4];
        let p: i32 = a.iter().zip(q).map(|(&a, &q)| a as i32 * q as i32).sum();
        isum += s * p;
    }
    let lohi = |v: i32| (v as i16 as i32, (v >> 16) as i16 as i32);
    let mut msum = 0i32;
    for k in 0..if BS32 { 4 } else { 8 } {
        let bs = if BS32 { xb.bs32[k][t] } else { xb.bs16[k][t] };
        let ((m0, m1), (b0, b1)) = (lohi(w.mw[i * 8 + k]), lohi(bs));
        msum += m0 * b0 + m1 * b1;
    }
    (isum, msum)
}

/// K GEMM for q2_K / q4_K / q5_K: per super-block `acc = fma(f32(msum), dmin * dx,
/// acc)` then `acc = fma(f32(isum), d * dx, acc)` (mins against `bs32` when `BS32`).
fn gemm_sep<const BS32: bool>(w: &KGemmRows, x: &[ActKGemm], out: &mut [f32]) {
    let (nb, n) = kgemm_shape(w, x.len(), out.len());
    for j in 0..n {
        for r in 0..KQ_GEMM_ROWS {
            for t in 0..KQ_GEMM_TOKENS {
                let mut acc = 0.0f32;
                for b in 0..nb {
                    let (i, xb) = (r * nb + b, &x[j * nb + b]);
                    let (isum, msum) = kgemm_ints::<BS32>(w, i, xb, t);
                    acc = (msum as f32).mul_add(w.dmin[i] * xb.d[t], acc);
                    acc = (isum as f32).mul_add(w.d[i] * xb.d[t], acc);
                }
                out[(j * KQ_GEMM_TOKENS + t) * KQ_GEMM_ROWS + r] = acc;
            }
        }
    }
}

/// K GEMM for q3_K / q6_K: `acc = fma(f32(isum + msum), d * dx, acc)` per super-block
/// (the offsets against `bs16`).
fn gemm_joint(w: &KGemmRows, x: &[ActKGemm], out: &mut [f32]) {
    let (nb, n) = kgemm_shape(w, x.len(), out.len());
    for j in 0..n {
        for r in 0..KQ_GEMM_ROWS {
            for t in 0..KQ_GEMM_TOKENS {
                let mut acc = 0.0f32;
                for b in 0..nb {
                    let (i, xb) = (r * nb + b, &x[j * nb + b]);
                    let (isum, msum) = kgemm_ints::<false>(w, i, xb, t);
                    acc = ((isum + msum) as f32).mul_add(w.d[i] * xb.d[t], acc);
                }
                out[(j * KQ_GEMM_TOKENS + t) * KQ_GEMM_ROWS + r] = acc;
            }
        }
    }
}
