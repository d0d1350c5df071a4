//! aarch64 attention kernels: NEON with fp16 conversions (`fcvtl` / `fcvtn`).
//!
//! Scores four keys at a time (one q load feeds four FMAs, each key reduced with
//! `faddv`); `out += p * v` 16 lanes of the head at a time over two keys per step;
//! exp with the Cephes polynomial of the x86 level; f32 -> f16 rounds to nearest
//! even (the default FPCR mode), as the scalar twin. Lengths are checked in every
//! `#[target_feature]` function; the table is only handed out after the CPU
//! reported NEON and fp16. Run in CI under qemu-aarch64 by scripts/test_aarch64.sh
//! (tests/attention.rs against the scalar twin, forward logits against transformers').

use super::generic::{check_accum, check_scores};
use super::AttnKernels;
use core::arch::aarch64::*;
use half::f16;

/// The NEON table, if this CPU has NEON and fp16 conversions.
pub(super) fn neon() -> Option<&'static AttnKernels> {
    let ok = std::arch::is_aarch64_feature_detected!("neon")
        && std::arch::is_aarch64_feature_detected!("fp16");
    ok.then_some(&NEON)
}

static NEON: AttnKernels = AttnKernels {
    name: "neon",
    scores_f32,
    scores_f16,
    accum_f32,
    accum_f16,
    exp_sum,
    to_f16,
    to_f32,
};

macro_rules! wrap {
    ($( $name:ident ( $($arg:ident : $ty:ty),* ) $(-> $ret:ty)? ; )*) => {
        $(
            fn $name($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: only reachable through the NEON table, handed out after the
                // CPU reported NEON and fp16; `imp::$name` checks the lengths it relies on.
                unsafe { imp::$name($($arg),*) }
            }
        )*
    };
}

wrap!(
    scores_f32(q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) -> f32;
    scores_f16(q: &[f32], k: &[f16], scale: f32, out: &mut [f32]) -> f32;
    accum_f32(p: &[f32], v: &[f32], out: &mut [f32]);
    accum_f16(p: &[f32], v: &[f16], out: &mut [f32]);
    exp_sum(s: &mut [f32], max: f32) -> f32;
    to_f16(x: &[f32], y: &mut [f16]);
    to_f32(x: &[f16], y: &mut [f32]);
);

mod imp {
    use super::*;

    /// 4 f16 at `p` as f32.
    ///
    /// # Safety
    /// `p` must be valid for reading 4 f16.
    #[target_feature(enable = "neon,fp16")]
    #[inline]
    unsafe fn load_f16(p: *const f16) -> float32x4_t {
        // SAFETY: the caller guarantees 4 readable f16 (8 bytes).
        unsafe { vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p.cast()))) }
    }

    /// 4 f32 at `p`.
    ///
    /// # Safety
    /// `p` must be valid for reading 4 f32.
    #[target_feature(enable = "neon,fp16")]
    #[inline]
    unsafe fn load_f32(p: *const f32) -> float32x4_t {
        // SAFETY: the caller guarantees 4 readable f32.
        unsafe { vld1q_f32(p) }
    }

    /// exp(x) for every lane, x <= 88; NaN stays NaN (`fmin`/`fmax` propagate it).
    /// The same Cephes expf as the x86 level.
    #[target_feature(enable = "neon,fp16")]
    #[inline]
    fn exp4(x: float32x4_t) -> float32x4_t {
        let x = vminq_f32(x, vdupq_n_f32(88.0));
        let x = vmaxq_f32(x, vdupq_n_f32(-88.376_26));
        let fx = vrndmq_f32(vfmaq_f32(
            vdupq_n_f32(0.5),
            x,
            vdupq_n_f32(std::f32::consts::LOG2_E),
        ));
        let x = vfmsq_f32(x, fx, vdupq_n_f32(0.693_359_4));
        let x = vfmsq_f32(x, fx, vdupq_n_f32(-2.121_944_4e-4));
        let z = vmulq_f32(x, x);
        let mut y = vdupq_n_f32(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            y = vfmaq_f32(vdupq_n_f32(c), y, x);
        }
        let y = vaddq_f32(vfmaq_f32(x, y, z), vdupq_n_f32(1.0));
        let n = vaddq_s32(vcvtq_s32_f32(fx), vdupq_n_s32(127));
        vmulq_f32(y, vreinterpretq_f32_s32(vshlq_n_s32::<23>(n)))
    }

    macro_rules! scores {
        ($name:ident, $t:ty, $load:ident, $to_f32:expr) => {
            #[target_feature(enable = "neon,fp16")]
            pub(super) fn $name(q: &[f32], k: &[$t], scale: f32, out: &mut [f32]) -> f32 {
                check_scores(q.len(), k.len(), out.len());
                let hd = q.len();
                let hd4 = hd & !3;
                let n = out.len();
                let (qp, kp) = (q.as_ptr(), k.as_ptr());
                let tail = |j: usize| -> f32 {
                    let kj = &k[j * hd..(j + 1) * hd];
                    (hd4..hd).map(|d| q[d] * $to_f32(kj[d])).sum()
                };
                let mut mx = f32::NEG_INFINITY;
                let mut j = 0;
                while j + 4 <= n {
                    let mut a = [vdupq_n_f32(0.0); 4];
                    let mut d = 0;
                    while d < hd4 {
                        // SAFETY: d + 4 <= hd; keys j + r < n have hd values each.
                        unsafe {
                            let qv = vld1q_f32(qp.add(d));
                            for (r, ar) in a.iter_mut().enumerate() {
                                *ar = vfmaq_f32(*ar, qv, $load(kp.add((j + r) * hd + d)));
                            }
                        }
                        d += 4;
                    }
                    for (r, ar) in a.iter().enumerate() {
                        out[j + r] = (vaddvq_f32(*ar) + tail(j + r)) * scale;
                        mx = mx.max(out[j + r]);
                    }
                    j += 4;
                }
                while j < n {
                    let mut a = vdupq_n_f32(0.0);
                    let mut d = 0;
                    while d < hd4 {
                        // SAFETY: as above, for key j < n.
                        unsafe {
                            a = vfmaq_f32(a, vld1q_f32(qp.add(d)), $load(kp.add(j * hd + d)))
                        };
                        d += 4;
                    }
                    out[j] = (vaddvq_f32(a) + tail(j)) * scale;
                    mx = mx.max(out[j]);
                    j += 1;
                }
                mx
            }
        };
    }

    macro_rules! accum {
        ($name:ident, $t:ty, $load:ident, $to_f32:expr) => {
            #[target_feature(enable = "neon,fp16")]
            pub(super) fn $name(p: &[f32], v: &[$t], out: &mut [f32]) {
                check_accum(p.len(), v.len(), out.len());
                let hd = out.len();
                let n = p.len();
                let (vp, op) = (v.as_ptr(), out.as_mut_ptr());
                let mut d = 0;
                macro_rules! lanes {
                    ($w:literal) => {
                        while d + 4 * $w <= hd {
                            // SAFETY: d + 4W <= hd = out.len(); every key j < n has
                            // hd values (v.len() == n * hd, checked).
                            unsafe {
                                let mut a: [float32x4_t; $w] =
                                    std::array::from_fn(|c| vld1q_f32(op.add(d + 4 * c)));
                                let mut b = [vdupq_n_f32(0.0); $w];
                                let mut j = 0;
                                while j + 2 <= n {
                                    let (v0, v1) = (vp.add(j * hd + d), vp.add((j + 1) * hd + d));
                                    for c in 0..$w {
                                        a[c] = vfmaq_n_f32(a[c], $load(v0.add(4 * c)), p[j]);
                                        b[c] = vfmaq_n_f32(b[c], $load(v1.add(4 * c)), p[j + 1]);
                                    }
                                    j += 2;
                                }
                                if j < n {
                                    let v0 = vp.add(j * hd + d);
                                    for c in 0..$w {
                                        a[c] = vfmaq_n_f32(a[c], $load(v0.add(4 * c)), p[j]);
                                    }
                                }
                                for c in 0..$w {
                                    vst1q_f32(op.add(d + 4 * c), vaddq_f32(a[c], b[c]));
                                }
                            }
                            d += 4 * $w;
                        }
                    };
                }
                lanes!(4);
                lanes!(1);
                if d < hd {
                    for (j, &pj) in p.iter().enumerate() {
                        let vj = &v[j * hd..(j + 1) * hd];
                        for e in d..hd {
                            out[e] += pj * $to_f32(vj[e]);
                        }
                    }
                }
            }
        };
    }

    scores!(scores_f32, f32, load_f32, |x: f32| x);
    scores!(scores_f16, f16, load_f16, f16::to_f32);
    accum!(accum_f32, f32, load_f32, |x: f32| x);
    accum!(accum_f16, f16, load_f16, f16::to_f32);

    #[target_feature(enable = "neon,fp16")]
    pub(super) fn exp_sum(s: &mut [f32], max: f32) -> f32 {
        let n = s.len();
        let m = vdupq_n_f32(max);
        let mut acc = vdupq_n_f32(0.0);
        let sp = s.as_mut_ptr();
        let mut i = 0;
        while i + 4 <= n {
            // SAFETY: i + 4 <= n = s.len().
            unsafe {
                let e = exp4(vsubq_f32(vld1q_f32(sp.add(i)), m));
                vst1q_f32(sp.add(i), e);
                acc = vaddq_f32(acc, e);
            }
            i += 4;
        }
        let mut sum = vaddvq_f32(acc);
        if i < n {
            let r = n - i;
            let mut buf = [0f32; 4];
            buf[..r].copy_from_slice(&s[i..]);
            // SAFETY: buf holds 4 f32.
            unsafe {
                let e = exp4(vsubq_f32(vld1q_f32(buf.as_ptr()), m));
                vst1q_f32(buf.as_mut_ptr(), e);
            }
            s[i..].copy_from_slice(&buf[..r]);
            sum += buf[..r].iter().sum::<f32>();
        }
        sum
    }

    #[target_feature(enable = "neon,fp16")]
    pub(super) fn to_f16(x: &[f32], y: &mut [f16]) {
        assert_eq!(
            x.len(),
            y.len(),
            "to_f16: {} values into {}",
            x.len(),
            y.len()
        );
        let n = x.len();
        let mut i = 0;
        while i + 4 <= n {
            // SAFETY: i + 4 <= n: 4 f32 readable at x[i], 4 f16 writable at y[i].
            unsafe {
                let h = vcvt_f16_f32(vld1q_f32(x.as_ptr().add(i)));
                vst1_u16(y.as_mut_ptr().add(i).cast(), vreinterpret_u16_f16(h));
            }
            i += 4;
        }
        for (o, &v) in y[i..].iter_mut().zip(&x[i..]) {
            *o = f16::from_f32(v);
        }
    }

    #[target_feature(enable = "neon,fp16")]
    pub(super) fn to_f32(x: &[f16], y: &mut [f32]) {
        assert_eq!(
            x.len(),
            y.len(),
            "to_f32: {} values into {}",
            x.len(),
            y.len()
        );
        let n = x.len();
        let mut i = 0;
        while i + 4 <= n {
            // SAFETY: i + 4 <= n: 4 f16 readable at x[i], 4 f32 writable at y[i].
            unsafe { vst1q_f32(y.as_mut_ptr().add(i), load_f16(x.as_ptr().add(i))) };
            i += 4;
        }
        for (o, &v) in y[i..].iter_mut().zip(&x[i..]) {
            *o = v.to_f32();
        }
    }
}
