//! x86-64 K-quant tiles (q2_K … q6_K against q8_K activations) at two levels:
//!
//! - `avx2` (AVX2 + FMA + F16C): 32 codes per step as unsigned bytes, `maddubs` with
//!   the activation codes (i16 pair sums), `madd` with the sub-block scale as i16 (i32
//!   lanes), summed per super-block in i32; as ggml's AVX2 `ggml_vec_dot_q4_K_q8_K`.
//! - `avx512` (+ AVX-512 F/BW/VL/VNNI): 64 codes per step in element order,
//!   `vpdpbusd` from zero (each i32 lane, a sum of 4 products, fits in i16), then
//!   `vpdpwssd` with the lane's sub-block scale in the low i16 (high i16 zero), summed
//!   per super-block in i32.
//!
//! Both keep the weight codes unsigned and move the offsets to the activations' sums
//! (`bsums`): q2_K / q4_K / q5_K subtract `dmin * sum(bsums * min)`, q6_K's `- 32` and
//! q3_K's `- 4` become `- 32 * sum(bsums * scale)` / `- 4 * …` inside the integer sum. Integer sums are exact (bounds
//! in the comments), so a super-block contributes the same integers as the scalar twin;
//! only the order of the f32 additions differs.
//!
//! Every `#[target_feature]` function is private; the safe wrappers in the tables are
//! only reachable through [`avx2`] / [`avx512`], which return a table only when the CPU
//! reports every feature the functions are compiled for. A tile unpacks each weight
//! super-block once and multiplies it with every token's block.
//!
//! At the avx512 level there is also the prefill GEMM (`kgemm_t`: 4 unpacked rows x
//! 32 tokens, see `kq::KGemmFn`), its SIMD unpackers and an AVX-512 q8_K quantizer.

use super::kq::{
    kgemm_shape, ActKGemm, KGemmRows, KGemmType, KqGemm, KqKernels, KQ_GEMM_ROWS, KQ_GEMM_TOKENS,
    KQ_ROWS,
};
use super::kq_generic::{self, scales_mins_k4, scales_q3_k};
use super::x86::{f16_to_f32 as h2f, hsum, L2_AHEAD};
use core::arch::x86_64::*;
use quant_formats::block::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};

/// The AVX2 K table, if this CPU has AVX2, FMA and F16C.
pub(super) fn avx2() -> Option<&'static KqKernels> {
    let ok = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    ok.then_some(&AVX2)
}

/// The AVX-512 K table, if this CPU also has AVX-512 F, BW, VL and VNNI.
pub(super) fn avx512() -> Option<&'static KqKernels> {
    let ok = avx2().is_some()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni");
    ok.then_some(&AVX512)
}

/// The AVX-512 K GEMM, if this CPU has what [`avx512`] needs.
pub(super) fn gemm_avx512() -> Option<&'static KqGemm> {
    avx512().map(|_| &GEMM_AVX512)
}

/// The AVX-512 q8_K quantizer, if this CPU has what [`avx512`] needs.
pub(super) fn quantize_avx512() -> Option<super::kq::QuantizeFn> {
    avx512().map(|_| avx512_impl::quantize_q8_k as super::kq::QuantizeFn)
}

static GEMM_AVX512: KqGemm = KqGemm {
    prefetch: avx512_impl::prefetch,
    q2_k: KGemmType {
        unpack: avx512_impl::unpack_q2_k,
        gemm: avx512_impl::gemm_q2_k,
    },
    q3_k: KGemmType {
        unpack: avx512_impl::unpack_q3_k,
        gemm: avx512_impl::gemm_q3_k,
    },
    q4_k: KGemmType {
        unpack: avx512_impl::unpack_q4_k,
        gemm: avx512_impl::gemm_q4_k,
    },
    q5_k: KGemmType {
        unpack: avx512_impl::unpack_q5_k,
        gemm: avx512_impl::gemm_q5_k,
    },
    q6_k: KGemmType {
        unpack: avx512_impl::unpack_q6_k,
        gemm: avx512_impl::gemm_q6_k,
    },
};

static AVX2: KqKernels = KqKernels {
    name: "avx2",
    tile_tokens: 4,
    q2_k: avx2_impl::q2_k,
    q3_k: avx2_impl::q3_k,
    q4_k: avx2_impl::q4_k,
    q5_k: avx2_impl::q5_k,
    q6_k: avx2_impl::q6_k,
    q4_k_rows: None,
    q5_k_rows: None,
    q6_k_rows: None,
};

static AVX512: KqKernels = KqKernels {
    name: "avx512",
    tile_tokens: 8,
    q2_k: avx512_impl::q2_k,
    q3_k: avx512_impl::q3_k,
    q4_k: avx512_impl::q4_k,
    q5_k: avx512_impl::q5_k,
    q6_k: avx512_impl::q6_k,
    q4_k_rows: Some(avx512_impl::q4_k_rows),
    q5_k_rows: Some(avx512_impl::q5_k_rows),
    q6_k_rows: Some(avx512_impl::q6_k_rows),
};

// ---------------------------------------------------------------------------
// Shared AVX2 helpers (inlined into the AVX-512 functions too, whose feature set
// is a superset).

/// Bytes ahead of the weight being read that the tiles prefetch: the hardware
/// prefetchers alone leave decode short of bandwidth. Qwen2.5-1.5B Q4_K_M decode, 2
/// threads, busy machine: no prefetch 7.9 tok/s, 6144 B ahead 9.1, 3072 B 9.55,
/// 1536 B 9.7 (our q4_0 file of the same size: 11.5).
const PREFETCH: usize = 1536;

/// Prefetch the cache lines `PREFETCH` bytes after block `b` into L1 and the ones
/// [`L2_AHEAD`] bytes after it into L2 (as the q4_0… tiles do): one per 64 bytes of
/// the block, so consecutive blocks (stride < 256 bytes) cover every line. The L2
/// hint took Qwen2.5-1.5B Q4_K_M decode (2 threads, alternating runs) from
/// 17.2–17.5 to 21.5–22.3 tok/s (4 KB and 16 KB ahead: within 3% of 8 KB).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn prefetch_block<T>(b: &T) {
    let p = (b as *const T).cast::<i8>().wrapping_add(PREFETCH);
    let far = (b as *const T).cast::<i8>().wrapping_add(L2_AHEAD);
    let mut off = 0;
    while off < std::mem::size_of::<T>() {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off));
        _mm_prefetch::<_MM_HINT_T1>(far.wrapping_add(off));
        off += 64;
    }
}

/// 32 bytes at `s[0..32]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load256<T: Copy>(s: &[T]) -> __m256i {
    assert!(std::mem::size_of_val(s) >= 32);
    // SAFETY: s holds at least 32 readable bytes (checked); loadu has no alignment need.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// 16 bytes at `s[0..16]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load128<T: Copy>(s: &[T]) -> __m128i {
    assert!(std::mem::size_of_val(s) >= 16);
    // SAFETY: s holds at least 16 readable bytes (checked); loadu has no alignment need.
    unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
}

/// A q4_K / q5_K block's scales (vector bytes 0..8, and as an array) and mins
/// (vector bytes 8..16).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn scales_mins(s: &[u8; 12]) -> (__m128i, [u8; 8]) {
    let (sc, mn) = scales_mins_k4(s);
    let v = _mm_set_epi64x(u64::from_le_bytes(mn) as i64, u64::from_le_bytes(sc) as i64);
    (v, sc)
}

/// The mins of [`scales_mins`] as 16 i16, each twice (`mins[j / 2]` for bsums[j]).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn mins_pairs(sm: __m128i) -> __m256i {
    let dup = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, dup))
}

/// Safe entry point over the `#[target_feature]` tile `$inner::<NT>`, NT in 1..=$max.
macro_rules! wrap_tile {
    ($name:ident, $inner:ident, $w:ty, $max:tt) => {
        pub(super) fn $name(w: &[$w], x: &[BlockQ8K], out: &mut [f32]) {
            let nb = w.len();
            let nt = out.len();
            assert!(
                (1..=$max).contains(&nt) && x.len() == nb * nt,
                "kq tile: {} activation blocks for {nt} tokens x {nb} (max {} tokens)",
                x.len(),
                $max
            );
            // SAFETY: this function is only reachable through a table returned by
            // `avx2()` / `avx512()`, which checked at run time that the CPU has every
            // feature `$inner` is compiled with; lengths were checked just above.
            unsafe { wrap_tile!(@dispatch $max, $inner, w, x, out, nt) }
        }
    };
    (@dispatch 4, $inner:ident, $w:ident, $x:ident, $o:ident, $nt:ident) => {
        match $nt {
            1 => $inner::<1>($w, $x, $o),
            2 => $inner::<2>($w, $x, $o),
            3 => $inner::<3>($w, $x, $o),
            _ => $inner::<4>($w, $x, $o),
        }
    };
    (@dispatch 8, $inner:ident, $w:ident, $x:ident, $o:ident, $nt:ident) => {
        match $nt {
            1 => $inner::<1>($w, $x, $o),
            2 => $inner::<2>($w, $x, $o),
            3 => $inner::<3>($w, $x, $o),
            4 => $inner::<4>($w, $x, $o),
            5 => $inner::<5>($w, $x, $o),
            6 => $inner::<6>($w, $x, $o),
            7 => $inner::<7>($w, $x, $o),
            _ => $inner::<8>($w, $x, $o),
        }
    };
}

// ---------------------------------------------------------------------------

/// AVX2: 32 codes per step; per token `isum += madd(maddubs(codes, y), scale)`.
/// Bounds: `maddubs` pairs |2 * 63 * 128| = 16128 < 2^15 (no saturation); `madd`
/// pairs |2 * 16128 * 128| < 2^23; a super-block < 2^29.
mod avx2_impl {
    use super::*;

    /// `madd(maddubs(u, y), s)`: unsigned codes `u` times activation codes `y`,
    /// weighted by the i16 scales `s`, as 8 i32.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn dot_scaled(u: __m256i, y: __m256i, s: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), s)
    }

    /// Shared by q4_K and q5_K: `$hbits` adds q5_K's fifth bits to (lo, hi) codes.
    macro_rules! k4_tile {
        ($inner:ident, $w:ty, |$b:ident, $lo:ident, $hi:ident, $h:ident| $init:expr, $add:block) => {
            #[target_feature(enable = "avx2,fma,f16c")]
            fn $inner<const NT: usize>(w: &[$w], x: &[BlockQ8K], out: &mut [f32]) {
                let nb = w.len();
                let m4 = _mm256_set1_epi8(0x0F);
                let mut acc = [_mm256_setzero_ps(); NT];
                for (i, $b) in w.iter().enumerate() {
                    prefetch_block($b);
                    let (sm, sc) = scales_mins(&$b.scales);
                    let mins = mins_pairs(sm);
                    let (dw, dmw) = (h2f($b.d), h2f($b.dmin));
                    #[allow(unused_mut, unused_variables)]
                    let mut $h = $init;
                    let mut isum = [_mm256_setzero_si256(); NT];
                    for j in 0..4 {
                        let raw = load256(&$b.qs[32 * j..]);
                        #[allow(unused_mut)]
                        let mut $lo = _mm256_and_si256(raw, m4);
                        #[allow(unused_mut)]
                        let mut $hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m4);
                        $add
                        let s_lo = _mm256_set1_epi16(sc[2 * j] as i16);
                        let s_hi = _mm256_set1_epi16(sc[2 * j + 1] as i16);
                        for t in 0..NT {
                            let y = &x[t * nb + i];
                            let p_lo = dot_scaled($lo, load256(&y.qs[64 * j..]), s_lo);
                            let p_hi = dot_scaled($hi, load256(&y.qs[64 * j + 32..]), s_hi);
                            isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(p_lo, p_hi));
                        }
                    }
                    for t in 0..NT {
                        let y = &x[t * nb + i];
                        // sum(bsums * mins): |16 * 4096 * 63| < 2^23.
                        let m = _mm256_madd_epi16(load256(&y.bsums), mins);
                        let d = _mm256_set1_ps(dw * y.d);
                        let dm = _mm256_set1_ps(-(dmw * y.d));
                        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), d, acc[t]);
                        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(m), dm, acc[t]);
                    }
                }
                for t in 0..NT {
                    out[t] = hsum(acc[t]);
                }
            }
        };
    }

    k4_tile!(q4_k_t, BlockQ4K, |b, lo, hi, h| (), {});

    // q5_K: bit 2j of qh[l] is the fifth bit of the j-th 64's low-nibble element l,
    // bit 2j + 1 that of its high-nibble element; `h` is qh shifted right 2j.
    k4_tile!(q5_k_t, BlockQ5K, |b, lo, hi, h| load256(&b.qh), {
        let one = _mm256_set1_epi8(1);
        let two = _mm256_set1_epi8(2);
        lo = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(_mm256_and_si256(h, one)));
        hi = _mm256_or_si256(hi, _mm256_slli_epi16::<3>(_mm256_and_si256(h, two)));
        // 16-bit shift: bits from the next byte land in bits 6-7, never read.
        h = _mm256_srli_epi16::<2>(h);
    });

    /// pshufb controls putting scale 2p in bytes 0..8 and 2p + 1 in bytes 8..16.
    const SCALE_PAIRS: [[i8; 16]; 8] = {
        let mut t = [[0i8; 16]; 8];
        let mut p = 0;
        while p < 8 {
            let mut k = 0;
            while k < 16 {
                t[p][k] = (2 * p + k / 8) as i8;
                k += 1;
            }
            p += 1;
        }
        t
    };

    /// q6_K: per 128 elements, four vectors of 32 codes (6-bit, unsigned), each two
    /// sub-blocks of 16 with their own scale; `- 32` via the bsums.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q6_k_t<const NT: usize>(w: &[BlockQ6K], x: &[BlockQ8K], out: &mut [f32]) {
        let nb = w.len();
        let m4 = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        let mut acc = [_mm256_setzero_ps(); NT];
        for (i, b) in w.iter().enumerate() {
            prefetch_block(b);
            let sc8 = load128(&b.scales);
            let sc16 = _mm256_cvtepi8_epi16(sc8);
            let dw = h2f(b.d);
            let mut isum = [_mm256_setzero_si256(); NT];
            for h in 0..2 {
                let ql0 = load256(&b.ql[64 * h..]);
                let ql1 = load256(&b.ql[64 * h + 32..]);
                let qh = load256(&b.qh[32 * h..]);
                // 16-bit shifts; the 0x30 mask keeps bits that came from the same byte.
                let q = [
                    _mm256_or_si256(
                        _mm256_and_si256(ql0, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                        _mm256_and_si256(qh, m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
                    ),
                ];
                for (k, &qk) in q.iter().enumerate() {
                    let ctl = load128(&SCALE_PAIRS[4 * h + k]);
                    let s = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, ctl));
                    for t in 0..NT {
                        let y = &x[t * nb + i];
                        let p = dot_scaled(qk, load256(&y.qs[128 * h + 32 * k..]), s);
                        isum[t] = _mm256_add_epi32(isum[t], p);
                    }
                }
            }
            for t in 0..NT {
                let y = &x[t * nb + i];
                // 32 * sum(bsums * scales): |32 * 16 * 2048 * 128| < 2^28.
                let off = _mm256_madd_epi16(load256(&y.bsums), sc16);
                let s = _mm256_sub_epi32(isum[t], _mm256_slli_epi32::<5>(off));
                let d = _mm256_set1_ps(dw * y.d);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc[t]);
            }
        }
        for t in 0..NT {
            out[t] = hsum(acc[t]);
        }
    }

    /// q2_K: per 128 elements, 32 bytes of 2-bit codes (shift 2j: elements 32j..32j+32),
    /// each 32 two sub-blocks of 16 with a 4-bit scale; the 4-bit mins via the bsums.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q2_k_t<const NT: usize>(w: &[BlockQ2K], x: &[BlockQ8K], out: &mut [f32]) {
        let nb = w.len();
        let m3 = _mm256_set1_epi8(3);
        let m0f = _mm_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); NT];
        for (i, b) in w.iter().enumerate() {
            prefetch_block(b);
            let raw = load128(&b.scales);
            let sc8 = _mm_and_si128(raw, m0f);
            let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(raw), m0f));
            let (dw, dmw) = (h2f(b.d), h2f(b.dmin));
            let mut isum = [_mm256_setzero_si256(); NT];
            for k in 0..2 {
                let q = load256(&b.qs[32 * k..]);
                let c = [
                    _mm256_and_si256(q, m3),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(q), m3),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), m3),
                    _mm256_and_si256(_mm256_srli_epi16::<6>(q), m3),
                ];
                for (j, &cj) in c.iter().enumerate() {
                    let ctl = load128(&SCALE_PAIRS[4 * k + j]);
                    let s = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sc8, ctl));
                    for t in 0..NT {
                        let y = &x[t * nb + i];
                        let p = dot_scaled(cj, load256(&y.qs[128 * k + 32 * j..]), s);
                        isum[t] = _mm256_add_epi32(isum[t], p);
                    }
                }
            }
            for t in 0..NT {
                let y = &x[t * nb + i];
                let m = _mm256_madd_epi16(load256(&y.bsums), mins);
                let d = _mm256_set1_ps(dw * y.d);
                let dm = _mm256_set1_ps(-(dmw * y.d));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), d, acc[t]);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(m), dm, acc[t]);
            }
        }
        for t in 0..NT {
            out[t] = hsum(acc[t]);
        }
    }

    /// q3_K: q2_K's code order plus a third bit (bit `i / 32` of `hmask[i % 32]`), 6-bit
    /// signed scales per 16; the `- 4` via the bsums.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q3_k_t<const NT: usize>(w: &[BlockQ3K], x: &[BlockQ8K], out: &mut [f32]) {
        let nb = w.len();
        let m3 = _mm256_set1_epi8(3);
        let m4 = _mm256_set1_epi8(4);
        let mut acc = [_mm256_setzero_ps(); NT];
        for (i, b) in w.iter().enumerate() {
            prefetch_block(b);
            let sc = scales_q3_k(&b.scales);
            let sc8 = load128(&sc);
            let sc16 = _mm256_cvtepi8_epi16(sc8);
            let dw = h2f(b.d);
            // h >> n (16-bit shifts, n <= 7): bit 0 of each byte is its own bit n.
            let mut h = load256(&b.hmask);
            let mut isum = [_mm256_setzero_si256(); NT];
            for k in 0..2 {
                let q = load256(&b.qs[32 * k..]);
                let c = [
                    _mm256_and_si256(q, m3),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(q), m3),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), m3),
                    _mm256_and_si256(_mm256_srli_epi16::<6>(q), m3),
                ];
                for (j, &cj) in c.iter().enumerate() {
                    let cj = _mm256_or_si256(cj, _mm256_and_si256(_mm256_slli_epi16::<2>(h), m4));
                    h = _mm256_srli_epi16::<1>(h);
                    let ctl = load128(&SCALE_PAIRS[4 * k + j]);
                    let s = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, ctl));
                    for t in 0..NT {
                        let y = &x[t * nb + i];
                        let p = dot_scaled(cj, load256(&y.qs[128 * k + 32 * j..]), s);
                        isum[t] = _mm256_add_epi32(isum[t], p);
                    }
                }
            }
            for t in 0..NT {
                let y = &x[t * nb + i];
                // 4 * sum(bsums * scales): |4 * 16 * 2048 * 32| < 2^23.
                let off = _mm256_madd_epi16(load256(&y.bsums), sc16);
                let s = _mm256_sub_epi32(isum[t], _mm256_slli_epi32::<2>(off));
                let d = _mm256_set1_ps(dw * y.d);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc[t]);
            }
        }
        for t in 0..NT {
            out[t] = hsum(acc[t]);
        }
    }

    wrap_tile!(q2_k, q2_k_t, BlockQ2K, 4);
    wrap_tile!(q3_k, q3_k_t, BlockQ3K, 4);
    wrap_tile!(q4_k, q4_k_t, BlockQ4K, 4);
    wrap_tile!(q5_k, q5_k_t, BlockQ5K, 4);
    wrap_tile!(q6_k, q6_k_t, BlockQ6K, 4);
}

// ---------------------------------------------------------------------------

/// AVX-512: 64 codes per step in element order; per token
/// `isum = vpdpwssd(isum, vpdpbusd(0, codes, y), scale)`. A `vpdpbusd` lane (4 products)
/// is at most 4 * 63 * 128 = 32256 in magnitude, so it is its own low i16 with a
/// sign-extension high i16; the scale lane's high i16 is zero, so `vpdpwssd` adds
/// exactly `lane * scale`.
mod avx512_impl {
    use super::*;

    /// i32 lane indices: lanes 0..8 from `a`, 8..16 from `b` (q4_K's two sub-blocks of
    /// 32 in 64 codes).
    const fn idx2(a: i32, b: i32) -> [i32; 16] {
        let mut t = [0; 16];
        let mut l = 0;
        while l < 16 {
            t[l] = if l < 8 { a } else { b };
            l += 1;
        }
        t
    }

    /// i32 lane indices: lane l from `4z + l / 4` (q6_K's four sub-blocks of 16 in 64 codes).
    const fn idx4(z: i32) -> [i32; 16] {
        let mut t = [0; 16];
        let mut l = 0;
        while l < 16 {
            t[l] = 4 * z + (l / 4) as i32;
            l += 1;
        }
        t
    }

    const IDX_K4: [[i32; 16]; 4] = [idx2(0, 1), idx2(2, 3), idx2(4, 5), idx2(6, 7)];
    const IDX_K6: [[i32; 16]; 4] = [idx4(0), idx4(1), idx4(2), idx4(3)];

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn load512<T: Copy>(s: &[T]) -> __m512i {
        assert!(std::mem::size_of_val(s) >= 64);
        // SAFETY: s holds at least 64 readable bytes (checked); loadu has no alignment need.
        unsafe { _mm512_loadu_si512(s.as_ptr().cast()) }
    }

    /// The scale lanes of the 4 code vectors: `v` permuted by each of `idx`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn spread(idx: &[[i32; 16]; 4], v: __m512i) -> [__m512i; 4] {
        [
            _mm512_permutexvar_epi32(load512(&idx[0]), v),
            _mm512_permutexvar_epi32(load512(&idx[1]), v),
            _mm512_permutexvar_epi32(load512(&idx[2]), v),
            _mm512_permutexvar_epi32(load512(&idx[3]), v),
        ]
    }

    /// Σ over 4 vectors of 64 codes: `vpdpwssd(vpdpbusd(0, w[z], y[z]), scale[z])`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn dot256(w: &[__m512i; 4], s: &[__m512i; 4], yq: &[i8; 256]) -> __m512i {
        dot256_v(w, s, &codes_y(yq))
    }

    /// A token's 256 codes as 4 vectors.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn codes_y(yq: &[i8; 256]) -> [__m512i; 4] {
        [
            load512(&yq[..64]),
            load512(&yq[64..128]),
            load512(&yq[128..192]),
            load512(&yq[192..]),
        ]
    }

    /// [`dot256`] with the token's 4 code vectors already loaded (same operations).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn dot256_v(w: &[__m512i; 4], s: &[__m512i; 4], y: &[__m512i; 4]) -> __m512i {
        let z = _mm512_setzero_si512();
        let mut acc = z;
        for k in 0..4 {
            let p = _mm512_dpbusd_epi32(z, w[k], y[k]);
            acc = _mm512_dpwssd_epi32(acc, p, s[k]);
        }
        acc
    }

    /// The 256 unsigned 4-bit codes of q4_K / q5_K in element order: 64 per vector.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn nibbles_k4(qs: &[u8; 128]) -> [__m512i; 4] {
        let m4 = _mm512_set1_epi8(0x0F);
        let r0 = load512(&qs[..64]);
        let r1 = load512(&qs[64..]);
        let (lo0, hi0) = (
            _mm512_and_si512(r0, m4),
            _mm512_and_si512(_mm512_srli_epi16::<4>(r0), m4),
        );
        let (lo1, hi1) = (
            _mm512_and_si512(r1, m4),
            _mm512_and_si512(_mm512_srli_epi16::<4>(r1), m4),
        );
        // 32 bytes of qs hold 64 elements: low nibbles first, then high nibbles.
        [
            _mm512_shuffle_i64x2::<0x44>(lo0, hi0),
            _mm512_shuffle_i64x2::<0xEE>(lo0, hi0),
            _mm512_shuffle_i64x2::<0x44>(lo1, hi1),
            _mm512_shuffle_i64x2::<0xEE>(lo1, hi1),
        ]
    }

    /// One q4_K / q5_K super-block ready for [`k4_acc`]: codes, scales spread to their
    /// lanes, mins as i16 pairs, d and dmin.
    #[derive(Clone, Copy)]
    struct K4 {
        q: [__m512i; 4],
        s: [__m512i; 4],
        mins: __m256i,
        d: f32,
        dmin: f32,
    }

    /// A [`K4`] from a q4_K / q5_K block's shared fields (q5_K then adds its fifth bits).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn k4_parts(scales: &[u8; 12], qs: &[u8; 128], d: half::f16, dmin: half::f16) -> K4 {
        let (sm, _) = scales_mins(scales);
        K4 {
            q: nibbles_k4(qs),
            s: spread(&IDX_K4, _mm512_cvtepu8_epi32(sm)),
            mins: mins_pairs(sm),
            d: h2f(d),
            dmin: h2f(dmin),
        }
    }

    /// q4_K's [`K4`].
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn k4_q4_k(b: &BlockQ4K) -> K4 {
        k4_parts(&b.scales, &b.qs, b.d, b.dmin)
    }

    /// q5_K's [`K4`]: q4_K's layout plus a fifth bit per code. Vector j holds elements
    /// 64j..64j+64; its low half takes bit 2j of qh[l], its high half bit 2j + 1. With
    /// hb = [qh | qh >> 1] both are bit 2j of hb, shifted to bit 4 (16-bit shifts; the
    /// 0x10 mask keeps bits from the same byte).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn k4_q5_k(b: &BlockQ5K) -> K4 {
        let mut k = k4_parts(&b.scales, &b.qs, b.d, b.dmin);
        add_q5_k_high_bits(b, &mut k.q);
        k
    }

    /// `acc` plus one super-block's dot with one token (`yq`: its codes, `bsums`, `yd`).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn k4_acc(k: &K4, yq: &[__m512i; 4], bsums: __m256i, yd: f32, acc: __m512) -> __m512 {
        let isum = dot256_v(&k.q, &k.s, yq);
        let m = _mm256_madd_epi16(bsums, k.mins);
        let d = _mm512_set1_ps(k.d * yd);
        let dm = _mm512_set1_ps(-(k.dmin * yd));
        let acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), d, acc);
        let m = _mm512_cvtepi32_ps(_mm512_zextsi256_si512(m));
        _mm512_fmadd_ps(m, dm, acc)
    }

    /// A K tile from a super-block unpacker and its per-token accumulate step.
    macro_rules! k4_tile {
        ($inner:ident, $w:ty, $unpack:ident, $acc:ident) => {
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            fn $inner<const NT: usize>(w: &[$w], x: &[BlockQ8K], out: &mut [f32]) {
                let nb = w.len();
                let mut acc = [_mm512_setzero_ps(); NT];
                for (i, b) in w.iter().enumerate() {
                    prefetch_block(b);
                    let k = $unpack(b);
                    for (t, a) in acc.iter_mut().enumerate() {
                        let y = &x[t * nb + i];
                        *a = $acc(&k, &codes_y(&y.qs), load256(&y.bsums), y.d, *a);
                    }
                }
                for t in 0..NT {
                    out[t] = _mm512_reduce_add_ps(acc[t]);
                }
            }
        };
    }

    k4_tile!(q4_k_t, BlockQ4K, k4_q4_k, k4_acc);
    k4_tile!(q5_k_t, BlockQ5K, k4_q5_k, k4_acc);

    /// [`KQ_ROWS`] rows of a `k4_tile!`'s one-token case: per super-block the token's
    /// codes and bsums are loaded once, then each row runs exactly the one-row tile's
    /// operations in its order (so each row's sum is bit-identical).
    macro_rules! k4_rows {
        ($inner:ident, $w:ty, $unpack:ident, $acc:ident) => {
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            fn $inner(w: &[$w], x: &[BlockQ8K], out: &mut [f32; KQ_ROWS]) {
                let nb = x.len();
                assert_eq!(
                    w.len(),
                    KQ_ROWS * nb,
                    "kq rows: {} blocks for {KQ_ROWS} x {nb}",
                    w.len()
                );
                let mut acc = [_mm512_setzero_ps(); KQ_ROWS];
                for (i, y) in x.iter().enumerate() {
                    let (yq, bsums) = (codes_y(&y.qs), load256(&y.bsums));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let b = &w[r * nb + i];
                        prefetch_block(b);
                        *a = $acc(&$unpack(b), &yq, bsums, y.d, *a);
                    }
                }
                for (o, a) in out.iter_mut().zip(acc) {
                    *o = _mm512_reduce_add_ps(a);
                }
            }
        };
    }

    k4_rows!(q4_k_rows_t, BlockQ4K, k4_q4_k, k4_acc);
    k4_rows!(q5_k_rows_t, BlockQ5K, k4_q5_k, k4_acc);

    /// Safe entry over a [`KQ_ROWS`]-row tile.
    macro_rules! wrap_rows {
        ($name:ident, $inner:ident, $w:ty) => {
            pub(super) fn $name(w: &[$w], x: &[BlockQ8K], out: &mut [f32; KQ_ROWS]) {
                // SAFETY: only reachable through the table returned by `avx512()`, which
                // checked every feature `$inner` is compiled with; it checks the shapes.
                unsafe { $inner(w, x, out) }
            }
        };
    }
    wrap_rows!(q4_k_rows, q4_k_rows_t, BlockQ4K);
    wrap_rows!(q5_k_rows, q5_k_rows_t, BlockQ5K);
    wrap_rows!(q6_k_rows, q6_k_rows_t, BlockQ6K);

    /// ORs the fifth bit of every q5_K code (from `b.qh`) into its low four in `q`
    /// (vector j: elements 64j..64j+64, as [`nibbles_k4`] gives them).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn add_q5_k_high_bits(b: &BlockQ5K, q: &mut [__m512i; 4]) {
        let qh = load256(&b.qh);
        let hb = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qh), _mm256_srli_epi16::<1>(qh));
        let m10 = _mm512_set1_epi8(0x10);
        let bits = [
            _mm512_slli_epi16::<4>(hb),
            _mm512_slli_epi16::<2>(hb),
            hb,
            _mm512_srli_epi16::<2>(hb),
        ];
        for j in 0..4 {
            q[j] = _mm512_or_si512(q[j], _mm512_and_si512(bits[j], m10));
        }
    }

    /// One q6_K super-block ready for [`k6_acc`]: codes, scales spread to their lanes
    /// (as i32 lanes with a zero high i16, see the module note), scales as i16, d.
    #[derive(Clone, Copy)]
    struct K6 {
        q: [__m512i; 4],
        s: [__m512i; 4],
        sc16: __m256i,
        d: f32,
    }

    /// q6_K's [`K6`]: per 128 elements, `ql` low nibbles are elements 0..64 and high
    /// nibbles 64..128, with two bits each of `qh` on top; `- 32` via the bsums.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn k6_q6_k(b: &BlockQ6K) -> K6 {
        let sc8 = load128(&b.scales);
        let sc32 = _mm512_and_si512(_mm512_cvtepi8_epi32(sc8), _mm512_set1_epi32(0xFFFF));
        K6 {
            q: codes_q6_k(b),
            s: spread(&IDX_K6, sc32),
            sc16: _mm256_cvtepi8_epi16(sc8),
            d: h2f(b.d),
        }
    }

    /// `acc` plus one q6_K super-block's dot with one token (`yq`, `bsums`, `yd`).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn k6_acc(k: &K6, yq: &[__m512i; 4], bsums: __m256i, yd: f32, acc: __m512) -> __m512 {
        let isum = dot256_v(&k.q, &k.s, yq);
        // 32 * sum(bsums * scales): |32 * 16 * 2048 * 128| < 2^28.
        let off = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, k.sc16));
        let isum = _mm512_sub_epi32(isum, _mm512_zextsi256_si512(off));
        let d = _mm512_set1_ps(k.d * yd);
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), d, acc)
    }

    k4_tile!(q6_k_t, BlockQ6K, k6_q6_k, k6_acc);
    k4_rows!(q6_k_rows_t, BlockQ6K, k6_q6_k, k6_acc);

    /// Two-bit codes of 128 elements from 32 bytes (shift 2j: elements 32j..32j+32), as
    /// two vectors in element order: X = [q | q >> 2]; (X & 3, (X >> 4) & 3).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn crumbs(q: __m256i) -> (__m512i, __m512i) {
        let m3 = _mm512_set1_epi8(3);
        // 16-bit shifts; the & 3 keeps bits that came from the same byte.
        let x = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q), _mm256_srli_epi16::<2>(q));
        (
            _mm512_and_si512(x, m3),
            _mm512_and_si512(_mm512_srli_epi16::<4>(x), m3),
        )
    }

    /// q2_K: 4-bit scales per 16 (lanes as q6_K), 4-bit mins via the bsums.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn q2_k_t<const NT: usize>(w: &[BlockQ2K], x: &[BlockQ8K], out: &mut [f32]) {
        let nb = w.len();
        let m0f = _mm_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); NT];
        for (i, b) in w.iter().enumerate() {
            prefetch_block(b);
            let raw = load128(&b.scales);
            let s = spread(&IDX_K6, _mm512_cvtepu8_epi32(_mm_and_si128(raw, m0f)));
            let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(raw), m0f));
            let (a0, b0) = crumbs(load256(&b.qs[..32]));
            let (a1, b1) = crumbs(load256(&b.qs[32..]));
            let q = [a0, b0, a1, b1];
            let (dw, dmw) = (h2f(b.d), h2f(b.dmin));
            for t in 0..NT {
                let y = &x[t * nb + i];
                let isum = dot256(&q, &s, &y.qs);
                let m = _mm256_madd_epi16(load256(&y.bsums), mins);
                let d = _mm512_set1_ps(dw * y.d);
                let dm = _mm512_set1_ps(-(dmw * y.d));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), d, acc[t]);
                let m = _mm512_cvtepi32_ps(_mm512_zextsi256_si512(m));
                acc[t] = _mm512_fmadd_ps(m, dm, acc[t]);
            }
        }
        for t in 0..NT {
            out[t] = _mm512_reduce_add_ps(acc[t]);
        }
    }

    /// q3_K: q2_K's codes plus the `hmask` bit as bit 2; vector 2k holds elements
    /// 128k..128k+64 (bits 4k, 4k + 1 of hmask), 2k + 1 the next 64 (bits 4k + 2, 4k + 3).
    /// With hb = [hm | hm >> 1] each is one bit of hb, shifted to bit 2 (16-bit shifts;
    /// the & 4 keeps bits from the same byte).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn q3_k_t<const NT: usize>(w: &[BlockQ3K], x: &[BlockQ8K], out: &mut [f32]) {
        let nb = w.len();
        let m4 = _mm512_set1_epi8(4);
        let mut acc = [_mm512_setzero_ps(); NT];
        for (i, b) in w.iter().enumerate() {
            prefetch_block(b);
            let sc = scales_q3_k(&b.scales);
            let sc8 = load128(&sc);
            // Scales as i32 lanes with a zero high i16 (see the module note).
            let sc32 = _mm512_and_si512(_mm512_cvtepi8_epi32(sc8), _mm512_set1_epi32(0xFFFF));
            let s = spread(&IDX_K6, sc32);
            let sc16 = _mm256_cvtepi8_epi16(sc8);
            let hm = load256(&b.hmask);
            let hb =
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(hm), _mm256_srli_epi16::<1>(hm));
            let (a0, b0) = crumbs(load256(&b.qs[..32]));
            let (a1, b1) = crumbs(load256(&b.qs[32..]));
            let bits = [
                _mm512_slli_epi16::<2>(hb),
                hb,
                _mm512_srli_epi16::<2>(hb),
                _mm512_srli_epi16::<4>(hb),
            ];
            let mut q = [a0, b0, a1, b1];
            for k in 0..4 {
                q[k] = _mm512_or_si512(q[k], _mm512_and_si512(bits[k], m4));
            }
            let dw = h2f(b.d);
            for t in 0..NT {
                let y = &x[t * nb + i];
                let isum = dot256(&q, &s, &y.qs);
                // 4 * sum(bsums * scales): |4 * 16 * 2048 * 32| < 2^23.
                let off = _mm256_slli_epi32::<2>(_mm256_madd_epi16(load256(&y.bsums), sc16));
                let isum = _mm512_sub_epi32(isum, _mm512_zextsi256_si512(off));
                let d = _mm512_set1_ps(dw * y.d);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), d, acc[t]);
            }
        }
        for t in 0..NT {
            out[t] = _mm512_reduce_add_ps(acc[t]);
        }
    }

    wrap_tile!(q2_k, q2_k_t, BlockQ2K, 8);
    wrap_tile!(q3_k, q3_k_t, BlockQ3K, 8);
    wrap_tile!(q4_k, q4_k_t, BlockQ4K, 8);
    wrap_tile!(q5_k, q5_k_t, BlockQ5K, 8);
    wrap_tile!(q6_k, q6_k_t, BlockQ6K, 8);

    // -----------------------------------------------------------------------
    // K GEMM (prefill): 4 rows x 16 tokens, tokens in the 16 i32 lanes. Per super-block
    // and 4-code chunk c, one `vpdpbusd` per row multiplies the token block's chunk-c
    // bytes (64: 4 signed codes per token) by the row's 4 unsigned codes broadcast
    // from memory, into a partial sum that starts from zero every G chunks; the
    // partial sum is then weighted by its 16-code scale: `vpdpwssd` with the scale in
    // the low i16 (high i16 zero) when the partial sum fits an i16 (it is its own low
    // half, the high half its sign), else `vpmulld` (q6_K). Bounds with |activation| <=
    // 128: q4_K G = 4 chunks, 16 * 15 * 128 = 30720; q5_K G = 2, 8 * 31 * 128 = 31744;
    // q2_K / q3_K G = 4, 16 * 7 * 128 = 14336; q6_K 16 * 63 * 128 = 129024 (vpmulld).
    // The block sums are weighted by `mw` with `vpdpwssd` (both i16 pairs). A
    // super-block's isum is below 2^29 in magnitude, so every integer is exact.

    /// The K GEMM over `NT` token blocks (1 or 2: 4 rows x 32 tokens share each
    /// broadcast weight word). `G`: chunks per partial sum; `MUL`: scale by `vpmulld`;
    /// `BS32`: the `mw` pairs go against `bs32` (4 words) instead of `bs16` (8); `SEP`:
    /// the block sums have their own float scale (`dmin`) instead of joining isum.
    // Rows and token blocks index several register arrays at once ([j][r]).
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn kgemm_t<
        const NT: usize,
        const G: usize,
        const MUL: bool,
        const BS32: bool,
        const SEP: bool,
    >(
        w: &KGemmRows,
        x: &[ActKGemm],
        out: &mut [f32],
    ) {
        const R: usize = KQ_GEMM_ROWS;
        let (nb, n) = kgemm_shape(w, x.len(), out.len());
        assert_eq!(n, NT);
        let z = _mm512_setzero_si512();
        let mut f = [[_mm512_setzero_ps(); R]; NT];
        for b in 0..nb {
            let mut xb = [&x[b]; NT];
            for (j, v) in xb.iter_mut().enumerate() {
                *v = &x[j * nb + b];
            }
            let mut dx = [_mm512_setzero_ps(); NT];
            for j in 0..NT {
                // SAFETY: d is 64 bytes at a 64-byte aligned offset of an ActKGemm.
                dx[j] = unsafe { _mm512_load_ps(xb[j].d.as_ptr()) };
            }
            let mut isum = [[z; R]; NT];
            for k in 0..if BS32 { 4 } else { 8 } {
                for j in 0..NT {
                    let bs = if BS32 {
                        load512(&xb[j].bs32[k])
                    } else {
                        load512(&xb[j].bs16[k])
                    };
                    for r in 0..R {
                        let m = _mm512_set1_epi32(w.mw[(r * nb + b) * 8 + k]);
                        isum[j][r] = _mm512_dpwssd_epi32(isum[j][r], bs, m);
                    }
                }
            }
            if SEP {
                // The block sums have their own scale: into f now, isum restarts.
                for j in 0..NT {
                    for r in 0..R {
                        let dm = _mm512_mul_ps(_mm512_set1_ps(w.dmin[r * nb + b]), dx[j]);
                        f[j][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[j][r]), dm, f[j][r]);
                        isum[j][r] = z;
                    }
                }
            }
            for g in 0..64 / G {
                let mut part = [[z; R]; NT];
                for c in g * G..(g + 1) * G {
                    let mut xv = [z; NT];
                    for j in 0..NT {
                        // SAFETY: q[c] is 64 bytes at a 64-byte aligned offset of an
                        // ActKGemm.
                        xv[j] = unsafe { _mm512_load_si512(xb[j].q[c].as_ptr().cast()) };
                    }
                    for r in 0..R {
                        // SAFETY: r < 4, b < nb, c < 64: the 4 bytes at (r * nb + b) * 256
                        // + 4c are inside q (len 4 * nb * 256, checked by kgemm_shape).
                        let cw = unsafe {
                            w.q.as_ptr()
                                .add((r * nb + b) * 256 + 4 * c)
                                .cast::<i32>()
                                .read_unaligned()
                        };
                        let cw = _mm512_set1_epi32(cw);
                        for j in 0..NT {
                            part[j][r] = _mm512_dpbusd_epi32(part[j][r], cw, xv[j]);
                        }
                    }
                }
                for r in 0..R {
                    // SAFETY: (r * nb + b) * 16 + g * G / 4 < 4 * nb * 16 = sc.len()
                    // (checked by kgemm_shape).
                    let s = unsafe { *w.sc.as_ptr().add((r * nb + b) * 16 + g * G / 4) };
                    let s = _mm512_set1_epi32(s);
                    for j in 0..NT {
                        isum[j][r] = if MUL {
                            _mm512_add_epi32(isum[j][r], _mm512_mullo_epi32(part[j][r], s))
                        } else {
                            _mm512_dpwssd_epi32(isum[j][r], part[j][r], s)
                        };
                    }
                }
            }
            for j in 0..NT {
                for r in 0..R {
                    let d = _mm512_mul_ps(_mm512_set1_ps(w.d[r * nb + b]), dx[j]);
                    f[j][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[j][r]), d, f[j][r]);
                }
            }
        }
        for j in 0..NT {
            let mut t = [[0.0f32; KQ_GEMM_TOKENS]; R];
            for (r, fr) in f[j].iter().enumerate() {
                // SAFETY: t[r] is 16 writable f32; storeu has no alignment need.
                unsafe { _mm512_storeu_ps(t[r].as_mut_ptr(), *fr) };
            }
            for tok in 0..KQ_GEMM_TOKENS {
                for r in 0..R {
                    out[(j * KQ_GEMM_TOKENS + tok) * R + r] = t[r][tok];
                }
            }
        }
    }

    /// Safe entry over `kgemm_t::<NT, …>`, NT from the output length.
    macro_rules! wrap_gemm {
        ($name:ident, $g:literal, $mul:literal, $bs32:literal, $sep:literal) => {
            pub(super) fn $name(w: &KGemmRows, x: &[ActKGemm], out: &mut [f32]) {
                // SAFETY: only reachable through the table `gemm_avx512()` returns after
                // `avx512()` checked every feature kgemm_t is compiled with; shapes are
                // checked inside.
                unsafe {
                    if out.len() > KQ_GEMM_ROWS * KQ_GEMM_TOKENS {
                        kgemm_t::<2, $g, $mul, $bs32, $sep>(w, x, out)
                    } else {
                        kgemm_t::<1, $g, $mul, $bs32, $sep>(w, x, out)
                    }
                }
            }
        };
    }

    wrap_gemm!(gemm_q2_k, 4, false, false, true);
    wrap_gemm!(gemm_q3_k, 4, false, false, false);
    wrap_gemm!(gemm_q4_k, 4, false, true, true);
    wrap_gemm!(gemm_q5_k, 2, false, true, true);
    wrap_gemm!(gemm_q6_k, 4, true, false, false);

    /// Stores 4 vectors of codes (256 bytes, element order) at `q[0..256]`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn store_codes(q: &mut [u8], v: &[__m512i; 4]) {
        assert!(q.len() >= 256);
        for (k, vk) in v.iter().enumerate() {
            // SAFETY: q holds at least 256 writable bytes (checked); storeu has no
            // alignment need.
            unsafe { _mm512_storeu_si512(q[64 * k..].as_mut_ptr().cast(), *vk) };
        }
    }

    /// Shared unpack loop: codes by SIMD (`$codes` gives the 4 vectors of a block),
    /// scales, pair weights, d and dmin by the scalar twin's `$meta`.
    macro_rules! unpack_fn {
        ($name:ident, $inner:ident, $w:ty, $meta:path, |$b:ident| $codes:expr) => {
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            fn $inner(w: &[$w], q: &mut [u8]) {
                assert_eq!(q.len(), 256 * w.len());
                for ($b, qi) in w.iter().zip(q.chunks_exact_mut(256)) {
                    store_codes(qi, &$codes);
                }
            }

            pub(super) fn $name(w: &[$w], rows: &mut KGemmRows) {
                kq_generic::unpack_with(w, rows, None, $meta);
                // SAFETY: only reachable through the table `gemm_avx512()` returns after
                // `avx512()` checked every feature `$inner` is compiled with.
                unsafe { $inner(w, rows.q) };
            }
        };
        // q4_K / q5_K: the scales, mins and d / -dmin by SIMD too (the twin's
        // `meta_q4_k`; the same values, tested).
        (k4: $name:ident, $inner:ident, $w:ty, |$b:ident| $codes:expr) => {
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            fn $inner(w: &[$w], rows: &mut KGemmRows) {
                rows.check(w.len());
                // Scale j / 2 for the 16 codes j (bytes 0..8 of `scales_mins`).
                let dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
                for (i, $b) in w.iter().enumerate() {
                    store_codes(&mut rows.q[256 * i..256 * i + 256], &$codes);
                    let (sm, _) = scales_mins(&$b.scales);
                    let sc = _mm512_cvtepu8_epi32(_mm_shuffle_epi8(sm, dup));
                    // The 8 mins as i16 pairs: words 0..4; words 4..8 zero.
                    let mw = _mm256_zextsi128_si256(_mm_cvtepu8_epi16(_mm_srli_si128::<8>(sm)));
                    let (sci, mwi) = (
                        &mut rows.sc[16 * i..16 * i + 16],
                        &mut rows.mw[8 * i..8 * i + 8],
                    );
                    // SAFETY: sci holds 16 i32 (64 bytes), mwi 8 i32 (32 bytes); storeu
                    // has no alignment need.
                    unsafe {
                        _mm512_storeu_si512(sci.as_mut_ptr().cast(), sc);
                        _mm256_storeu_si256(mwi.as_mut_ptr().cast(), mw);
                    }
                    rows.d[i] = h2f($b.d);
                    rows.dmin[i] = -h2f($b.dmin);
                }
            }

            pub(super) fn $name(w: &[$w], rows: &mut KGemmRows) {
                // SAFETY: only reachable through the table `gemm_avx512()` returns after
                // `avx512()` checked every feature `$inner` is compiled with.
                unsafe { $inner(w, rows) };
            }
        };
    }

    /// q6_K codes (unsigned, element order) of one block.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn codes_q6_k(b: &BlockQ6K) -> [__m512i; 4] {
        let m4 = _mm512_set1_epi8(0x0F);
        let m30 = _mm512_set1_epi8(0x30);
        let mut q = [_mm512_setzero_si512(); 4];
        for h in 0..2 {
            let ql = load512(&b.ql[64 * h..]);
            let qh = load256(&b.qh[32 * h..]);
            // hb = [qh | qh >> 2]: bits 0-1 / 4-5 of hb are the high bits of
            // elements 0..64 / 64..128 (16-bit shifts; 0x30 keeps same-byte bits).
            let hb =
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qh), _mm256_srli_epi16::<2>(qh));
            q[2 * h] = _mm512_or_si512(
                _mm512_and_si512(ql, m4),
                _mm512_and_si512(_mm512_slli_epi16::<4>(hb), m30),
            );
            q[2 * h + 1] = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
                _mm512_and_si512(hb, m30),
            );
        }
        q
    }

    /// q5_K codes (unsigned, element order) of one block.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn codes_q5_k(b: &BlockQ5K) -> [__m512i; 4] {
        let mut q = nibbles_k4(&b.qs);
        add_q5_k_high_bits(b, &mut q);
        q
    }

    /// q3_K codes (unsigned: the `- 4` not applied, element order) of one block.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn codes_q3_k(b: &BlockQ3K) -> [__m512i; 4] {
        let m4 = _mm512_set1_epi8(4);
        let hm = load256(&b.hmask);
        let hb = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(hm), _mm256_srli_epi16::<1>(hm));
        let (a0, b0) = crumbs(load256(&b.qs[..32]));
        let (a1, b1) = crumbs(load256(&b.qs[32..]));
        let bits = [
            _mm512_slli_epi16::<2>(hb),
            hb,
            _mm512_srli_epi16::<2>(hb),
            _mm512_srli_epi16::<4>(hb),
        ];
        let mut q = [a0, b0, a1, b1];
        for k in 0..4 {
            q[k] = _mm512_or_si512(q[k], _mm512_and_si512(bits[k], m4));
        }
        q
    }

    /// q2_K codes (element order) of one block.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn codes_q2_k(b: &BlockQ2K) -> [__m512i; 4] {
        let (a0, b0) = crumbs(load256(&b.qs[..32]));
        let (a1, b1) = crumbs(load256(&b.qs[32..]));
        [a0, b0, a1, b1]
    }

    unpack_fn!(
        unpack_q2_k,
        codes_q2_k_all,
        BlockQ2K,
        kq_generic::meta_q2_k,
        |b| codes_q2_k(b)
    );
    unpack_fn!(
        unpack_q3_k,
        codes_q3_k_all,
        BlockQ3K,
        kq_generic::meta_q3_k,
        |b| codes_q3_k(b)
    );
    unpack_fn!(k4: unpack_q4_k, unpack_q4_k_t, BlockQ4K, |b| nibbles_k4(&b.qs));
    unpack_fn!(k4: unpack_q5_k, unpack_q5_k_t, BlockQ5K, |b| codes_q5_k(b));
    unpack_fn!(
        unpack_q6_k,
        codes_q6_k_all,
        BlockQ6K,
        kq_generic::meta_q6_k,
        |b| codes_q6_k(b)
    );

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn prefetch_t(bytes: &[u8]) {
        let mut off = 0;
        while off < bytes.len() {
            _mm_prefetch::<_MM_HINT_T1>(bytes[off..].as_ptr().cast());
            off += 64;
        }
    }

    /// Hints `bytes` into the cache, one prefetch per 64 bytes.
    pub(super) fn prefetch(bytes: &[u8]) {
        // SAFETY: only reachable through the table `gemm_avx512()` returns after
        // `avx512()` checked every feature prefetch_t is compiled with.
        unsafe { prefetch_t(bytes) }
    }

    /// ggml's `quantize_row_q8_K_ref` (`reference::quantize_row_q8_k`), 16 values per
    /// step: the same max search (the first value of the largest magnitude sets the
    /// sign), the same `iscale = -127 / max` and `d = 1 / iscale`, the same products;
    /// `cvtps2dq` rounds half to even as ggml's `nearest_int` does for |v| < 2^22.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn quantize_q8_k_t(x: &[f32], y: &mut [BlockQ8K]) {
        assert_eq!(
            x.len(),
            256 * y.len(),
            "quantize_q8_k: {} values for {} blocks",
            x.len(),
            y.len()
        );
        let abs = _mm512_set1_epi32(0x7FFF_FFFF);
        for (xb, yb) in x.chunks_exact(256).zip(y.iter_mut()) {
            let v: [__m512; 16] = core::array::from_fn(|k| {
                // SAFETY: xb holds 256 f32, k < 16; loadu has no alignment need.
                unsafe { _mm512_loadu_ps(xb[16 * k..].as_ptr()) }
            });
            let mut m = _mm512_setzero_ps();
            for vk in &v {
                let a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(*vk), abs));
                m = _mm512_max_ps(m, a);
            }
            let amax = _mm512_reduce_max_ps(m);
            if amax == 0.0 {
                *yb = BlockQ8K::default();
                continue;
            }
            // The first value whose magnitude is amax.
            let am = _mm512_set1_ps(amax);
            let mut max = 0.0f32;
            for (k, vk) in v.iter().enumerate() {
                let a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(*vk), abs));
                let hit = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, am);
                if hit != 0 {
                    max = xb[16 * k + hit.trailing_zeros() as usize];
                    break;
                }
            }
            let iscale = -127.0 / max;
            let is = _mm512_set1_ps(iscale);
            let top = _mm512_set1_epi32(127);
            for (k, vk) in v.iter().enumerate() {
                let q = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(is, *vk)), top);
                yb.bsums[k] = _mm512_reduce_add_epi32(q) as i16;
                // SAFETY: qs[16k..16k + 16] is 16 writable bytes; storeu has no
                // alignment need. The codes are in -128..=127, so narrowing keeps them.
                unsafe {
                    _mm_storeu_si128(yb.qs[16 * k..].as_mut_ptr().cast(), _mm512_cvtepi32_epi8(q))
                };
            }
            yb.d = 1.0 / iscale;
        }
    }

    /// Safe entry over `quantize_q8_k_t`.
    pub(super) fn quantize_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
        // SAFETY: only reachable through `quantize_avx512()`, which checked every
        // feature quantize_q8_k_t is compiled with.
        unsafe { quantize_q8_k_t(x, y) }
    }
}
