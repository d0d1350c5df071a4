//! aarch64 kernels: NEON with the dot-product extension (`sdot`).
//!
//! One q8 block per step: the weight block's 32 codes as two 16-byte registers
//! (elements 0..16 and 16..32, the halves [`ActQ8x4`] stores side by side), two
//! `sdot`s into an i32x4, then `acc += f32(sum) * (d_w * d_x)` as ggml's NEON code.
//! Quantized tiles of four rows unpack each row's block once and load each token's
//! activations once for all four rows (as x86.rs's AVX-512 group tiles); other row
//! counts go row by row through the same code with one row, bit for bit alike.
//! `vdotq_s32` is still unstable in Rust, so `sdot` is one instruction of inline asm.
//! The activation quantizer is the scalar twin (it is not the bottleneck).
//!
//! Run in CI under qemu-aarch64 by scripts/test_aarch64.sh: tests/kernels.rs holds
//! every tile shape against the scalar twin there, and the forward logits against
//! transformers'.

use super::{act_groups, generic, ActQ8x4, Kernels};
use core::arch::aarch64::*;
use core::arch::asm;
use half::{bf16, f16};
use quant_formats::block::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};

/// The NEON table, if this CPU has NEON, the dot-product extension and fp16 conversions.
pub(super) fn neon() -> Option<&'static Kernels> {
    let ok = std::arch::is_aarch64_feature_detected!("neon")
        && std::arch::is_aarch64_feature_detected!("dotprod")
        && std::arch::is_aarch64_feature_detected!("fp16");
    ok.then_some(&NEON)
}

static NEON: Kernels = Kernels {
    name: "neon",
    variant: "",
    tile_tokens: 4,
    quantize: generic::quantize_q8,
    q4_0,
    q4_1,
    q5_0,
    q5_1,
    q8_0,
    f32: f32_tile,
    f16: f16_tile,
    bf16: bf16_tile,
    gemm: None,
};

/// `acc + sum of 4 neighbouring i8 products` per i32 lane (`sdot`).
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(super) fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut r = acc;
    // SAFETY: `sdot` reads and writes only these vector registers (no memory, no
    // flags); the dot-product extension is enabled for this function and checked at
    // run time before the table holding its callers is handed out.
    unsafe {
        asm!(
            "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
            inout(vreg) r,
            in(vreg) a,
            in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    r
}

/// One f16 as f32 (`fcvt`, exact).
#[target_feature(enable = "neon,fp16")]
#[inline]
pub(super) fn h2f(h: f16) -> f32 {
    vgetq_lane_f32::<0>(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h.to_bits()))))
}

/// Activation codes of block `b` (< 4) of a group: (elements 0..16, 16..32).
#[target_feature(enable = "neon")]
#[inline]
fn act_halves(g: &ActQ8x4, b: usize) -> (int8x16_t, int8x16_t) {
    let (lo, hi) = (&g.lo[16 * b..16 * b + 16], &g.hi[16 * b..16 * b + 16]);
    // SAFETY: lo and hi are 16 readable bytes each.
    unsafe { (vld1q_s8(lo.as_ptr()), vld1q_s8(hi.as_ptr())) }
}

/// Nibbles of a q4 block: (low nibbles = elements 0..16, high = 16..32), unsigned.
#[target_feature(enable = "neon")]
#[inline]
fn nibbles(qs: &[u8; 16]) -> (uint8x16_t, uint8x16_t) {
    // SAFETY: qs is 16 readable bytes.
    let v = unsafe { vld1q_u8(qs.as_ptr()) };
    (vandq_u8(v, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(v))
}

/// 0x10 in byte j where bit j of the 16 bits `b0 | b1 << 8` is set.
#[target_feature(enable = "neon")]
#[inline]
fn high16(b0: u8, b1: u8) -> uint8x16_t {
    const BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    // SAFETY: BITS is 16 readable bytes.
    let m = unsafe { vld1q_u8(BITS.as_ptr()) };
    let v = vcombine_u8(vdup_n_u8(b0), vdup_n_u8(b1));
    vandq_u8(vtstq_u8(v, m), vdupq_n_u8(0x10))
}

/// q5 codes 0..32 of a block: (elements 0..16, 16..32).
#[target_feature(enable = "neon")]
#[inline]
fn q5_codes(qs: &[u8; 16], qh: [u8; 4]) -> (uint8x16_t, uint8x16_t) {
    let (lo, hi) = nibbles(qs);
    (
        vorrq_u8(lo, high16(qh[0], qh[1])),
        vorrq_u8(hi, high16(qh[2], qh[3])),
    )
}

fn s8(v: uint8x16_t, minus: i8) -> int8x16_t {
    // SAFETY: plain register arithmetic; NEON is part of every aarch64 target.
    unsafe { vsubq_s8(vreinterpretq_s8_u8(v), vdupq_n_s8(minus)) }
}

/// `$f::<R, NT>(args)` for the token count `nt` in 1..=4.
macro_rules! by_nt {
    ($nt:expr, $f:ident::<$r:literal>($($a:expr),*)) => {
        match $nt {
            1 => $f::<$r, 1>($($a),*),
            2 => $f::<$r, 2>($($a),*),
            3 => $f::<$r, 3>($($a),*),
            _ => $f::<$r, 4>($($a),*),
        }
    };
}

/// Tile of `R` weight rows x `NT` tokens over signed codes `$codes(block) -> (lo, hi)`.
/// Per block: each row's codes are unpacked once and each token's activations loaded
/// once (so one activation load feeds R rows), then R x NT `sdot` pairs and
/// `acc += f32(sum) * (d_w d_x)` per (row, token), as ggml's NEON code; `$m`: add
/// `m * s` (q4_1, q5_1), summed apart as ggml does. `w`: [R, nb], `x`: [NT, act_groups(nb)],
/// `out[t * R + r]`. Each (row, token) goes through the same operations in the same
/// order whatever R and NT are, so a result does not depend on the tile shape.
macro_rules! q_tile {
    ($inner:ident, $name:ident, $w:ty, $codes:expr, m = $m:tt) => {
        #[target_feature(enable = "neon,dotprod,fp16")]
        fn $inner<const R: usize, const NT: usize>(w: &[$w], x: &[ActQ8x4], out: &mut [f32]) {
            let nb = w.len() / R;
            let ng = act_groups(nb);
            assert!(w.len() == R * nb && x.len() == NT * ng && out.len() == R * NT);
            let mut acc = [[vdupq_n_f32(0.0); NT]; R];
            #[allow(unused_mut)] // only the m-offset types add to it
            let mut ms = [[0.0f32; NT]; R];
            for i in 0..nb {
                let (gi, b) = (i / 4, i % 4);
                let mut q = [(vdupq_n_s8(0), vdupq_n_s8(0)); R];
                let mut dw = [0.0f32; R];
                #[allow(unused_mut, unused_variables)] // only read by the m-offset types
                let mut mw = [0.0f32; R];
                for r in 0..R {
                    let wb = &w[r * nb + i];
                    q[r] = $codes(wb);
                    dw[r] = h2f(wb.d);
                    q_tile!(@m_load $m, wb, mw[r]);
                }
                for t in 0..NT {
                    let g = &x[t * ng + gi];
                    let (ylo, yhi) = act_halves(g, b);
                    for r in 0..R {
                        let p = sdot(sdot(vdupq_n_s32(0), q[r].0, ylo), q[r].1, yhi);
                        acc[r][t] = vfmaq_n_f32(acc[r][t], vcvtq_f32_s32(p), dw[r] * g.d[b]);
                        q_tile!(@m_acc $m, ms[r][t], mw[r], g, b);
                    }
                }
            }
            for t in 0..NT {
                for r in 0..R {
                    out[t * R + r] = vaddvq_f32(acc[r][t]) + ms[r][t];
                }
            }
        }

        /// Four rows in one 4-row tile; fewer one after another through the 1-row tile.
        fn $name(w: &[$w], rows: usize, x: &[ActQ8x4], out: &mut [f32]) {
            let (nb, nt) = super::q_tile_shape(w.len(), rows, x.len(), out.len(), 4);
            if rows == 4 {
                // SAFETY: only reachable through the table `neon()` returns after checking
                // NEON, dotprod and fp16 at run time; shapes checked above.
                unsafe { by_nt!(nt, $inner::<4>(w, x, out)) };
                return;
            }
            let mut col = [0.0f32; 4];
            for r in 0..rows {
                let (wr, o) = (&w[r * nb..(r + 1) * nb], &mut col[..nt]);
                // SAFETY: as above.
                unsafe { by_nt!(nt, $inner::<1>(wr, x, o)) };
                for t in 0..nt {
                    out[t * rows + r] = col[t];
                }
            }
        }
    };
    (@m_load yes, $wb:ident, $mw:expr) => {
        $mw = h2f($wb.m);
    };
    (@m_load no, $wb:ident, $mw:expr) => {};
    (@m_acc yes, $a:expr, $mw:expr, $g:ident, $b:ident) => {
        $a += $mw * $g.s[$b];
    };
    (@m_acc no, $a:expr, $mw:expr, $g:ident, $b:ident) => {};
}

q_tile!(
    q4_0_t,
    q4_0,
    BlockQ4_0,
    |b: &BlockQ4_0| {
        let (lo, hi) = nibbles(&b.qs);
        (s8(lo, 8), s8(hi, 8))
    },
    m = no
);
q_tile!(
    q4_1_t,
    q4_1,
    BlockQ4_1,
    |b: &BlockQ4_1| {
        let (lo, hi) = nibbles(&b.qs);
        (s8(lo, 0), s8(hi, 0))
    },
    m = yes
);
q_tile!(
    q5_0_t,
    q5_0,
    BlockQ5_0,
    |b: &BlockQ5_0| {
        let (lo, hi) = q5_codes(&b.qs, b.qh);
        (s8(lo, 16), s8(hi, 16))
    },
    m = no
);
q_tile!(
    q5_1_t,
    q5_1,
    BlockQ5_1,
    |b: &BlockQ5_1| {
        let (lo, hi) = q5_codes(&b.qs, b.qh);
        (s8(lo, 0), s8(hi, 0))
    },
    m = yes
);
q_tile!(
    q8_0_t,
    q8_0,
    BlockQ8_0,
    |b: &BlockQ8_0| {
        // SAFETY: qs is 32 readable bytes.
        unsafe { (vld1q_s8(b.qs.as_ptr()), vld1q_s8(b.qs.as_ptr().add(16))) }
    },
    m = no
);

/// Float tiles: 8 weights per step widened by `$load(ptr) -> (f32x4, f32x4)`.
macro_rules! float_tile {
    ($inner:ident, $name:ident, $w:ty, $load:expr, $to_f32:expr) => {
        #[target_feature(enable = "neon,fp16")]
        fn $inner<const NT: usize>(w: &[$w], x: &[f32], out: &mut [f32]) {
            let n = w.len();
            let mut acc0 = [vdupq_n_f32(0.0); NT];
            let mut acc1 = [vdupq_n_f32(0.0); NT];
            let mut i = 0;
            while i + 8 <= n {
                // SAFETY: i + 8 <= n = w.len(): 8 weights readable.
                let (w0, w1): (float32x4_t, float32x4_t) = unsafe { $load(w.as_ptr().add(i)) };
                for t in 0..NT {
                    let xt = &x[t * n + i..t * n + i + 8];
                    // SAFETY: xt has 8 readable f32.
                    let (x0, x1) =
                        unsafe { (vld1q_f32(xt.as_ptr()), vld1q_f32(xt.as_ptr().add(4))) };
                    acc0[t] = vfmaq_f32(acc0[t], w0, x0);
                    acc1[t] = vfmaq_f32(acc1[t], w1, x1);
                }
                i += 8;
            }
            for t in 0..NT {
                let mut tail = 0.0f32;
                for j in i..n {
                    tail += $to_f32(w[j]) * x[t * n + j];
                }
                out[t] = vaddvq_f32(vaddq_f32(acc0[t], acc1[t])) + tail;
            }
        }

        fn $name(w: &[$w], rows: usize, x: &[f32], out: &mut [f32]) {
            let (n, nt) = super::float_tile_shape(w.len(), rows, x.len(), out.len(), 4);
            let mut col = [0.0f32; 4];
            for r in 0..rows {
                // SAFETY: only reachable through the table `neon()` returns after checking
                // NEON and fp16 at run time; shapes checked above.
                unsafe {
                    let (wr, c) = (&w[r * n..(r + 1) * n], &mut col[..nt]);
                    match nt {
                        1 => $inner::<1>(wr, x, c),
                        2 => $inner::<2>(wr, x, c),
                        3 => $inner::<3>(wr, x, c),
                        _ => $inner::<4>(wr, x, c),
                    }
                }
                for t in 0..nt {
                    out[t * rows + r] = col[t];
                }
            }
        }
    };
}

float_tile!(
    f32_t,
    f32_tile,
    f32,
    |p: *const f32| (vld1q_f32(p), vld1q_f32(p.add(4))),
    |v: f32| v
);
float_tile!(
    f16_t,
    f16_tile,
    f16,
    |p: *const f16| {
        let v = vld1q_u16(p.cast::<u16>());
        (
            vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(v))),
            vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(v))),
        )
    },
    f16::to_f32
);
float_tile!(
    bf16_t,
    bf16_tile,
    bf16,
    |p: *const bf16| {
        let v = vld1q_u16(p.cast::<u16>());
        (
            vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(v))),
            vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_high_u16(v))),
        )
    },
    bf16::to_f32
);
