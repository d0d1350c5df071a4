//! x86-64 kernels at two levels:
//!
//! - `avx2`: AVX2 + FMA + F16C. q8_0 one block per step with ggml's sign trick,
//!   `maddubs(|w|, sign(x, w))` then `madd` with ones (`mul_sum_i8_pairs_float` in
//!   ggml's `arch/x86/quants.c`); the 4/5-bit types two blocks per step as unsigned
//!   codes (`maddubs` of both halves, the offset from the pre-summed activations).
//!   The prefill GEMM: `maddubs` (see `gemm_avx2_t`), or AVX-VNNI's 256-bit
//!   `vpdpbusd` where the CPU has it (variant `avxvnni`).
//! - `avx512`: adds AVX-512 F/BW/VL + VNNI. Four blocks per step in two zmm
//!   registers (see `avx512_impl`), one `vpdpbusd` per register, weights as unsigned
//!   codes with the offset pre-summed in the activations, q5's fifth bits as mask
//!   registers; float dots run 16 wide with masked loads for the ragged end.
//!
//! Rounding: integer block sums are exact, so every level differs from the scalar
//! twin only in the order the per-block f32 products are added (and FMA rounding).
//! The activation quantizer reproduces ggml's `_ref` rounding bit for bit.
//!
//! Every function with `#[target_feature]` is private; the safe wrappers in the
//! tables are only reachable through [`avx2`] / [`avx512`], which return a table
//! only when the CPU reports every feature the table's functions are compiled for.
//! A tile handles one weight row against up to `tile_tokens` tokens: each weight
//! block is unpacked once and multiplied with every token's block.

use super::{act_groups, generic, ActGemm, ActQ8x4, GemmRows, Kernels, GEMM_ROWS, GEMM_TOKENS};
use core::arch::x86_64::*;
use half::{bf16, f16};
use quant_formats::block::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QK};

/// The AVX2 table, if this CPU has AVX2, FMA and F16C: the variant with the AVX-VNNI
/// GEMM where the CPU also has AVX-VNNI.
pub(super) fn avx2() -> Option<&'static Kernels> {
    let ok = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    if !ok {
        None
    } else if is_x86_feature_detected!("avxvnni") {
        Some(&AVX2_VNNI)
    } else {
        Some(&AVX2)
    }
}

/// Every variant of the AVX2 level this CPU runs, worst first (tests cover each): the
/// plain table, and the AVX-VNNI one where the CPU has it.
pub(super) fn avx2_variants() -> Vec<&'static Kernels> {
    match avx2() {
        None => vec![],
        Some(t) if std::ptr::eq(t, &AVX2_VNNI) => vec![&AVX2, &AVX2_VNNI],
        Some(t) => vec![t],
    }
}

/// Whether this CPU has AVX2/FMA/F16C and AVX-512 F, BW, VL and VNNI.
fn has_avx512_vnni() -> bool {
    avx2().is_some()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// Whether this CPU has AVX512-VBMI and GFNI (the faster avx512 variant's extras).
fn has_vbmi_gfni() -> bool {
    is_x86_feature_detected!("avx512vbmi") && is_x86_feature_detected!("gfni")
}

/// The AVX-512 table, if this CPU has AVX2/FMA/F16C and AVX-512 F, BW, VL and VNNI:
/// the VBMI variant where the CPU also has AVX512-VBMI. (Called per matmul: no
/// allocation; feature detection is cached by std.)
pub(super) fn avx512() -> Option<&'static Kernels> {
    if !has_avx512_vnni() {
        None
    } else if has_vbmi_gfni() {
        Some(&AVX512_VBMI)
    } else {
        Some(&AVX512)
    }
}

/// Every variant of the AVX-512 level this CPU runs, worst first (tests cover each).
pub(super) fn avx512_variants() -> Vec<&'static Kernels> {
    let vnni = has_avx512_vnni();
    let vbmi = vnni && has_vbmi_gfni();
    [(vnni, &AVX512), (vbmi, &AVX512_VBMI)]
        .into_iter()
        .filter_map(|(ok, t)| ok.then_some(t))
        .collect()
}

static AVX2: Kernels = Kernels {
    name: "avx2",
    variant: "",
    tile_tokens: 4,
    quantize: quantize_avx2,
    q4_0: avx2_impl::q4_0,
    q4_1: avx2_impl::q4_1,
    q5_0: avx2_impl::q5_0,
    q5_1: avx2_impl::q5_1,
    q8_0: avx2_impl::q8_0,
    f32: avx2_impl::f32,
    f16: avx2_impl::f16,
    bf16: avx2_impl::bf16,
    gemm: Some(gemm_avx2),
};

/// [`AVX2`] with the prefill GEMM on AVX-VNNI's `vpdpbusd` (same results).
static AVX2_VNNI: Kernels = Kernels {
    variant: "avxvnni",
    gemm: Some(gemm_avxvnni),
    ..AVX2
};

static AVX512: Kernels = Kernels {
    name: "avx512",
    variant: "vnni",
    tile_tokens: 4,
    // The quantizer is not the bottleneck; the AVX2 one serves both levels.
    quantize: quantize_avx2,
    q4_0: avx512_impl::q4_0,
    q4_1: avx512_impl::q4_1,
    q5_0: avx512_impl::q5_0,
    q5_1: avx512_impl::q5_1,
    q8_0: avx512_impl::q8_0,
    f32: avx512_impl::f32,
    f16: avx512_impl::f16,
    bf16: avx512_impl::bf16,
    gemm: Some(gemm_avx512),
};

/// [`AVX512`] with the weight groups unpacked by VBMI byte permutes and GFNI shifts
/// (same results).
static AVX512_VBMI: Kernels = Kernels {
    name: "avx512",
    variant: "vnni+vbmi",
    q4_0: avx512_impl::q4_0_v,
    q4_1: avx512_impl::q4_1_v,
    q5_0: avx512_impl::q5_0_v,
    q5_1: avx512_impl::q5_1_v,
    q8_0: avx512_impl::q8_0_v,
    ..AVX512
};

// ---------------------------------------------------------------------------
// Shared AVX2 helpers (also inlined into the AVX-512 functions, whose feature
// set is a superset).

/// 32 bytes of a block as a vector.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load32<T>(bytes: &[T; 32]) -> __m256i {
    debug_assert_eq!(std::mem::size_of::<T>(), 1);
    // SAFETY: `bytes` is 32 one-byte elements (i8 or u8 in every caller), readable; loadu has no alignment need.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

/// Bit j of the little-endian `qh` -> byte j = 0xFF or 0x00 (ggml's `bytes_from_bits_32`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn bytes_from_bits(qh: [u8; 4]) -> __m256i {
    let x = u32::from_le_bytes(qh) as i32;
    let shuf = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0x0000_0000_0000_0000,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// An f16 in all 8 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn splat_f16(h: f16) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(h.to_bits() as i16))
}

/// One f16 as f32 through F16C (exact).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn f16_to_f32(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

/// Bytes ahead of the weight being read that the kernels prefetch. The hardware
/// prefetchers alone left decode at ~65% of the read bandwidth here (one weight row
/// is short and the rows of a chunk are read back to back); 3 KB ahead brought
/// the 24-layer 0.5B matvec from 28.7 to 19.1 ms (q4_0, 2 threads, same run).
const PREFETCH: usize = 3072;

/// Prefetch the cache line `PREFETCH` bytes after `p` into L1 and the one
/// [`L2_AHEAD`] bytes after it into L2 (never faults, even past the end).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn prefetch<T>(p: *const T) {
    _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>().wrapping_add(PREFETCH));
    _mm_prefetch::<_MM_HINT_T1>(p.cast::<i8>().wrapping_add(L2_AHEAD));
}

/// Prefetches every cache line of the `LEN` bytes from `p` (never faults, even past
/// the end of the data), with `_mm_prefetch`'s hint `HINT` (`_MM_HINT_T0`: into L1,
/// `_MM_HINT_T1`: into L2 only).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn prefetch_span<const LEN: usize, const HINT: i32>(p: *const i8) {
    let mut o = 0;
    while o < LEN {
        _mm_prefetch::<HINT>(p.wrapping_add(o));
        o += 64;
    }
}

/// Bytes (at least) ahead of the weight being read that the 4-row tiles also
/// prefetch into L2 only (`prefetcht1`), on top of their L1 prefetch one tile ahead.
/// Decode of 0.5B q4_0 / q8_0 and 1.5B q4_0, 2 threads, the weight matmuls of a
/// token alone, alternating in one run: 19.0 / 27.4 / 96.1 ms with the L1 prefetch
/// only, 17.7 / 25.3 / 88.4 ms with this at 8 KB (4 KB and 16 KB within 1%; L2
/// prefetch alone at 4 KB in between). The L2 hint keeps more lines in flight
/// than L1 fill buffers allow and crosses the 4 KB pages the hardware streamer
/// stops at.
pub(super) const L2_AHEAD: usize = 8192;

/// Sum of the 8 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Unsigned bytes `u` times signed bytes `s`, sums of 4 neighbours as 8 i32 (AVX2:
/// `maddubs` + `madd`; no i16 overflow as |u| <= 128 and |s| <= 127 in every caller).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_us_avx2(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

// ---------------------------------------------------------------------------
// Tiles: one weight row `w` ([nb]) against NT activation rows `x` ([NT, per_row]).

/// Safe entry point over the `#[target_feature]` tile `$inner::<NT>`, for NT in 1..=8.
/// `$per_row(nb)`: activation items per token.
macro_rules! wrap_tile {
    ($name:ident, $inner:ident, $w:ty, $a:ty, $max:expr, $per_row:expr) => {
        pub(super) fn $name(w: &[$w], x: &[$a], out: &mut [f32]) {
            let nb = w.len();
            let nt = out.len();
            let per_row: usize = $per_row(nb);
            assert!(
                (1..=$max).contains(&nt) && x.len() == per_row * nt,
                "tile: {} activation items for {nt} tokens x {per_row} (max {} tokens)",
                x.len(),
                $max
            );
            // SAFETY: this function is only reachable through a table returned by
            // `avx2()` / `avx512()`, which checked at run time that the CPU has every
            // feature `$inner` is compiled with; lengths were checked just above.
            unsafe {
                match nt {
                    1 => $inner::<1>(w, x, out),
                    2 => $inner::<2>(w, x, out),
                    3 => $inner::<3>(w, x, out),
                    4 => $inner::<4>(w, x, out),
                    5 => $inner::<5>(w, x, out),
                    6 => $inner::<6>(w, x, out),
                    7 => $inner::<7>(w, x, out),
                    _ => $inner::<8>(w, x, out),
                }
            }
        }
    };
}

/// 8-wide float tiles (AVX2): `$load(ptr) -> __m256` widens 8 weights to f32.
macro_rules! float_tiles_256 {
    ($feat:literal, $max:expr) => {
        macro_rules! float_tile {
            ($inner:ident, $w:ty, $load:expr, $to_f32:expr) => {
                #[target_feature(enable = $feat)]
                fn $inner<const NT: usize>(w: &[$w], x: &[f32], out: &mut [f32]) {
                    let n = w.len();
                    let mut acc0 = [_mm256_setzero_ps(); NT];
                    let mut acc1 = [_mm256_setzero_ps(); NT];
                    let mut i = 0;
                    while i + 16 <= n {
                        prefetch(w.as_ptr().wrapping_add(i));
                        // SAFETY: i + 16 <= n = w.len(): 16 weights readable.
                        let (w0, w1) =
                            unsafe { ($load(w.as_ptr().add(i)), $load(w.as_ptr().add(i + 8))) };
                        for t in 0..NT {
                            let xt = &x[t * n + i..t * n + i + 16];
                            // SAFETY: xt has 16 readable f32.
                            let (x0, x1) = unsafe {
                                (
                                    _mm256_loadu_ps(xt.as_ptr()),
                                    _mm256_loadu_ps(xt.as_ptr().add(8)),
                                )
                            };
                            acc0[t] = _mm256_fmadd_ps(w0, x0, acc0[t]);
                            acc1[t] = _mm256_fmadd_ps(w1, x1, acc1[t]);
                        }
                        i += 16;
                    }
                    if i + 8 <= n {
                        // SAFETY: i + 8 <= n: 8 weights readable.
                        let w0 = unsafe { $load(w.as_ptr().add(i)) };
                        for t in 0..NT {
                            let xt = &x[t * n + i..t * n + i + 8];
                            // SAFETY: xt has 8 readable f32.
                            let x0 = unsafe { _mm256_loadu_ps(xt.as_ptr()) };
                            acc0[t] = _mm256_fmadd_ps(w0, x0, acc0[t]);
                        }
                        i += 8;
                    }
                    for t in 0..NT {
                        let mut tail = 0.0f32;
                        for j in i..n {
                            tail += $to_f32(w[j]) * x[t * n + j];
                        }
                        out[t] = hsum(_mm256_add_ps(acc0[t], acc1[t])) + tail;
                    }
                }
            };
        }
        float_tile!(f32_t, f32, |p: *const f32| _mm256_loadu_ps(p), |v: f32| v);
        float_tile!(
            f16_t,
            f16,
            |p: *const f16| _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
            f16::to_f32
        );
        float_tile!(
            bf16_t,
            bf16,
            |p: *const bf16| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(p.cast())
            ))),
            bf16::to_f32
        );
        wrap_rows!(f32, f32_1, f32_t, f32, $max);
        wrap_rows!(f16, f16_1, f16_t, f16, $max);
        wrap_rows!(bf16, bf16_1, bf16_t, bf16, $max);
    };
}

/// Safe entry over the quantized tile `$inner::<R, NT>`: four rows at once, fewer one
/// by one (each row's float operations are the same either way, so results do not
/// depend on how rows are split); 1..=4 tokens.
macro_rules! wrap_q_rows {
    ($name:ident, $inner:ident, $w:ty) => {
        pub(in crate::kernels) fn $name(w: &[$w], rows: usize, x: &[ActQ8x4], out: &mut [f32]) {
            let (nb, nt) = crate::kernels::q_tile_shape(w.len(), rows, x.len(), out.len(), 4);
            if rows == 4 {
                // SAFETY: only reachable through a table returned by `avx2()` / `avx512()`,
                // which checked every feature `$inner` is compiled with; shapes checked
                // above (and again inside).
                unsafe {
                    match nt {
                        1 => $inner::<4, 1>(w, x, out),
                        2 => $inner::<4, 2>(w, x, out),
                        3 => $inner::<4, 3>(w, x, out),
                        _ => $inner::<4, 4>(w, x, out),
                    }
                }
                return;
            }
            let mut col = [0.0f32; 4];
            for r in 0..rows {
                let (wr, o) = (&w[r * nb..(r + 1) * nb], &mut col[..nt]);
                // SAFETY: as above.
                unsafe {
                    match nt {
                        1 => $inner::<1, 1>(wr, x, o),
                        2 => $inner::<1, 2>(wr, x, o),
                        3 => $inner::<1, 3>(wr, x, o),
                        _ => $inner::<1, 4>(wr, x, o),
                    }
                }
                for t in 0..nt {
                    out[t * rows + r] = col[t];
                }
            }
        }
    };
}

/// A multi-row float tile from the one-row tile `$inner`: rows one after another.
macro_rules! wrap_rows {
    ($name:ident, $one:ident, $inner:ident, $w:ty, $max:expr) => {
        wrap_tile!($one, $inner, $w, f32, $max, |n: usize| n);

        pub(super) fn $name(w: &[$w], rows: usize, x: &[f32], out: &mut [f32]) {
            let (n, nt) = super::super::float_tile_shape(w.len(), rows, x.len(), out.len(), $max);
            let mut col = [0.0f32; super::super::MAX_TILE_TOKENS];
            for r in 0..rows {
                $one(&w[r * n..(r + 1) * n], x, &mut col[..nt]);
                for t in 0..nt {
                    out[t * rows + r] = col[t];
                }
            }
        }
    };
}

/// 16-wide float tiles (AVX-512F), the ragged end by masked loads.
macro_rules! float_tiles_512 {
    ($feat:literal, $max:expr) => {
        /// `R` rows x `NT` tokens, 16 columns per step, R * NT accumulators; the ragged
        /// end by masked loads. `w`: [R, n], `x`: [NT, n], `out[t * R + r]`.
        macro_rules! float_tile {
            ($inner:ident, $w:ty, $load:expr, $load_mask:expr) => {
                #[target_feature(enable = $feat)]
                fn $inner<const R: usize, const NT: usize>(w: &[$w], x: &[f32], out: &mut [f32]) {
                    let n = w.len() / R;
                    assert!(w.len() == R * n && x.len() == NT * n && out.len() == R * NT);
                    let (wp, xp) = (w.as_ptr(), x.as_ptr());
                    let mut acc = [[_mm512_setzero_ps(); NT]; R];
                    let mut i = 0;
                    while i + 16 <= n {
                        let mut wv = [_mm512_setzero_ps(); R];
                        for r in 0..R {
                            // SAFETY: r < R and i + 16 <= n, so r * n + i + 16 <= w.len().
                            let p = unsafe { wp.add(r * n + i) };
                            prefetch(p);
                            // SAFETY: as above, 16 weights readable at p.
                            wv[r] = unsafe { $load(p) };
                        }
                        for t in 0..NT {
                            // SAFETY: t < NT and i + 16 <= n, so t * n + i + 16 <= x.len().
                            let xv = unsafe { _mm512_loadu_ps(xp.add(t * n + i)) };
                            for r in 0..R {
                                acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
                            }
                        }
                        i += 16;
                    }
                    if i < n {
                        let m: __mmask16 = (1u16 << (n - i)) - 1;
                        let mut wv = [_mm512_setzero_ps(); R];
                        for r in 0..R {
                            // SAFETY: lanes i..n of row r are inside w; masked-off lanes are
                            // not accessed (AVX-512 masked loads suppress faults; LLVM's
                            // masked.load does not touch disabled lanes).
                            wv[r] = unsafe { $load_mask(m, wp.add(r * n + i)) };
                        }
                        for t in 0..NT {
                            // SAFETY: as above, lanes i..n of token t are inside x.
                            let xv = unsafe { _mm512_maskz_loadu_ps(m, xp.add(t * n + i)) };
                            for r in 0..R {
                                acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
                            }
                        }
                    }
                    for t in 0..NT {
                        for r in 0..R {
                            out[t * R + r] = _mm512_reduce_add_ps(acc[r][t]);
                        }
                    }
                }
            };
        }

        /// Safe entry: rows in 1..=4, tokens in blocks of up to 4.
        macro_rules! wrap_512 {
            ($name:ident, $inner:ident, $w:ty) => {
                pub(super) fn $name(w: &[$w], rows: usize, x: &[f32], out: &mut [f32]) {
                    let (n, nt) =
                        super::super::float_tile_shape(w.len(), rows, x.len(), out.len(), $max);
                    let mut t0 = 0;
                    while t0 < nt {
                        let tb = (nt - t0).min(4);
                        let xs = &x[t0 * n..(t0 + tb) * n];
                        let o = &mut out[t0 * rows..(t0 + tb) * rows];
                        // SAFETY: only reachable through the table `avx512()` returns after
                        // checking every feature `$inner` is compiled with; the shapes
                        // were checked above (and again inside).
                        unsafe {
                            match (rows, tb) {
                                (1, 1) => $inner::<1, 1>(w, xs, o),
                                (1, 2) => $inner::<1, 2>(w, xs, o),
                                (1, 3) => $inner::<1, 3>(w, xs, o),
                                (1, _) => $inner::<1, 4>(w, xs, o),
                                (2, 1) => $inner::<2, 1>(w, xs, o),
                                (2, 2) => $inner::<2, 2>(w, xs, o),
                                (2, 3) => $inner::<2, 3>(w, xs, o),
                                (2, _) => $inner::<2, 4>(w, xs, o),
                                (3, 1) => $inner::<3, 1>(w, xs, o),
                                (3, 2) => $inner::<3, 2>(w, xs, o),
                                (3, 3) => $inner::<3, 3>(w, xs, o),
                                (3, _) => $inner::<3, 4>(w, xs, o),
                                (_, 1) => $inner::<4, 1>(w, xs, o),
                                (_, 2) => $inner::<4, 2>(w, xs, o),
                                (_, 3) => $inner::<4, 3>(w, xs, o),
                                (_, _) => $inner::<4, 4>(w, xs, o),
                            }
                        }
                        t0 += tb;
                    }
                }
            };
        }

        float_tile!(
            f32_t,
            f32,
            |p: *const f32| _mm512_loadu_ps(p),
            |m: __mmask16, p: *const f32| _mm512_maskz_loadu_ps(m, p)
        );
        float_tile!(
            f16_t,
            f16,
            |p: *const f16| _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
            |m: __mmask16, p: *const f16| _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p.cast()))
        );
        float_tile!(
            bf16_t,
            bf16,
            |p: *const bf16| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_loadu_si256(p.cast())
            ))),
            |m: __mmask16, p: *const bf16| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(
                _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p.cast()))
            ))
        );
        wrap_512!(f32, f32_t, f32);
        wrap_512!(f16, f16_t, f16);
        wrap_512!(bf16, bf16_t, bf16);
    };
}

/// Codes of block `b` (< 4) of an activation group, element order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn act_block(g: &ActQ8x4, b: usize) -> __m256i {
    let (lo, hi) = (&g.lo[16 * b..16 * b + 16], &g.hi[16 * b..16 * b + 16]);
    // SAFETY: lo and hi are 16 readable bytes each; loadu has no alignment need.
    unsafe {
        _mm256_set_m128i(
            _mm_loadu_si128(hi.as_ptr().cast()),
            _mm_loadu_si128(lo.as_ptr().cast()),
        )
    }
}

/// AVX2: one block per step. Signed weights use the sign trick: |w| (u8) times sign(x, w).
mod avx2_impl {
    use super::*;

    /// Prefetch for the `R`-row tiles of `LEN`-byte steps at `p`: one row alone reads
    /// `PREFETCH` / `L2_AHEAD` bytes ahead ([`prefetch`]); four rows read the same step
    /// of the next tile (the rows after these, next in memory) into L1 and of the
    /// tile `far` bytes on (whole tiles, >= `L2_AHEAD`) into L2, as the AVX-512
    /// group tile does.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn prefetch_rows<const R: usize, const LEN: usize>(p: *const i8, ahead: usize, far: usize) {
        if R == 1 {
            prefetch(p);
        } else {
            prefetch_span::<LEN, _MM_HINT_T0>(p.wrapping_add(ahead));
            prefetch_span::<LEN, _MM_HINT_T1>(p.wrapping_add(far));
        }
    }

    /// `R` weight rows x `NT` tokens, one block per step. `w`: [R, nb], `x`: [NT,
    /// act_groups(nb)], `out[t * R + r]`. Each row's block is unpacked once, each
    /// token's activations loaded once.
    macro_rules! signed_tile {
        ($inner:ident, $w:ty, $unpack:expr) => {
            #[target_feature(enable = "avx2,fma,f16c")]
            fn $inner<const R: usize, const NT: usize>(w: &[$w], x: &[ActQ8x4], out: &mut [f32]) {
                let nb = w.len() / R;
                let ng = act_groups(nb);
                assert!(w.len() == R * nb && x.len() == NT * ng && out.len() == R * NT);
                let mut acc = [[_mm256_setzero_ps(); NT]; R];
                let tile = R * nb * std::mem::size_of::<$w>();
                let (ahead, far) = (tile, tile * L2_AHEAD.div_ceil(tile.max(1)));
                for i in 0..nb {
                    let (gi, b) = (i / 4, i % 4);
                    let mut q = [_mm256_setzero_si256(); R];
                    let mut aq = [_mm256_setzero_si256(); R];
                    let mut dw = [_mm256_setzero_ps(); R];
                    for r in 0..R {
                        let wb = &w[r * nb + i];
                        prefetch_rows::<R, { std::mem::size_of::<$w>() }>(
                            (wb as *const $w).cast(),
                            ahead,
                            far,
                        );
                        q[r] = $unpack(wb);
                        aq[r] = _mm256_abs_epi8(q[r]);
                        dw[r] = splat_f16(wb.d);
                    }
                    for t in 0..NT {
                        let g = &x[t * ng + gi];
                        let y = act_block(g, b);
                        let dy = _mm256_set1_ps(g.d[b]);
                        for r in 0..R {
                            let p = dot_us_avx2(aq[r], _mm256_sign_epi8(y, q[r]));
                            let d = _mm256_mul_ps(dw[r], dy);
                            acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), d, acc[r][t]);
                        }
                    }
                }
                for t in 0..NT {
                    for r in 0..R {
                        out[t * R + r] = hsum(acc[r][t]);
                    }
                }
            }
        };
    }

    /// Unsigned codes of two q4/q5 blocks: (elements 0..16 of each, 16..32 of each),
    /// matching two blocks' halves of an [`ActQ8x4`] (`lo[32p..32p + 32]`).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn nibbles2(a: &[u8; 16], b: &[u8; 16], qh: Option<(u32, u32)>) -> (__m256i, __m256i) {
        // SAFETY: a and b are 16 readable bytes each.
        let raw = unsafe {
            _mm256_set_m128i(
                _mm_loadu_si128(b.as_ptr().cast()),
                _mm_loadu_si128(a.as_ptr().cast()),
            )
        };
        let m = _mm256_set1_epi8(0x0F);
        let (mut lo, mut hi) = (
            _mm256_and_si256(raw, m),
            _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m),
        );
        if let Some((ha, hb)) = qh {
            let bits_lo = (ha & 0xFFFF) | (hb & 0xFFFF) << 16;
            let bits_hi = (ha >> 16) | (hb >> 16) << 16;
            let s = _mm256_set1_epi8(0x10);
            lo = _mm256_or_si256(
                lo,
                _mm256_and_si256(bytes_from_bits(bits_lo.to_le_bytes()), s),
            );
            hi = _mm256_or_si256(
                hi,
                _mm256_and_si256(bytes_from_bits(bits_hi.to_le_bytes()), s),
            );
        }
        (lo, hi)
    }

    /// Two blocks per step for the 4/5-bit types: unsigned codes (0..32) against the
    /// activations with `maddubs` (no i16 overflow: 2 * 31 * 127 per pair, twice), the
    /// offset (8 or 16 times the activation sum) from the pre-summed `bias`, `m * s`
    /// for q4_1/q5_1. Blocks past the last group of four go through the scalar twin.
    macro_rules! pair_tile {
        ($inner:ident, $w:ty, $codes:expr, $tail:path, bias = $shift:tt, m = $m:tt) => {
            /// `R` weight rows x `NT` tokens. `w`: [R, nb], `x`: [NT, act_groups(nb)],
            /// `out[t * R + r]`. Each row's pair of blocks is unpacked once, each
            /// token's activations loaded once.
            #[target_feature(enable = "avx2,fma,f16c")]
            fn $inner<const R: usize, const NT: usize>(w: &[$w], x: &[ActQ8x4], out: &mut [f32]) {
                let nb = w.len() / R;
                let ng = act_groups(nb);
                let full = nb / 4;
                assert!(w.len() == R * nb && x.len() == NT * ng && out.len() == R * NT);
                let mut acc = [[_mm256_setzero_ps(); NT]; R];
                #[allow(unused_mut)] // only the m-offset types add to it
                let mut ms = [[0.0f32; NT]; R];
                let ones = _mm256_set1_epi16(1);
                let spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
                let tile = R * nb * std::mem::size_of::<$w>();
                let (ahead, far) = (tile, tile * L2_AHEAD.div_ceil(tile.max(1)));
                for i in (0..full * 4).step_by(2) {
                    let (gi, p) = (i / 4, (i % 4) / 2);
                    let mut lo = [_mm256_setzero_si256(); R];
                    let mut hi = [_mm256_setzero_si256(); R];
                    let mut dw = [_mm_setzero_ps(); R];
                    #[allow(unused_variables, unused_mut)]
                    let mut mw = [(0.0f32, 0.0f32); R];
                    for r in 0..R {
                        let (wa, wb) = (&w[r * nb + i], &w[r * nb + i + 1]);
                        prefetch_rows::<R, { 2 * std::mem::size_of::<$w>() }>(
                            (wa as *const $w).cast(),
                            ahead,
                            far,
                        );
                        (lo[r], hi[r]) = $codes(wa, wb);
                        dw[r] = _mm_cvtph_ps(_mm_cvtsi32_si128((wa.d.to_bits() as u32 | (wb.d.to_bits() as u32) << 16) as i32));
                        mw[r] = pair_tile!(@m_load $m, wa, wb);
                    }
                    for t in 0..NT {
                        let g = &x[t * ng + gi];
                        let (ylo, yhi) = (&g.lo[32 * p..32 * p + 32], &g.hi[32 * p..32 * p + 32]);
                        // SAFETY: ylo and yhi are 32 readable bytes each.
                        let (ylo, yhi) = unsafe { (_mm256_loadu_si256(ylo.as_ptr().cast()), _mm256_loadu_si256(yhi.as_ptr().cast())) };
                        #[allow(unused_variables)]
                        let bias = pair_tile!(@bias_load $shift, g, p);
                        let dy = _mm_setr_ps(g.d[2 * p], g.d[2 * p + 1], 0.0, 0.0);
                        for r in 0..R {
                            let s16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo[r], ylo), _mm256_maddubs_epi16(hi[r], yhi));
                            let s32 = pair_tile!(@bias $shift, _mm256_madd_epi16(s16, ones), bias);
                            let sc = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_mul_ps(dw[r], dy)), spread);
                            acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), sc, acc[r][t]);
                            pair_tile!(@m_acc $m, ms[r][t], mw[r], g, p);
                        }
                    }
                }
                for t in 0..NT {
                    for r in 0..R {
                        let tail = if full * 4 < nb {
                            $tail(&w[r * nb + full * 4..(r + 1) * nb], &x[t * ng + full..(t + 1) * ng])
                        } else {
                            0.0
                        };
                        out[t * R + r] = hsum(acc[r][t]) + ms[r][t] + tail;
                    }
                }
            }
        };
        (@bias_load none, $g:ident, $p:ident) => {
            ()
        };
        (@bias_load $k:literal, $g:ident, $p:ident) => {{
            let b = &$g.bias[8 * $p..8 * $p + 8];
            // SAFETY: b is 8 readable i32.
            _mm256_slli_epi32::<$k>(unsafe { _mm256_loadu_si256(b.as_ptr().cast()) })
        }};
        (@bias none, $v:expr, $b:ident) => {
            $v
        };
        (@bias $k:literal, $v:expr, $b:ident) => {
            _mm256_add_epi32($v, $b)
        };
        (@m_load yes, $a:ident, $b:ident) => {
            (f16_to_f32($a.m), f16_to_f32($b.m))
        };
        (@m_load no, $a:ident, $b:ident) => {
            (0.0f32, 0.0f32)
        };
        (@m_acc yes, $acc:expr, $mw:expr, $g:ident, $p:ident) => {
            $acc += $mw.0 * $g.s[2 * $p] + $mw.1 * $g.s[2 * $p + 1];
        };
        (@m_acc no, $acc:expr, $mw:expr, $g:ident, $p:ident) => {};
    }

    pair_tile!(
        q4_0_t,
        BlockQ4_0,
        |a: &BlockQ4_0, b: &BlockQ4_0| nibbles2(&a.qs, &b.qs, None),
        generic::vec_dot_q4_0,
        bias = 0,
        m = no
    );
    pair_tile!(
        q4_1_t,
        BlockQ4_1,
        |a: &BlockQ4_1, b: &BlockQ4_1| nibbles2(&a.qs, &b.qs, None),
        generic::vec_dot_q4_1,
        bias = none,
        m = yes
    );
    pair_tile!(
        q5_0_t,
        BlockQ5_0,
        |a: &BlockQ5_0, b: &BlockQ5_0| nibbles2(
            &a.qs,
            &b.qs,
            Some((u32::from_le_bytes(a.qh), u32::from_le_bytes(b.qh)))
        ),
        generic::vec_dot_q5_0,
        bias = 1,
        m = no
    );
    pair_tile!(
        q5_1_t,
        BlockQ5_1,
        |a: &BlockQ5_1, b: &BlockQ5_1| nibbles2(
            &a.qs,
            &b.qs,
            Some((u32::from_le_bytes(a.qh), u32::from_le_bytes(b.qh)))
        ),
        generic::vec_dot_q5_1,
        bias = none,
        m = yes
    );
    signed_tile!(q8_0_t, BlockQ8_0, |b: &BlockQ8_0| load32(&b.qs));

    wrap_q_rows!(q4_0, q4_0_t, BlockQ4_0);
    wrap_q_rows!(q5_0, q5_0_t, BlockQ5_0);
    wrap_q_rows!(q8_0, q8_0_t, BlockQ8_0);
    wrap_q_rows!(q4_1, q4_1_t, BlockQ4_1);
    wrap_q_rows!(q5_1, q5_1_t, BlockQ5_1);

    float_tiles_256!("avx2,fma,f16c", 4);
}

/// AVX-512 + VNNI: four blocks per step. Their 16-byte halves sit side by side in two
/// zmm registers (`lo`: elements 0..16 of each block, `hi`: 16..32), matching the
/// activation layout of [`ActQ8x4`], so i32 lanes 4b..4b+4 of `vpdpbusd` belong to
/// block b. Weights enter as unsigned codes (q4: 0..16, q5: 0..32, q8_0: w + 128); the
/// offset (8, 16 or 128 times the activation sum) starts the i32 accumulator, so each
/// block's integer sum is exactly ggml's. Blocks past the last group of four go through
/// the scalar twin.
///
/// Two ways to unpack a group, same values: with AVX512-VBMI (Ice Lake and later) the
/// group's bytes are loaded whole (one or two loads) and `vpermt2b` picks the codes and
/// scales out of them; without it, four 16-byte loads and scalar scale reads.
mod avx512_impl {
    use super::*;

    /// 16 bytes at each of four addresses, side by side.
    ///
    /// # Safety
    /// Each pointer must be valid for reading 16 bytes; the CPU must have AVX-512F.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn load4(p: [*const u8; 4]) -> __m512i {
        // SAFETY: the caller guarantees 16 readable bytes at each pointer.
        unsafe {
            let v = _mm512_castsi128_si512(_mm_loadu_si128(p[0].cast()));
            let v = _mm512_inserti32x4::<1>(v, _mm_loadu_si128(p[1].cast()));
            let v = _mm512_inserti32x4::<2>(v, _mm_loadu_si128(p[2].cast()));
            _mm512_inserti32x4::<3>(v, _mm_loadu_si128(p[3].cast()))
        }
    }

    /// Four f16 as f32.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn f16x4(h: [f16; 4]) -> __m128 {
        let v = h
            .iter()
            .enumerate()
            .fold(0u64, |a, (i, x)| a | (x.to_bits() as u64) << (16 * i));
        _mm_cvtph_ps(_mm_cvtsi64_si128(v as i64))
    }

    /// Four block scales spread to the i32 lanes of their blocks (lanes 4b..4b+4).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn spread4(h: [f16; 4]) -> __m512 {
        let idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(f16x4(h)))
    }

    /// Low / high nibbles of `raw` (16 code bytes of each of four q4 blocks):
    /// (codes 0..16 of each block, codes 16..32 of each).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn nibbles(raw: __m512i) -> (__m512i, __m512i) {
        let m = _mm512_set1_epi8(0x0F);
        (
            _mm512_and_si512(raw, m),
            _mm512_and_si512(_mm512_srli_epi16::<4>(raw), m),
        )
    }

    /// Low / high nibbles of four q4 blocks.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn nibbles4(qs: [&[u8; 16]; 4]) -> (__m512i, __m512i) {
        // SAFETY: each qs is 16 readable bytes.
        nibbles(unsafe {
            load4([
                qs[0].as_ptr(),
                qs[1].as_ptr(),
                qs[2].as_ptr(),
                qs[3].as_ptr(),
            ])
        })
    }

    /// q5's fifth bits as byte masks for (lo, hi).
    #[inline]
    fn high_bits4(qh: [[u8; 4]; 4]) -> (u64, u64) {
        qh.iter().enumerate().fold((0, 0), |(lo, hi), (b, h)| {
            let h = u32::from_le_bytes(*h) as u64;
            (lo | (h & 0xFFFF) << (16 * b), hi | (h >> 16) << (16 * b))
        })
    }

    /// Adds 16 to the codes whose fifth bit is set.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn add_high_bits(lo: __m512i, hi: __m512i, qh: [[u8; 4]; 4]) -> (__m512i, __m512i) {
        let (mlo, mhi) = high_bits4(qh);
        let s = _mm512_set1_epi8(16);
        (
            _mm512_mask_add_epi8(lo, mlo, lo, s),
            _mm512_mask_add_epi8(hi, mhi, hi, s),
        )
    }

    /// A group of four weight blocks ready for `vpdpbusd`: unsigned codes (`lo`, `hi`,
    /// see the module doc), the block scales spread to their lanes, and for q4_1/q5_1
    /// the four `m` (zero for the other types).
    #[derive(Clone, Copy)]
    struct Group {
        lo: __m512i,
        hi: __m512i,
        d: __m512,
        m: __m128,
    }

    impl Group {
        // SAFETY: all-zero bits are valid for these vector types.
        const ZERO: Group = unsafe { std::mem::zeroed() };
    }

    // --- without VBMI ---

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn unpack_q4_0(w: &[BlockQ4_0; 4]) -> Group {
        let (lo, hi) = nibbles4([&w[0].qs, &w[1].qs, &w[2].qs, &w[3].qs]);
        let (d, m) = (spread4([w[0].d, w[1].d, w[2].d, w[3].d]), _mm_setzero_ps());
        Group { lo, hi, d, m }
    }
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn unpack_q4_1(w: &[BlockQ4_1; 4]) -> Group {
        let (lo, hi) = nibbles4([&w[0].qs, &w[1].qs, &w[2].qs, &w[3].qs]);
        let (d, m) = (
            spread4([w[0].d, w[1].d, w[2].d, w[3].d]),
            f16x4([w[0].m, w[1].m, w[2].m, w[3].m]),
        );
        Group { lo, hi, d, m }
    }
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn unpack_q5_0(w: &[BlockQ5_0; 4]) -> Group {
        let (lo, hi) = nibbles4([&w[0].qs, &w[1].qs, &w[2].qs, &w[3].qs]);
        let (lo, hi) = add_high_bits(lo, hi, [w[0].qh, w[1].qh, w[2].qh, w[3].qh]);
        let (d, m) = (spread4([w[0].d, w[1].d, w[2].d, w[3].d]), _mm_setzero_ps());
        Group { lo, hi, d, m }
    }
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn unpack_q5_1(w: &[BlockQ5_1; 4]) -> Group {
        let (lo, hi) = nibbles4([&w[0].qs, &w[1].qs, &w[2].qs, &w[3].qs]);
        let (lo, hi) = add_high_bits(lo, hi, [w[0].qh, w[1].qh, w[2].qh, w[3].qh]);
        let (d, m) = (
            spread4([w[0].d, w[1].d, w[2].d, w[3].d]),
            f16x4([w[0].m, w[1].m, w[2].m, w[3].m]),
        );
        Group { lo, hi, d, m }
    }
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn unpack_q8_0(w: &[BlockQ8_0; 4]) -> Group {
        // SAFETY: each qs is 32 readable bytes: 16 at offset 0 and 16 at offset 16.
        let p = [
            w[0].qs.as_ptr().cast::<u8>(),
            w[1].qs.as_ptr().cast::<u8>(),
            w[2].qs.as_ptr().cast::<u8>(),
            w[3].qs.as_ptr().cast::<u8>(),
        ];
        let (lo, hi) = unsafe {
            (
                load4(p),
                load4([p[0].add(16), p[1].add(16), p[2].add(16), p[3].add(16)]),
            )
        };
        // w + 128 as an unsigned byte: flip the sign bit.
        let f = _mm512_set1_epi8(-128);
        let (d, m) = (spread4([w[0].d, w[1].d, w[2].d, w[3].d]), _mm_setzero_ps());
        Group {
            lo: _mm512_xor_si512(lo, f),
            hi: _mm512_xor_si512(hi, f),
            d,
            m,
        }
    }

    // --- with VBMI: byte permutes over the group's bytes ---

    /// `vpermt2b` index: byte j = byte `off + j % 16` of block `j / 16` (block size `bs`).
    const fn codes_idx(bs: usize, off: usize) -> [u8; 64] {
        let mut a = [0u8; 64];
        let mut j = 0;
        while j < 64 {
            a[j] = (bs * (j / 16) + off + j % 16) as u8;
            assert!(a[j] < 128);
            j += 1;
        }
        a
    }

    /// `vpermt2b` index: f16 lane i (bytes 2i, 2i + 1) = the f16 at `off` of block
    /// `i / rep`, for i < 4 * rep; the other lanes read byte 0 (unused).
    const fn f16_idx(bs: usize, off: usize, rep: usize) -> [u8; 64] {
        let mut a = [0u8; 64];
        let mut i = 0;
        while i < 4 * rep {
            a[2 * i] = (bs * (i / rep) + off) as u8;
            a[2 * i + 1] = (bs * (i / rep) + off + 1) as u8;
            assert!(a[2 * i + 1] < 128);
            i += 1;
        }
        a
    }

    /// The index tables of one block type: codes, scales spread 4 lanes per block, m.
    struct Idx {
        qs: [u8; 64],
        d: [u8; 64],
        m: [u8; 64],
    }
    static IDX_Q4_0: Idx = Idx {
        qs: codes_idx(18, 2),
        d: f16_idx(18, 0, 4),
        m: [0; 64],
    };
    static IDX_Q4_1: Idx = Idx {
        qs: codes_idx(20, 4),
        d: f16_idx(20, 0, 4),
        m: f16_idx(20, 2, 1),
    };
    static IDX_Q5_0: Idx = Idx {
        qs: codes_idx(22, 6),
        d: f16_idx(22, 0, 4),
        m: [0; 64],
    };
    static IDX_Q5_1: Idx = Idx {
        qs: codes_idx(24, 8),
        d: f16_idx(24, 0, 4),
        m: f16_idx(24, 2, 1),
    };
    /// q8_0: `qs` picks the low halves from bytes 0..128 and, shifted by 16, the high
    /// halves from bytes 16..144 of the group.
    static IDX_Q8_0: Idx = Idx {
        qs: codes_idx(34, 2),
        d: f16_idx(34, 0, 4),
        m: [0; 64],
    };

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
    #[inline]
    fn vload(a: &[u8; 64]) -> __m512i {
        // SAFETY: 64 readable bytes; loadu has no alignment need.
        unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
    }

    /// [`nibbles`] with the high nibble shifted down by one GF(2) affine transform
    /// (`x >> 4` per byte: one instruction instead of a shift and a mask).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
    #[inline]
    fn nibbles_v(raw: __m512i) -> (__m512i, __m512i) {
        // Row i of the bit matrix (byte 7 - i) selects source bit i + 4 for result bit i.
        const SHR4: i64 = 0x1020_4080_0000_0000;
        (
            _mm512_and_si512(raw, _mm512_set1_epi8(0x0F)),
            _mm512_gf2p8affine_epi64_epi8::<0>(raw, _mm512_set1_epi64(SHR4)),
        )
    }

    /// Bytes 0..64 and 64..LEN of a group (64 < LEN <= 128); nothing past LEN is read.
    ///
    /// # Safety
    /// `p` must be valid for reading LEN bytes.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
    #[inline]
    unsafe fn group_bytes<const LEN: usize>(p: *const u8) -> (__m512i, __m512i) {
        let k: __mmask64 = (1u64 << (LEN - 64)) - 1;
        // SAFETY: bytes 0..64 and (masked) 64..LEN are readable (caller); masked-off
        // bytes are not accessed.
        unsafe {
            (
                _mm512_loadu_si512(p.cast()),
                _mm512_maskz_loadu_epi8(k, p.add(64).cast()),
            )
        }
    }

    /// Scales (`d`, spread) and `m` of a group from its bytes `a`, `b`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
    #[inline]
    fn scales_v(a: __m512i, b: __m512i, idx: &Idx, has_m: bool) -> (__m512, __m128) {
        let d = _mm512_permutex2var_epi8(a, vload(&idx.d), b);
        let d = _mm512_cvtph_ps(_mm512_castsi512_si256(d));
        let m = if has_m {
            let m = _mm512_permutex2var_epi8(a, vload(&idx.m), b);
            _mm_cvtph_ps(_mm512_castsi512_si128(m))
        } else {
            _mm_setzero_ps()
        };
        (d, m)
    }

    /// A 4/5-bit group (`LEN` = 4 x block size bytes) through VBMI.
    ///
    /// # Safety
    /// `p` must be valid for reading LEN bytes.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
    #[inline]
    unsafe fn unpack4_v<const LEN: usize>(p: *const u8, idx: &Idx, has_m: bool) -> Group {
        // SAFETY: forwarded from the caller.
        let (a, b) = unsafe { group_bytes::<LEN>(p) };
        let (lo, hi) = nibbles_v(_mm512_permutex2var_epi8(a, vload(&idx.qs), b));
        let (d, m) = scales_v(a, b, idx, has_m);
        Group { lo, hi, d, m }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
    #[inline]
    fn unpack_q4_0_v(w: &[BlockQ4_0; 4]) -> Group {
        // SAFETY: the four blocks are 72 contiguous readable bytes.
        unsafe { unpack4_v::<72>(w.as_ptr().cast(), &IDX_Q4_0, false) }
    }
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
    #[inline]
    fn unpack_q4_1_v(w: &[BlockQ4_1; 4]) -> Group {
        // SAFETY: the four blocks are 80 contiguous readable bytes.
        unsafe { unpack4_v::<80>(w.as_ptr().cast(), &IDX_Q4_1, true) }
    }
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
    #[inline]
    fn unpack_q5_0_v(w: &[BlockQ5_0; 4]) -> Group {
        // SAFETY: the four blocks are 88 contiguous readable bytes.
        let g = unsafe { unpack4_v::<88>(w.as_ptr().cast(), &IDX_Q5_0, false) };
        let (lo, hi) = add_high_bits(g.lo, g.hi, [w[0].qh, w[1].qh, w[2].qh, w[3].qh]);
        Group { lo, hi, ..g }
    }
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
    #[inline]
    fn unpack_q5_1_v(w: &[BlockQ5_1; 4]) -> Group {
        // SAFETY: the four blocks are 96 contiguous readable bytes.
        let g = unsafe { unpack4_v::<96>(w.as_ptr().cast(), &IDX_Q5_1, true) };
        let (lo, hi) = add_high_bits(g.lo, g.hi, [w[0].qh, w[1].qh, w[2].qh, w[3].qh]);
        Group { lo, hi, ..g }
    }
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
    #[inline]
    fn unpack_q8_0_v(w: &[BlockQ8_0; 4]) -> Group {
        let p = w.as_ptr().cast::<u8>();
        // SAFETY: the four blocks are 136 contiguous readable bytes: 0..128 by the first
        // two loads, 16..80 by the third, 80..136 by the masked fourth (masked-off bytes
        // are not accessed).
        let (a, b, c, e) = unsafe {
            (
                _mm512_loadu_si512(p.cast()),
                _mm512_loadu_si512(p.add(64).cast()),
                _mm512_loadu_si512(p.add(16).cast()),
                _mm512_maskz_loadu_epi8((1u64 << 56) - 1, p.add(80).cast()),
            )
        };
        let qs = vload(&IDX_Q8_0.qs);
        let f = _mm512_set1_epi8(-128);
        let (d, m) = scales_v(a, b, &IDX_Q8_0, false);
        Group {
            lo: _mm512_xor_si512(_mm512_permutex2var_epi8(a, qs, b), f),
            hi: _mm512_xor_si512(_mm512_permutex2var_epi8(c, qs, e), f),
            d,
            m,
        }
    }

    /// Lane `r` of the result = sum of the 16 lanes of `v[r]`, added in the same order
    /// for every `r` (so a row's sum does not depend on which rows share its tile):
    /// 128-bit lanes 0+2 and 1+3, then those two, then within the lane (0+1)+(2+3).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn reduce4(v: [__m512; 4]) -> __m128 {
        // [a0+a2, a1+a3, b0+b2, b1+b3] (128-bit lanes), likewise c, d.
        let ab = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(v[0], v[1]),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(v[0], v[1]),
        );
        let cd = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(v[2], v[3]),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(v[2], v[3]),
        );
        // 128-bit lane r: the four partial sums of v[r].
        let s = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(ab, cd),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(ab, cd),
        );
        let s = _mm512_add_ps(s, _mm512_permute_ps::<0b10_11_00_01>(s));
        let s = _mm512_add_ps(s, _mm512_permute_ps::<0b01_00_11_10>(s));
        _mm512_castps512_ps128(_mm512_permutexvar_ps(
            _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
            s,
        ))
    }

    /// Sum of the 4 lanes, (0+2)+(1+3).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn hsum128(m: __m128) -> f32 {
        let m2 = _mm_add_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_add_ss(m2, _mm_movehdup_ps(m2)))
    }

    /// `R` weight rows x `NT` tokens. `w`: [R, nb], `x`: [NT, act_groups(nb)],
    /// `out[t * R + r]`. Per group of four blocks: each row's weights are unpacked
    /// once, each token's activations loaded once, then R x NT `vpdpbusd` pairs.
    macro_rules! group_tile {
        ($feat:literal, $inner:ident, $w:ty, $unpack:ident, $tail:path, bias = $shift:tt, m = $m:tt) => {
            #[target_feature(enable = $feat)]
            fn $inner<const R: usize, const NT: usize>(w: &[$w], x: &[ActQ8x4], out: &mut [f32]) {
                let nb = w.len() / R;
                let ng = act_groups(nb);
                let full = nb / 4;
                assert!(w.len() == R * nb && x.len() == NT * ng && out.len() == R * NT);
                let mut acc = [[_mm512_setzero_ps(); NT]; R];
                #[allow(unused_mut)] // only the m-offset types add to it
                let mut accm = [[_mm_setzero_ps(); NT]; R];
                // Scale of block b to i32 lanes 4b..4b+4.
                let idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
                // Prefetch: the same group of the next tile (the R rows after these,
                // next in memory), every line of it, one tile's time ahead, into L1; and
                // the same group of the tile at least L2_AHEAD bytes on, into L2 (whole
                // tiles, so every line is asked for once at each distance; a fixed
                // distance would land inside this tile when R rows outgrow it).
                let tile = R * nb * std::mem::size_of::<$w>();
                let (ahead, far) = (tile, tile * L2_AHEAD.div_ceil(tile));
                for gi in 0..full {
                    let mut gs = [Group::ZERO; R];
                    for (r, g) in gs.iter_mut().enumerate() {
                        let wb = &w[r * nb + 4 * gi..r * nb + 4 * gi + 4];
                        let p = wb.as_ptr().cast::<i8>();
                        prefetch_span::<{ 4 * std::mem::size_of::<$w>() }, _MM_HINT_T0>(p.wrapping_add(ahead));
                        prefetch_span::<{ 4 * std::mem::size_of::<$w>() }, _MM_HINT_T1>(p.wrapping_add(far));
                        *g = $unpack(wb.try_into().unwrap_or_else(|_| unreachable!()));
                    }
                    for t in 0..NT {
                        let g = &x[t * ng + gi];
                        // SAFETY: ActQ8x4 is 64-byte aligned; lo, hi, bias are 64 bytes
                        // at offsets 0, 64, 128; d at 192 (16-aligned, 16 bytes).
                        let (ylo, yhi, dy) = unsafe {
                            (
                                _mm512_load_si512(g.lo.as_ptr().cast()),
                                _mm512_load_si512(g.hi.as_ptr().cast()),
                                _mm_load_ps(g.d.as_ptr()),
                            )
                        };
                        let dy = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(dy));
                        let init = group_tile!(@bias $shift, g);
                        for r in 0..R {
                            let gr = &gs[r];
                            let p = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(init, gr.lo, ylo), gr.hi, yhi);
                            let sc = _mm512_mul_ps(gr.d, dy);
                            acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), sc, acc[r][t]);
                            group_tile!(@m_acc $m, accm[r][t], gr.m, g);
                        }
                    }
                }
                let z = _mm512_setzero_ps();
                for t in 0..NT {
                    let mut sums = [0.0f32; 4];
                    let mut v4 = [z; 4];
                    for r in 0..R {
                        v4[r] = acc[r][t];
                    }
                    let v = reduce4(v4);
                    // SAFETY: sums is 16 writable bytes; storeu has no alignment need.
                    unsafe { _mm_storeu_ps(sums.as_mut_ptr(), v) };
                    for r in 0..R {
                        let tail = if full * 4 < nb {
                            $tail(&w[r * nb + full * 4..(r + 1) * nb], &x[t * ng + full..(t + 1) * ng])
                        } else {
                            0.0
                        };
                        out[t * R + r] = sums[r] + hsum128(accm[r][t]) + tail;
                    }
                }
            }
        };
        (@bias none, $g:ident) => {
            _mm512_setzero_si512()
        };
        (@bias $k:literal, $g:ident) => {
            // SAFETY: bias is 64 bytes at offset 128 of a 64-byte aligned group.
            _mm512_slli_epi32::<$k>(unsafe { _mm512_load_si512($g.bias.as_ptr().cast()) })
        };
        (@m_acc yes, $a:expr, $mw:expr, $g:ident) => {
            // SAFETY: s is 16 bytes at offset 208 (16-aligned) of the group.
            $a = _mm_fmadd_ps($mw, unsafe { _mm_load_ps($g.s.as_ptr()) }, $a);
        };
        (@m_acc no, $a:expr, $mw:expr, $g:ident) => {};
    }

    /// Both variants of one type's tile.
    macro_rules! group_tiles {
        ($name:ident, $name_v:ident, $w:ty, $unpack:ident, $unpack_v:ident, $tail:path, bias = $shift:tt, m = $m:tt) => {
            group_tile!(
                "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
                t_vnni,
                $w,
                $unpack,
                $tail,
                bias = $shift,
                m = $m
            );
            group_tile!(
                "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni",
                t_vbmi,
                $w,
                $unpack_v,
                $tail,
                bias = $shift,
                m = $m
            );
            wrap_q_rows!($name, t_vnni, $w);
            wrap_q_rows!($name_v, t_vbmi, $w);
        };
    }

    mod q4_0 {
        use super::*;
        group_tiles!(
            tile,
            tile_v,
            BlockQ4_0,
            unpack_q4_0,
            unpack_q4_0_v,
            generic::vec_dot_q4_0,
            bias = 0,
            m = no
        );
    }
    mod q5_0 {
        use super::*;
        group_tiles!(
            tile,
            tile_v,
            BlockQ5_0,
            unpack_q5_0,
            unpack_q5_0_v,
            generic::vec_dot_q5_0,
            bias = 1,
            m = no
        );
    }
    mod q8_0 {
        use super::*;
        group_tiles!(
            tile,
            tile_v,
            BlockQ8_0,
            unpack_q8_0,
            unpack_q8_0_v,
            generic::vec_dot_q8_0,
            bias = 4,
            m = no
        );
    }
    mod q4_1 {
        use super::*;
        group_tiles!(
            tile,
            tile_v,
            BlockQ4_1,
            unpack_q4_1,
            unpack_q4_1_v,
            generic::vec_dot_q4_1,
            bias = none,
            m = yes
        );
    }
    mod q5_1 {
        use super::*;
        group_tiles!(
            tile,
            tile_v,
            BlockQ5_1,
            unpack_q5_1,
            unpack_q5_1_v,
            generic::vec_dot_q5_1,
            bias = none,
            m = yes
        );
    }

    pub(super) use q4_0::{tile as q4_0, tile_v as q4_0_v};
    pub(super) use q4_1::{tile as q4_1, tile_v as q4_1_v};
    pub(super) use q5_0::{tile as q5_0, tile_v as q5_0_v};
    pub(super) use q5_1::{tile as q5_1, tile_v as q5_1_v};
    pub(super) use q8_0::{tile as q8_0, tile_v as q8_0_v};

    float_tiles_512!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", 8);
}

// ---------------------------------------------------------------------------
// Prefill GEMM: 4 rows x 16 tokens per call, tokens in the 16 i32 lanes. Per weight
// block and 4-code chunk k, one `vpdpbusd` per row multiplies the token block's
// chunk-k bytes (64: 4 per token) by the row's 4 codes broadcast from memory; after
// the 8 chunks each lane holds the block's exact integer dot for its token, which is
// scaled and added with one FMA, in block order (bit-identical to `generic::gemm`).

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn gemm_t(w: &GemmRows, x: &[ActGemm], out: &mut [f32]) {
    let nb = x.len();
    super::gemm_shape(w, nb, out.len());
    let mut f = [_mm512_setzero_ps(); GEMM_ROWS];
    for (b, xb) in x.iter().enumerate() {
        let mut acc = [_mm512_setzero_si512(); GEMM_ROWS];
        for (r, a) in acc.iter_mut().enumerate() {
            *a = _mm512_set1_epi32(w.bias[r * nb + b]);
        }
        for k in 0..8 {
            // SAFETY: q[k] is 64 bytes at a 64-byte aligned offset of an ActGemm.
            let xv = unsafe { _mm512_load_si512(xb.q[k].as_ptr().cast()) };
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: r < 4, b < nb, k < 8: the 4 bytes at (r * nb + b) * 32 + 4k are
                // inside q (len 4 * nb * 32, checked by gemm_shape).
                let c = unsafe {
                    w.q.as_ptr()
                        .add((r * nb + b) * 32 + 4 * k)
                        .cast::<i32>()
                        .read_unaligned()
                };
                *a = _mm512_dpbusd_epi32(*a, xv, _mm512_set1_epi32(c));
            }
        }
        // SAFETY: d is 64 bytes at offset 512 (64-aligned) of an ActGemm.
        let dx = unsafe { _mm512_load_ps(xb.d.as_ptr()) };
        for (r, fr) in f.iter_mut().enumerate() {
            let sc = _mm512_mul_ps(_mm512_set1_ps(w.d[r * nb + b]), dx);
            *fr = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r]), sc, *fr);
        }
    }
    let mut t = [[0.0f32; GEMM_TOKENS]; GEMM_ROWS];
    for (r, fr) in f.iter().enumerate() {
        // SAFETY: t[r] is 16 writable f32; storeu has no alignment need.
        unsafe { _mm512_storeu_ps(t[r].as_mut_ptr(), *fr) };
    }
    for tok in 0..GEMM_TOKENS {
        for r in 0..GEMM_ROWS {
            out[tok * GEMM_ROWS + r] = t[r][tok];
        }
    }
}

fn gemm_avx512(w: &GemmRows, x: &[ActGemm], out: &mut [f32]) {
    // SAFETY: only reachable through the tables `avx512()` returns after checking
    // AVX2/FMA/F16C and AVX-512 F/BW/VL/VNNI; shapes are checked inside.
    unsafe { gemm_t(w, x, out) }
}

// ---------------------------------------------------------------------------
// Prefill GEMM, AVX2 (no `vpdpbusd`): same call shape as `gemm_t`, 8 tokens per ymm
// of 8 i32 lanes (two passes of 4 rows x 8 tokens, or one of 4 x 16: each path says
// which measured faster). `maddubs` adds pairs of u8 x i8 products into i16 with
// saturation, so how far the integer sums may stay in i16 depends on the weight
// codes' range, found by one scan per call (4 rows x nb blocks, small beside the 16
// tokens' work):
//
// - |w| <= 8 (q4_0): unsigned operand x + 128 (<= 255), a pair is at most
//   2 * 255 * 8 = 4080 in size, so all 8 chunks of a block add up in i16
//   (<= 32640); one `madd` with ones per block widens to i32, plus the row's bias.
// - |w| <= 16 (q5_0): pairs <= 8160, 4 chunks per i16 sum, two `madd`s per block.
// - otherwise (q8_0): ggml's sign trick, `maddubs(|w|, sign(x, w))` with the signed
//   code x (pairs <= 2 * 128 * 127 = 32512), widened to i32 after every chunk; this
//   is the plain dot, so the bias is not added.
//
// Every path gives the exact integer dot per block, scaled and added with one FMA in
// block order as in `generic::gemm`, so the floats equal the scalar twin's bit for bit.

/// Which integer path a call takes (see above).
#[derive(Clone, Copy, PartialEq, Eq)]
enum GemmCodes {
    /// Every |code| <= 8.
    Max8,
    /// Every |code| <= 16.
    Max16,
    /// Anything in -128..=127.
    Any,
}

/// The largest |code| of the unpacked rows `q` ([4, nb, 32]), as a [`GemmCodes`].
#[target_feature(enable = "avx2,fma,f16c")]
fn gemm_codes(q: &[i8]) -> GemmCodes {
    let mut m = _mm256_setzero_si256();
    for c in q.chunks_exact(32) {
        // SAFETY: c is 32 readable bytes; loadu has no alignment need.
        let v = unsafe { _mm256_loadu_si256(c.as_ptr().cast()) };
        // abs(-128) is 0x80 = 128 as an unsigned byte: the max stays right.
        m = _mm256_max_epu8(m, _mm256_abs_epi8(v));
    }
    let over = |lim: i8| {
        let o = _mm256_subs_epu8(m, _mm256_set1_epi8(lim));
        _mm256_testz_si256(o, o) == 0
    };
    if !over(8) {
        GemmCodes::Max8
    } else if !over(16) {
        GemmCodes::Max16
    } else {
        GemmCodes::Any
    }
}

/// Rows `w` against tokens `8h..8h + 8` of the block `x` for small codes: `RUN`
/// chunks per i16 sum, 8 for |w| <= 8, 4 for |w| <= 16 (the caller has checked the
/// codes). Returns `f[r]` lane t = row r, token 8h + t. (Two passes of 8 tokens, all
/// sums in registers, measured 25% faster in prefill than 16 tokens per pass.)
#[target_feature(enable = "avx2,fma,f16c")]
fn gemm_avx2_i16<const RUN: usize>(w: &GemmRows, x: &[ActGemm], h: usize) -> [__m256; GEMM_ROWS] {
    let nb = x.len();
    let ones = _mm256_set1_epi16(1);
    let mut f = [_mm256_setzero_ps(); GEMM_ROWS];
    for (b, xb) in x.iter().enumerate() {
        let mut acc = [_mm256_setzero_si256(); GEMM_ROWS];
        for (r, a) in acc.iter_mut().enumerate() {
            *a = _mm256_set1_epi32(w.bias[r * nb + b]);
        }
        for k0 in (0..8).step_by(RUN) {
            let mut s = [_mm256_setzero_si256(); GEMM_ROWS];
            for k in k0..k0 + RUN {
                // Chunk k's 32 bytes of tokens 8h..8h + 8 (x + 128, 4 codes per token).
                // SAFETY: q[k] is 64 bytes, 64-aligned in an ActGemm; h < 2 so
                // 32h + 32 <= 64.
                let xv = unsafe { _mm256_load_si256(xb.q[k].as_ptr().add(32 * h).cast()) };
                for (r, sr) in s.iter_mut().enumerate() {
                    // SAFETY: r < 4, b < nb, k < 8; shapes checked by gemm_shape.
                    let c = unsafe { gemm_codes4(w, nb, r, b, k) };
                    *sr = _mm256_add_epi16(*sr, _mm256_maddubs_epi16(xv, c));
                }
            }
            for (a, sr) in acc.iter_mut().zip(s) {
                *a = _mm256_add_epi32(*a, _mm256_madd_epi16(sr, ones));
            }
        }
        // SAFETY: d is 64 bytes at offset 512 (64-aligned) of an ActGemm; 8h + 8 <= 16.
        let dx = unsafe { _mm256_load_ps(xb.d.as_ptr().add(8 * h)) };
        for (r, fr) in f.iter_mut().enumerate() {
            let sc = _mm256_mul_ps(_mm256_set1_ps(w.d[r * nb + b]), dx);
            *fr = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r]), sc, *fr);
        }
    }
    f
}

/// Row `r`'s 4 codes of block `b`, chunk `k` of the rows `w` ([4, nb, 32]), broadcast
/// to the 8 i32 lanes.
///
/// # Safety
/// `(r * nb + b) * 32 + 4k + 4 <= w.q.len()`: true for r < 4, b < nb, k < 8 once
/// `gemm_shape` has checked the GEMM's shapes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn gemm_codes4(w: &GemmRows, nb: usize, r: usize, b: usize, k: usize) -> __m256i {
    let i = (r * nb + b) * 32 + 4 * k;
    debug_assert!(i + 4 <= w.q.len());
    // SAFETY: the caller guarantees the 4 bytes at i are inside q.
    let c = unsafe { w.q.as_ptr().add(i).cast::<i32>().read_unaligned() };
    _mm256_set1_epi32(c)
}

/// One block's epilogue of the 16-token AVX2 GEMMs (sign trick and AVX-VNNI): the
/// block's i32 sums `$acc[r][h]` (tokens 8h..8h + 8) times `d_w * d_x`, fused into
/// `$f`. A macro, not a function: an `#[inline]` helper here cost a quarter of the
/// AVX-VNNI prefill (session 4), while the text expands to the very same code.
macro_rules! gemm_block_epilogue {
    ($w:ident, $xb:ident, $nb:ident, $b:ident, $acc:ident, $f:ident) => {
        // SAFETY: d is 64 bytes at offset 512 (64-aligned) of an ActGemm.
        let dx = unsafe {
            [
                _mm256_load_ps($xb.d.as_ptr()),
                _mm256_load_ps($xb.d.as_ptr().add(8)),
            ]
        };
        for (r, fr) in $f.iter_mut().enumerate() {
            let dw = _mm256_set1_ps($w.d[r * $nb + $b]);
            for h in 0..2 {
                let sc = _mm256_mul_ps(dw, dx[h]);
                fr[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps($acc[r][h]), sc, fr[h]);
            }
        }
    };
}

/// Rows `w` against the 16 tokens of the block `x` for any codes, with the sign
/// trick. Returns `f[r][h]` lane t = row r, token 8h + t. (16 tokens per pass share
/// each `abs` of the codes: 20% faster than two passes of 8.)
#[target_feature(enable = "avx2,fma,f16c")]
fn gemm_avx2_signed(w: &GemmRows, x: &[ActGemm]) -> [[__m256; 2]; GEMM_ROWS] {
    let nb = x.len();
    let ones = _mm256_set1_epi16(1);
    let flip = _mm256_set1_epi8(-128);
    let mut f = [[_mm256_setzero_ps(); 2]; GEMM_ROWS];
    for (b, xb) in x.iter().enumerate() {
        let mut acc = [[_mm256_setzero_si256(); 2]; GEMM_ROWS];
        for k in 0..8 {
            // Chunk k's bytes of tokens 0..8 and 8..16 as signed codes (x + 128 with
            // the sign bit flipped back).
            // SAFETY: q[k] is 64 bytes, 64-aligned in an ActGemm.
            let xv = unsafe {
                [
                    _mm256_xor_si256(_mm256_load_si256(xb.q[k].as_ptr().cast()), flip),
                    _mm256_xor_si256(_mm256_load_si256(xb.q[k].as_ptr().add(32).cast()), flip),
                ]
            };
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: r < 4, b < nb, k < 8; shapes checked by gemm_shape.
                let c = unsafe { gemm_codes4(w, nb, r, b, k) };
                let u = _mm256_abs_epi8(c);
                for h in 0..2 {
                    let p = _mm256_maddubs_epi16(u, _mm256_sign_epi8(xv[h], c));
                    a[h] = _mm256_add_epi32(a[h], _mm256_madd_epi16(p, ones));
                }
            }
        }
        gemm_block_epilogue!(w, xb, nb, b, acc, f);
    }
    f
}

/// Writes `f` (`f[r][h]` lane t = row r, token 8h + t) to `out` ([16, 4]).
#[target_feature(enable = "avx2,fma,f16c")]
fn gemm_store(f: &[[__m256; 2]; GEMM_ROWS], out: &mut [f32]) {
    let mut t = [[0.0f32; GEMM_TOKENS]; GEMM_ROWS];
    for (r, fr) in f.iter().enumerate() {
        for (h, fh) in fr.iter().enumerate() {
            // SAFETY: t[r][8h..8h + 8] is 8 writable f32; storeu has no alignment need.
            unsafe { _mm256_storeu_ps(t[r].as_mut_ptr().add(8 * h), *fh) };
        }
    }
    for tok in 0..GEMM_TOKENS {
        for r in 0..GEMM_ROWS {
            out[tok * GEMM_ROWS + r] = t[r][tok];
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemm_avx2_t(w: &GemmRows, x: &[ActGemm], out: &mut [f32]) {
    super::gemm_shape(w, x.len(), out.len());
    let codes = gemm_codes(w.q);
    let f = if codes == GemmCodes::Any {
        gemm_avx2_signed(w, x)
    } else {
        let mut f = [[_mm256_setzero_ps(); 2]; GEMM_ROWS];
        for h in 0..2 {
            let fh = if codes == GemmCodes::Max8 {
                gemm_avx2_i16::<8>(w, x, h)
            } else {
                gemm_avx2_i16::<4>(w, x, h)
            };
            for (fr, v) in f.iter_mut().zip(fh) {
                fr[h] = v;
            }
        }
        f
    };
    gemm_store(&f, out);
}

fn gemm_avx2(w: &GemmRows, x: &[ActGemm], out: &mut [f32]) {
    // SAFETY: only reachable through the tables `avx2()` / `avx512()` return after
    // checking AVX2/FMA/F16C; shapes are checked inside.
    unsafe { gemm_avx2_t(w, x, out) }
}

// ---------------------------------------------------------------------------
// Prefill GEMM with AVX-VNNI (the VEX-coded `vpdpbusd` of Alder Lake / Sapphire Rapids
// and later): as `gemm_avx2_signed` but one `vpdpbusd` per row, chunk and 8 tokens,
// which adds the 4 u8 x i8 products into i32 without saturation, so any codes, with
// the bias as the starting value (as `gemm_t` does 16 tokens wide). 16 tokens per
// pass measured 14% faster alone (nb = 28) than two passes of 8 (half the code
// broadcasts), the same in prefill.

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
fn gemm_vnni_t(w: &GemmRows, x: &[ActGemm], out: &mut [f32]) {
    let nb = x.len();
    super::gemm_shape(w, nb, out.len());
    let mut f = [[_mm256_setzero_ps(); 2]; GEMM_ROWS];
    for (b, xb) in x.iter().enumerate() {
        let mut acc = [[_mm256_setzero_si256(); 2]; GEMM_ROWS];
        for (r, a) in acc.iter_mut().enumerate() {
            *a = [_mm256_set1_epi32(w.bias[r * nb + b]); 2];
        }
        for k in 0..8 {
            // SAFETY: q[k] is 64 bytes, 64-aligned in an ActGemm.
            let xv = unsafe {
                [
                    _mm256_load_si256(xb.q[k].as_ptr().cast()),
                    _mm256_load_si256(xb.q[k].as_ptr().add(32).cast()),
                ]
            };
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: r < 4, b < nb, k < 8; shapes checked by gemm_shape.
                let c = unsafe { gemm_codes4(w, nb, r, b, k) };
                a[0] = _mm256_dpbusd_avx_epi32(a[0], xv[0], c);
                a[1] = _mm256_dpbusd_avx_epi32(a[1], xv[1], c);
            }
        }
        gemm_block_epilogue!(w, xb, nb, b, acc, f);
    }
    gemm_store(&f, out);
}

fn gemm_avxvnni(w: &GemmRows, x: &[ActGemm], out: &mut [f32]) {
    // SAFETY: only reachable through the table `avx2()` returns after checking
    // AVX2/FMA/F16C and AVX-VNNI; shapes are checked inside.
    unsafe { gemm_vnni_t(w, x, out) }
}

// ---------------------------------------------------------------------------
// Activation quantizer, bit-identical to `generic::quantize_q8` for finite input
// (ggml's `_ref` rounding: d = amax/127, q = round-half-away(x/d), not the
// round-half-even of ggml's own AVX2 quantizer).

/// One block -> (f16 scale, 32 codes, sum of codes, unrounded f32 scale, all values
/// finite).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn quantize_block(xb: &[f32]) -> (f16, [i8; 32], i32, f32, bool) {
    assert_eq!(xb.len(), QK);
    let p = xb.as_ptr();
    // SAFETY: xb has 32 readable f32.
    let v = unsafe {
        [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ]
    };
    // x * 0 is NaN exactly for NaN and infinite x (max below may drop a NaN).
    let z = _mm256_setzero_ps();
    let nan = _mm256_add_ps(
        _mm256_add_ps(_mm256_mul_ps(v[0], z), _mm256_mul_ps(v[1], z)),
        _mm256_add_ps(_mm256_mul_ps(v[2], z), _mm256_mul_ps(v[3], z)),
    );
    let finite = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(nan, nan)) == 0;
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_andnot_ps(sign, v[0]);
    for vi in &v[1..] {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let idv = _mm256_set1_ps(id);
    let half = _mm256_set1_ps(0.5);
    let one = _mm256_set1_ps(1.0);
    let mut q = [_mm256_setzero_si256(); 4];
    for (qi, vi) in q.iter_mut().zip(v) {
        let s = _mm256_mul_ps(vi, idv);
        let a = _mm256_andnot_ps(sign, s);
        // roundf: trunc(|s|) + (frac >= 0.5), sign restored; exact (|s| - trunc(|s|) is exact).
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(a);
        let up = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_sub_ps(a, t), half), one);
        let r = _mm256_or_ps(_mm256_add_ps(t, up), _mm256_and_ps(s, sign));
        // Saturate like Rust's `as i8` (only reachable when 1/d overflows to inf).
        let r = _mm256_min_ps(
            _mm256_max_ps(r, _mm256_set1_ps(-128.0)),
            _mm256_set1_ps(127.0),
        );
        *qi = _mm256_cvttps_epi32(r);
    }
    let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    let s4 = _mm_add_epi32(
        _mm256_castsi256_si128(sum),
        _mm256_extracti128_si256::<1>(sum),
    );
    let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32::<0b01>(s2));
    let isum = _mm_cvtsi128_si32(s1);
    let a = _mm256_packs_epi32(q[0], q[1]);
    let b = _mm256_packs_epi32(q[2], q[3]);
    let bytes = _mm256_permutevar8x32_epi32(
        _mm256_packs_epi16(a, b),
        _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
    );
    let mut out = [0i8; 32];
    // SAFETY: out is 32 writable bytes; storeu has no alignment need.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), bytes) };
    let dh =
        _mm_extract_epi16::<0>(_mm_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(_mm_set_ss(d))) as u16;
    (f16::from_bits(dh), out, isum, d, finite)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_t(x: &[f32], y: &mut [ActQ8x4]) -> bool {
    let mut all_finite = true;
    for (g, xg) in y.iter_mut().zip(x.chunks(4 * QK)) {
        *g = ActQ8x4::default();
        for (b, xb) in xg.chunks_exact(QK).enumerate() {
            let (d, qs, sum, d32, finite) = quantize_block(xb);
            all_finite &= finite;
            // s = f16(sum * d) with the unrounded f32 d, as quantize_row_q8_1_ref.
            let s = f16::from_f32(sum as f32 * d32);
            generic::store_block(g, b, f16_to_f32(d), &qs, sum, f16_to_f32(s));
        }
    }
    all_finite
}

fn quantize_avx2(x: &[f32], y: &mut [ActQ8x4]) -> bool {
    let nb = x.len() / QK;
    assert!(
        x.len().is_multiple_of(QK) && y.len() == act_groups(nb),
        "quantize: {} values into {} groups of 4 blocks of 32",
        x.len(),
        y.len()
    );
    // SAFETY: only reachable through a table from `avx2()`/`avx512()`, which checked AVX2+FMA+F16C.
    unsafe { quantize_t(x, y) }
}

/// Sum of `v` read as a stream (wrapping adds of 4 x 256-bit lanes), with the
/// kernels' L1 software prefetch: a read-bandwidth probe.
#[target_feature(enable = "avx2,fma,f16c")]
fn stream_sum_t(v: &[u64]) -> u64 {
    let mut acc = [_mm256_setzero_si256(); 4];
    let mut chunks = v.chunks_exact(16);
    for c in &mut chunks {
        // L1 only: the L2 prefetch the kernels add makes this plain stream slower.
        _mm_prefetch::<_MM_HINT_T0>(c.as_ptr().cast::<i8>().wrapping_add(PREFETCH));
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: c holds 16 u64 = 128 bytes; lane k reads bytes 32k..32k+32.
            let x = unsafe { _mm256_loadu_si256(c.as_ptr().add(4 * k).cast()) };
            *a = _mm256_add_epi64(*a, x);
        }
    }
    let mut lanes = [0u64; 16];
    for (k, a) in acc.iter().enumerate() {
        // SAFETY: lanes[4k..4k+4] is 32 writable bytes.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().add(4 * k).cast(), *a) };
    }
    lanes
        .iter()
        .chain(chunks.remainder())
        .fold(0u64, |s, &x| s.wrapping_add(x))
}

/// [`stream_sum_t`] where AVX2 is available.
pub(super) fn stream_sum(v: &[u64]) -> Option<u64> {
    // SAFETY: the features stream_sum_t is compiled with were just detected.
    avx2().map(|_| unsafe { stream_sum_t(v) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a CPU with AVX-VNNI the avx2 table holds the VNNI GEMM, so the plain one is
    /// not reached through `kernels::variants`: both held against the scalar twin here,
    /// bit for bit, at every code range `gemm_codes` tells apart and its edges (all
    /// codes at the end of the range, activations all at +-127).
    #[test]
    fn avx2_gemms_match_scalar_twin() {
        if avx2().is_none() {
            eprintln!("no AVX2/FMA/F16C: skipped");
            return;
        }
        let mut gemms: Vec<(&str, crate::kernels::GemmFn)> = vec![("avx2", gemm_avx2)];
        if is_x86_feature_detected!("avxvnni") {
            gemms.push(("avxvnni", gemm_avxvnni));
        }
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        let nb = 11;
        for lim in [7i32, 8, 9, 15, 16, 17, 127, 128] {
            for edge in [None, Some(-1i32), Some(1)] {
                let q: Vec<i8> = (0..GEMM_ROWS * nb * 32)
                    .map(|_| match edge {
                        None => (next() % (2 * lim as u32 + 1)) as i32 - lim,
                        Some(s) => s * lim,
                    })
                    .map(|c| c.clamp(-128, 127) as i8)
                    .collect();
                let bias: Vec<i32> = q
                    .chunks(32)
                    .map(|c| -128 * c.iter().map(|&v| v as i32).sum::<i32>())
                    .collect();
                let d: Vec<f32> = (0..GEMM_ROWS * nb)
                    .map(|_| (next() % 2001) as f32 * 1e-4 - 0.1)
                    .collect();
                let w = GemmRows {
                    q: &q,
                    bias: &bias,
                    d: &d,
                };
                for x_edge in [None, Some(1u8), Some(255u8)] {
                    let mut x = vec![ActGemm::default(); nb];
                    for xb in &mut x {
                        for row in &mut xb.q {
                            // Codes -127..=127 plus 128, as the quantizer makes them.
                            row.iter_mut()
                                .for_each(|v| *v = x_edge.unwrap_or(1 + (next() % 255) as u8));
                        }
                        xb.d.iter_mut()
                            .for_each(|v| *v = (next() % 1001) as f32 * 1e-5);
                    }
                    let mut want = [0.0f32; GEMM_ROWS * GEMM_TOKENS];
                    generic::gemm(&w, &x, &mut want);
                    for (name, g) in &gemms {
                        let mut got = [0.0f32; GEMM_ROWS * GEMM_TOKENS];
                        g(&w, &x, &mut got);
                        assert!(
                            got.iter()
                                .zip(&want)
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{name} gemm, codes |{lim}| edge {edge:?}, acts {x_edge:?}: \
                             {got:?} vs {want:?}"
                        );
                    }
                }
            }
        }
    }
}
