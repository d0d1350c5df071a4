//! x86-64 attention kernels at two levels:
//!
//! - `avx2`: AVX2 + FMA + F16C. Scores four keys at a time (one q load feeds four
//!   FMAs, the four sums reduced together with `hadd`); `out += p * v` 32 lanes of
//!   the head at a time over two keys per step; exp with a Cephes polynomial;
//!   f32 -> f16 with `vcvtps2ph` (round to nearest even, as the scalar twin).
//! - `avx512`: AVX-512 F/BW/VL for scores and accumulation, 16 lanes with masked
//!   loads for a head_dim that is not a multiple of 16; exp 16 lanes wide (the AVX2
//!   polynomial); the f16 store is the AVX2 one (it is not the bottleneck).
//!
//! Every function with `#[target_feature]` is private and checks the lengths it
//! relies on; the tables are only handed out by [`avx2`] / [`avx512`] after the CPU
//! reported every feature they are compiled with. Results differ from the scalar
//! twin only in the order of additions (and FMA rounding), and for exp by ~1 ulp.

use super::generic::{check_accum, check_scores};
use super::AttnKernels;
use core::arch::x86_64::*;
use half::f16;

/// The AVX2 table, if this CPU has AVX2, FMA and F16C.
pub(super) fn avx2() -> Option<&'static AttnKernels> {
    let ok = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    ok.then_some(&AVX2)
}

/// The AVX-512 table, if this CPU also has AVX-512 F, BW and VL.
pub(super) fn avx512() -> Option<&'static AttnKernels> {
    let ok = avx2().is_some()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl");
    ok.then_some(&AVX512)
}

static AVX2: AttnKernels = AttnKernels {
    name: "avx2",
    scores_f32: w256::scores_f32,
    scores_f16: w256::scores_f16,
    accum_f32: w256::accum_f32,
    accum_f16: w256::accum_f16,
    exp_sum: w256::exp_sum,
    to_f16: w256::to_f16,
    to_f32: w256::to_f32,
};

static AVX512: AttnKernels = AttnKernels {
    name: "avx512",
    scores_f32: w512::scores_f32,
    scores_f16: w512::scores_f16,
    accum_f32: w512::accum_f32,
    accum_f16: w512::accum_f16,
    exp_sum: w512::exp_sum,
    to_f16: w256::to_f16,
    to_f32: w256::to_f32,
};

/// Safe entry points over the `#[target_feature]` functions of a submodule.
macro_rules! wrap {
    ($level:literal, $( $name:ident ( $($arg:ident : $ty:ty),* ) $(-> $ret:ty)? ; )*) => {
        $(
            pub(super) fn $name($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: only reachable through the table of this level, which is
                // handed out after the CPU reported every feature `imp::$name` is
                // compiled with; `imp::$name` checks the lengths it relies on.
                unsafe { imp::$name($($arg),*) }
            }
        )*
    };
}

// ---------------------------------------------------------------------------
// AVX2

mod w256 {
    use super::*;

    wrap!("avx2",
        scores_f32(q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) -> f32;
        scores_f16(q: &[f32], k: &[f16], scale: f32, out: &mut [f32]) -> f32;
        accum_f32(p: &[f32], v: &[f32], out: &mut [f32]);
        accum_f16(p: &[f32], v: &[f16], out: &mut [f32]);
        exp_sum(s: &mut [f32], max: f32) -> f32;
        to_f16(x: &[f32], y: &mut [f16]);
        to_f32(x: &[f16], y: &mut [f32]);
    );

    pub(super) mod imp {
        use super::*;

        /// Lane r = sum of the 8 lanes of a[r]; the same order for every r.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        pub(crate) fn hsum4(a: [__m256; 4]) -> __m128 {
            let s01 = _mm256_hadd_ps(a[0], a[1]);
            let s23 = _mm256_hadd_ps(a[2], a[3]);
            let s = _mm256_hadd_ps(s01, s23);
            _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s))
        }

        /// Sum of the 8 lanes, in [`hsum4`]'s order.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        pub(crate) fn hsum1(a: __m256) -> f32 {
            _mm_cvtss_f32(hsum4([a; 4]))
        }

        /// exp(x) for every lane, x <= 88 (larger x gives exp(88)); NaN stays NaN.
        /// Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-5 polynomial for
        /// e^r, times 2^n. Below ~-87.3 the result is 0 or subnormal.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        pub(crate) fn exp256(x: __m256) -> __m256 {
            // min/max return their second operand when either is NaN: x survives.
            let x = _mm256_min_ps(_mm256_set1_ps(88.0), x);
            let x = _mm256_max_ps(_mm256_set1_ps(-88.376_26), x);
            let fx = _mm256_floor_ps(_mm256_fmadd_ps(
                x,
                _mm256_set1_ps(std::f32::consts::LOG2_E),
                _mm256_set1_ps(0.5),
            ));
            let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
            let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), x);
            let z = _mm256_mul_ps(x, x);
            let mut y = _mm256_set1_ps(1.987_569_1e-4);
            for c in [
                1.398_199_9e-3,
                8.333_452e-3,
                4.166_579_6e-2,
                0.166_666_65,
                0.5,
            ] {
                y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(c));
            }
            let y = _mm256_add_ps(_mm256_fmadd_ps(y, z, x), _mm256_set1_ps(1.0));
            let n = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
            _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(n)))
        }

        /// Scores of keys `[T]` against q; `$load(ptr)` widens 8 keys' values to f32.
        macro_rules! scores {
            ($name:ident, $t:ty, $load:expr, $to_f32:expr) => {
                #[target_feature(enable = "avx2,fma,f16c")]
                pub(crate) fn $name(q: &[f32], k: &[$t], scale: f32, out: &mut [f32]) -> f32 {
                    check_scores(q.len(), k.len(), out.len());
                    let hd = q.len();
                    let hd8 = hd & !7;
                    let n = out.len();
                    let (qp, kp) = (q.as_ptr(), k.as_ptr());
                    // Sum of q * key j over the tail lanes hd8..hd (scalar).
                    let tail = |j: usize| -> f32 {
                        let kj = &k[j * hd..(j + 1) * hd];
                        (hd8..hd).map(|d| q[d] * $to_f32(kj[d])).sum()
                    };
                    let mut mx = f32::NEG_INFINITY;
                    let mut j = 0;
                    while j + 4 <= n {
                        let mut a = [_mm256_setzero_ps(); 4];
                        let mut d = 0;
                        while d < hd8 {
                            // SAFETY: d + 8 <= hd, so q has 8 values at d and each
                            // key j + r < n (k.len() == n * hd, checked) has 8 at d.
                            unsafe {
                                let qv = _mm256_loadu_ps(qp.add(d));
                                for (r, ar) in a.iter_mut().enumerate() {
                                    *ar = _mm256_fmadd_ps(qv, $load(kp.add((j + r) * hd + d)), *ar);
                                }
                            }
                            d += 8;
                        }
                        let mut s = [0f32; 4];
                        // SAFETY: s holds 4 f32.
                        unsafe { _mm_storeu_ps(s.as_mut_ptr(), hsum4(a)) };
                        for (r, sr) in s.iter().enumerate() {
                            out[j + r] = (sr + tail(j + r)) * scale;
                            mx = mx.max(out[j + r]);
                        }
                        j += 4;
                    }
                    while j < n {
                        let mut a = _mm256_setzero_ps();
                        let mut d = 0;
                        while d < hd8 {
                            // SAFETY: as above, for key j < n.
                            unsafe {
                                a = _mm256_fmadd_ps(
                                    _mm256_loadu_ps(qp.add(d)),
                                    $load(kp.add(j * hd + d)),
                                    a,
                                );
                            }
                            d += 8;
                        }
                        out[j] = (hsum1(a) + tail(j)) * scale;
                        mx = mx.max(out[j]);
                        j += 1;
                    }
                    mx
                }
            };
        }

        /// `out += p * v`; `$load(ptr)` widens 8 values to f32.
        macro_rules! accum {
            ($name:ident, $t:ty, $load:expr, $to_f32:expr) => {
                #[target_feature(enable = "avx2,fma,f16c")]
                pub(crate) fn $name(p: &[f32], v: &[$t], out: &mut [f32]) {
                    check_accum(p.len(), v.len(), out.len());
                    let hd = out.len();
                    let n = p.len();
                    let (vp, op) = (v.as_ptr(), out.as_mut_ptr());
                    let mut d = 0;
                    // Lanes d..d + 8 * W of the head, two keys per step (two sets of
                    // accumulators keep the FMA chains independent).
                    macro_rules! lanes {
                        ($w:literal) => {
                            while d + 8 * $w <= hd {
                                // SAFETY: d + 8W <= hd = out.len(), and every key
                                // j < n has hd values (v.len() == n * hd, checked).
                                unsafe {
                                    let mut a: [__m256; $w] =
                                        std::array::from_fn(|c| _mm256_loadu_ps(op.add(d + 8 * c)));
                                    let mut b = [_mm256_setzero_ps(); $w];
                                    let mut j = 0;
                                    while j + 2 <= n {
                                        let (p0, p1) =
                                            (_mm256_set1_ps(p[j]), _mm256_set1_ps(p[j + 1]));
                                        let (v0, v1) =
                                            (vp.add(j * hd + d), vp.add((j + 1) * hd + d));
                                        for c in 0..$w {
                                            a[c] = _mm256_fmadd_ps(p0, $load(v0.add(8 * c)), a[c]);
                                            b[c] = _mm256_fmadd_ps(p1, $load(v1.add(8 * c)), b[c]);
                                        }
                                        j += 2;
                                    }
                                    if j < n {
                                        let p0 = _mm256_set1_ps(p[j]);
                                        let v0 = vp.add(j * hd + d);
                                        for c in 0..$w {
                                            a[c] = _mm256_fmadd_ps(p0, $load(v0.add(8 * c)), a[c]);
                                        }
                                    }
                                    for c in 0..$w {
                                        _mm256_storeu_ps(
                                            op.add(d + 8 * c),
                                            _mm256_add_ps(a[c], b[c]),
                                        );
                                    }
                                }
                                d += 8 * $w;
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

        scores!(
            scores_f32,
            f32,
            |p: *const f32| _mm256_loadu_ps(p),
            |x: f32| x
        );
        scores!(
            scores_f16,
            f16,
            |p: *const f16| _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
            f16::to_f32
        );
        accum!(
            accum_f32,
            f32,
            |p: *const f32| _mm256_loadu_ps(p),
            |x: f32| x
        );
        accum!(
            accum_f16,
            f16,
            |p: *const f16| _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
            f16::to_f32
        );

        #[target_feature(enable = "avx2,fma,f16c")]
        pub(crate) fn exp_sum(s: &mut [f32], max: f32) -> f32 {
            let n = s.len();
            let m = _mm256_set1_ps(max);
            let mut acc = _mm256_setzero_ps();
            let sp = s.as_mut_ptr();
            let mut i = 0;
            while i + 8 <= n {
                // SAFETY: i + 8 <= n = s.len().
                unsafe {
                    let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(sp.add(i)), m));
                    _mm256_storeu_ps(sp.add(i), e);
                    acc = _mm256_add_ps(acc, e);
                }
                i += 8;
            }
            let mut sum = hsum1(acc);
            if i < n {
                let r = n - i;
                let mut buf = [0f32; 8];
                buf[..r].copy_from_slice(&s[i..]);
                // SAFETY: buf holds 8 f32.
                unsafe {
                    let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), m));
                    _mm256_storeu_ps(buf.as_mut_ptr(), e);
                }
                s[i..].copy_from_slice(&buf[..r]);
                sum += buf[..r].iter().sum::<f32>();
            }
            sum
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub(crate) fn to_f16(x: &[f32], y: &mut [f16]) {
            assert_eq!(
                x.len(),
                y.len(),
                "to_f16: {} values into {}",
                x.len(),
                y.len()
            );
            let n = x.len();
            let mut i = 0;
            while i + 8 <= n {
                // SAFETY: i + 8 <= n: 8 f32 readable at x[i], 8 f16 (16 bytes) writable at y[i].
                unsafe {
                    let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(
                        x.as_ptr().add(i),
                    ));
                    _mm_storeu_si128(y.as_mut_ptr().add(i).cast(), h);
                }
                i += 8;
            }
            for (o, &v) in y[i..].iter_mut().zip(&x[i..]) {
                *o = f16::from_f32(v);
            }
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub(crate) fn to_f32(x: &[f16], y: &mut [f32]) {
            assert_eq!(
                x.len(),
                y.len(),
                "to_f32: {} values into {}",
                x.len(),
                y.len()
            );
            let n = x.len();
            let mut i = 0;
            while i + 8 <= n {
                // SAFETY: i + 8 <= n: 8 f16 (16 bytes) readable at x[i], 8 f32 writable at y[i].
                unsafe {
                    let v = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i).cast()));
                    _mm256_storeu_ps(y.as_mut_ptr().add(i), v);
                }
                i += 8;
            }
            for (o, &v) in y[i..].iter_mut().zip(&x[i..]) {
                *o = v.to_f32();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// AVX-512

mod w512 {
    use super::*;

    wrap!("avx512",
        scores_f32(q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) -> f32;
        scores_f16(q: &[f32], k: &[f16], scale: f32, out: &mut [f32]) -> f32;
        accum_f32(p: &[f32], v: &[f32], out: &mut [f32]);
        accum_f16(p: &[f32], v: &[f16], out: &mut [f32]);
        exp_sum(s: &mut [f32], max: f32) -> f32;
    );

    mod imp {
        use super::super::w256::imp::hsum4;
        use super::*;

        /// The 16 lanes folded to 8 (lane i + lane i + 8).
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
        #[inline]
        fn fold(z: __m512) -> __m256 {
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(z)));
            _mm256_add_ps(_mm512_castps512_ps256(z), hi)
        }

        /// 16-lane twin of the AVX2 `exp256` (same constants and steps).
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
        #[inline]
        fn exp512(x: __m512) -> __m512 {
            // min/max return their second operand when either is NaN: x survives.
            let x = _mm512_min_ps(_mm512_set1_ps(88.0), x);
            let x = _mm512_max_ps(_mm512_set1_ps(-88.376_26), x);
            let fx = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(
                _mm512_fmadd_ps(
                    x,
                    _mm512_set1_ps(std::f32::consts::LOG2_E),
                    _mm512_set1_ps(0.5),
                ),
            );
            let x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693_359_4), x);
            let x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.121_944_4e-4), x);
            let z = _mm512_mul_ps(x, x);
            let mut y = _mm512_set1_ps(1.987_569_1e-4);
            for c in [
                1.398_199_9e-3,
                8.333_452e-3,
                4.166_579_6e-2,
                0.166_666_65,
                0.5,
            ] {
                y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(c));
            }
            let y = _mm512_add_ps(_mm512_fmadd_ps(y, z, x), _mm512_set1_ps(1.0));
            let n = _mm512_add_epi32(_mm512_cvttps_epi32(fx), _mm512_set1_epi32(127));
            _mm512_mul_ps(y, _mm512_castsi512_ps(_mm512_slli_epi32::<23>(n)))
        }

        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
        pub(crate) fn exp_sum(s: &mut [f32], max: f32) -> f32 {
            let n = s.len();
            let m = _mm512_set1_ps(max);
            let mut acc = _mm512_setzero_ps();
            let sp = s.as_mut_ptr();
            let mut i = 0;
            while i + 16 <= n {
                // SAFETY: i + 16 <= n = s.len().
                unsafe {
                    let e = exp512(_mm512_sub_ps(_mm512_loadu_ps(sp.add(i)), m));
                    _mm512_storeu_ps(sp.add(i), e);
                    acc = _mm512_add_ps(acc, e);
                }
                i += 16;
            }
            if i < n {
                let k: __mmask16 = ((1u32 << (n - i)) - 1) as __mmask16;
                // SAFETY: masked loads/stores touch only s[i..n].
                unsafe {
                    let e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, sp.add(i)), m));
                    _mm512_mask_storeu_ps(sp.add(i), k, e);
                    acc = _mm512_mask_add_ps(acc, k, acc, e);
                }
            }
            _mm512_reduce_add_ps(acc)
        }

        /// `$load(ptr)` widens 16 values to f32, `$mload(mask, ptr)` the masked ones
        /// (masked-off lanes are 0 and are not read).
        macro_rules! scores {
            ($name:ident, $t:ty, $load:expr, $mload:expr) => {
                #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
                pub(crate) fn $name(q: &[f32], k: &[$t], scale: f32, out: &mut [f32]) -> f32 {
                    check_scores(q.len(), k.len(), out.len());
                    let hd = q.len();
                    let hd16 = hd & !15;
                    let tail: __mmask16 = ((1u32 << (hd - hd16)) - 1) as __mmask16;
                    let n = out.len();
                    let (qp, kp) = (q.as_ptr(), k.as_ptr());
                    // Dot of q with keys j..j + R (R <= 4; unused slots stay 0).
                    let dots = |j: usize, nr: usize| -> [f32; 4] {
                        let mut a = [_mm512_setzero_ps(); 4];
                        let mut d = 0;
                        while d < hd16 {
                            // SAFETY: d + 16 <= hd; keys j + r < n have hd values each.
                            unsafe {
                                let qv = _mm512_loadu_ps(qp.add(d));
                                for (r, ar) in a.iter_mut().enumerate().take(nr) {
                                    *ar = _mm512_fmadd_ps(qv, $load(kp.add((j + r) * hd + d)), *ar);
                                }
                            }
                            d += 16;
                        }
                        if tail != 0 {
                            // SAFETY: masked loads touch only lanes d..hd of q and of
                            // each key j + r < n.
                            unsafe {
                                let qv = _mm512_maskz_loadu_ps(tail, qp.add(d));
                                for (r, ar) in a.iter_mut().enumerate().take(nr) {
                                    *ar = _mm512_fmadd_ps(
                                        qv,
                                        $mload(tail, kp.add((j + r) * hd + d)),
                                        *ar,
                                    );
                                }
                            }
                        }
                        let mut s = [0f32; 4];
                        // SAFETY: s holds 4 f32.
                        unsafe { _mm_storeu_ps(s.as_mut_ptr(), hsum4(a.map(|z| fold(z)))) };
                        s
                    };
                    let mut mx = f32::NEG_INFINITY;
                    let mut j = 0;
                    while j + 4 <= n {
                        let s = dots(j, 4);
                        for r in 0..4 {
                            out[j + r] = s[r] * scale;
                            mx = mx.max(out[j + r]);
                        }
                        j += 4;
                    }
                    while j < n {
                        out[j] = dots(j, 1)[0] * scale;
                        mx = mx.max(out[j]);
                        j += 1;
                    }
                    mx
                }
            };
        }

        macro_rules! accum {
            ($name:ident, $t:ty, $load:expr, $mload:expr) => {
                #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
                pub(crate) fn $name(p: &[f32], v: &[$t], out: &mut [f32]) {
                    check_accum(p.len(), v.len(), out.len());
                    let hd = out.len();
                    let n = p.len();
                    let (vp, op) = (v.as_ptr(), out.as_mut_ptr());
                    let mut d = 0;
                    macro_rules! lanes {
                        ($w:literal) => {
                            while d + 16 * $w <= hd {
                                // SAFETY: d + 16W <= hd = out.len(); every key j < n
                                // has hd values (v.len() == n * hd, checked).
                                unsafe {
                                    let mut a: [__m512; $w] = std::array::from_fn(|c| {
                                        _mm512_loadu_ps(op.add(d + 16 * c))
                                    });
                                    let mut b = [_mm512_setzero_ps(); $w];
                                    let mut j = 0;
                                    while j + 2 <= n {
                                        let (p0, p1) =
                                            (_mm512_set1_ps(p[j]), _mm512_set1_ps(p[j + 1]));
                                        let (v0, v1) =
                                            (vp.add(j * hd + d), vp.add((j + 1) * hd + d));
                                        for c in 0..$w {
                                            a[c] = _mm512_fmadd_ps(p0, $load(v0.add(16 * c)), a[c]);
                                            b[c] = _mm512_fmadd_ps(p1, $load(v1.add(16 * c)), b[c]);
                                        }
                                        j += 2;
                                    }
                                    if j < n {
                                        let p0 = _mm512_set1_ps(p[j]);
                                        let v0 = vp.add(j * hd + d);
                                        for c in 0..$w {
                                            a[c] = _mm512_fmadd_ps(p0, $load(v0.add(16 * c)), a[c]);
                                        }
                                    }
                                    for c in 0..$w {
                                        _mm512_storeu_ps(
                                            op.add(d + 16 * c),
                                            _mm512_add_ps(a[c], b[c]),
                                        );
                                    }
                                }
                                d += 16 * $w;
                            }
                        };
                    }
                    lanes!(4);
                    lanes!(1);
                    if d < hd {
                        let m: __mmask16 = ((1u32 << (hd - d)) - 1) as __mmask16;
                        // SAFETY: masked loads/stores touch only lanes d..hd of out
                        // and of each key j < n.
                        unsafe {
                            let mut a = _mm512_maskz_loadu_ps(m, op.add(d));
                            for (j, &pj) in p.iter().enumerate() {
                                a = _mm512_fmadd_ps(
                                    _mm512_set1_ps(pj),
                                    $mload(m, vp.add(j * hd + d)),
                                    a,
                                );
                            }
                            _mm512_mask_storeu_ps(op.add(d), m, a);
                        }
                    }
                }
            };
        }

        scores!(
            scores_f32,
            f32,
            |p: *const f32| _mm512_loadu_ps(p),
            |m: __mmask16, p: *const f32| _mm512_maskz_loadu_ps(m, p)
        );
        scores!(
            scores_f16,
            f16,
            |p: *const f16| _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
            |m: __mmask16, p: *const f16| _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p.cast()))
        );
        accum!(
            accum_f32,
            f32,
            |p: *const f32| _mm512_loadu_ps(p),
            |m: __mmask16, p: *const f32| _mm512_maskz_loadu_ps(m, p)
        );
        accum!(
            accum_f16,
            f16,
            |p: *const f16| _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
            |m: __mmask16, p: *const f16| _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p.cast()))
        );
    }
}
