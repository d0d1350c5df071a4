//! Kernels: every level this CPU has against the scalar twin (exact integer sums,
//! float differences only from summation order), the scalar twin against an f32 dot
//! of dequantized values, and matmul against a naive loop, with 1 and 2 threads.
//!
//! Run: `cargo test --release --test kernels` (a level missing on this CPU is skipped
//! and named on stderr).

use half::{bf16, f16};
use quant_formats::block::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, QK};
use quant_formats::reference;
use quant_formats::GgmlType;
use qwen::kernels::{self, act_groups, generic, ActQ8x4, Kernels};
use qwen::matmul::{matmul_multi_with, matmul_with, MatmulScratch, QMatrix};

#[path = "common_rng/mod.rs"]
mod common_rng;
use common_rng::Rng;

impl Rng {
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    /// A block scale: mostly ordinary, sometimes extreme (f16 max, subnormal) or zero.
    fn scale(&mut self) -> f16 {
        match self.next() % 16 {
            0 => f16::ZERO,
            1 => f16::MAX,
            2 => f16::from_f32(-65504.0),
            3 => f16::from_bits(1), // smallest subnormal
            4 => f16::from_f32(6.1e-5),
            _ => f16::from_f32(self.f() * 0.05),
        }
    }
}

/// Activations of one kind for `n` values: random, with zero blocks, huge and tiny blocks.
fn acts(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n).map(|_| rng.f() * 3.0).collect();
    for (b, blk) in x.chunks_mut(QK).enumerate() {
        match b % 7 {
            1 => blk.fill(0.0),
            3 => blk.iter_mut().for_each(|v| *v *= 1e4),
            5 => blk.iter_mut().for_each(|v| *v *= 1e-6),
            _ => {}
        }
    }
    x
}

fn levels() -> Vec<&'static Kernels> {
    for l in kernels::LEVELS {
        if kernels::table(l).is_none() {
            eprintln!("kernel level {l}: not available on this CPU/build, skipped");
        }
    }
    // Every variant of every level (avx512 with and without VBMI, where the CPU has it).
    kernels::available()
        .into_iter()
        .flat_map(kernels::variants)
        .collect()
}

/// 4-bit (and 5-bit, with `qh`) codes of one block in element order.
fn codes(qs: &[u8; 16], qh: Option<[u8; 4]>) -> [i32; 32] {
    let h = qh.map(u32::from_le_bytes).unwrap_or(0);
    let mut c = [0i32; 32];
    for j in 0..16 {
        c[j] = (qs[j] & 15) as i32 | (((h >> j) & 1) << 4) as i32;
        c[j + 16] = (qs[j] >> 4) as i32 | (((h >> (j + 16)) & 1) << 4) as i32;
    }
    c
}

/// An activation block as the kernels see it: (d, codes, s), from group `i / 4`.
fn act(x: &[ActQ8x4], i: usize) -> (f32, [i8; 32], f32) {
    let g = &x[i / 4];
    (g.d[i % 4], g.codes(i % 4), g.s[i % 4])
}

/// Weight blocks of one type: random codes, scales from `Rng::scale`.
trait TestBlock: Sized + Copy + bytemuck::Pod + Default {
    const DTYPE: GgmlType;
    fn random(rng: &mut Rng) -> Self;
    /// Signed codes (value = code * d + m) and (d, m).
    fn parts(&self) -> ([i32; 32], f32, f32);
    fn tile(k: &Kernels) -> kernels::TileFn<Self>;
    /// Whether the dot uses q8_1's `s` (the `m` offset).
    const USES_S: bool;
}

macro_rules! test_block {
    ($t:ty, $dt:expr, $tile:ident, $offset:expr, has_m = $m:tt, has_h = $h:tt) => {
        impl TestBlock for $t {
            const DTYPE: GgmlType = $dt;
            const USES_S: bool = $m;
            fn random(rng: &mut Rng) -> Self {
                let mut b = <$t>::default();
                b.d = rng.scale();
                b.qs = std::array::from_fn(|_| rng.byte());
                test_block!(@m $m, b, rng);
                test_block!(@h $h, b, rng);
                b
            }
            fn parts(&self) -> ([i32; 32], f32, f32) {
                let c = codes(&self.qs, test_block!(@qh $h, self)).map(|v| v - $offset);
                (c, self.d.to_f32(), test_block!(@mv $m, self))
            }
            fn tile(k: &Kernels) -> kernels::TileFn<Self> {
                k.$tile
            }
        }
    };
    (@m true, $b:ident, $rng:ident) => { $b.m = $rng.scale(); };
    (@m false, $b:ident, $rng:ident) => {};
    (@h true, $b:ident, $rng:ident) => { $b.qh = std::array::from_fn(|_| $rng.byte()); };
    (@h false, $b:ident, $rng:ident) => {};
    (@qh true, $s:ident) => { Some($s.qh) };
    (@qh false, $s:ident) => { None };
    (@mv true, $s:ident) => { $s.m.to_f32() };
    (@mv false, $s:ident) => { 0.0 };
}

test_block!(
    BlockQ4_0,
    GgmlType::Q4_0,
    q4_0,
    8,
    has_m = false,
    has_h = false
);
test_block!(
    BlockQ4_1,
    GgmlType::Q4_1,
    q4_1,
    0,
    has_m = true,
    has_h = false
);
test_block!(
    BlockQ5_0,
    GgmlType::Q5_0,
    q5_0,
    16,
    has_m = false,
    has_h = true
);
test_block!(
    BlockQ5_1,
    GgmlType::Q5_1,
    q5_1,
    0,
    has_m = true,
    has_h = true
);

impl TestBlock for BlockQ8_0 {
    const DTYPE: GgmlType = GgmlType::Q8_0;
    const USES_S: bool = false;
    fn random(rng: &mut Rng) -> Self {
        let mut qs: [i8; 32] = std::array::from_fn(|_| rng.byte() as i8);
        // q8_0 codes are -127..=127; a -128 now and then checks the kernels cope
        // (the unsigned trick maps it to 0, the sign trick to |w| = 128).
        if !rng.next().is_multiple_of(4) {
            qs.iter_mut().for_each(|q| *q = (*q).max(-127));
        }
        Self { d: rng.scale(), qs }
    }
    fn parts(&self) -> ([i32; 32], f32, f32) {
        (self.qs.map(|v| v as i32), self.d.to_f32(), 0.0)
    }
    fn tile(k: &Kernels) -> kernels::TileFn<Self> {
        k.q8_0
    }
}

/// (|d_w d_x| sum |q_w q_x| + |m s|, extra error of the dequantized reference) of a row:
/// the float results may differ by a few ulps of the first (summation order); the
/// dequantized f64 reference also differs by the f16 rounding in q8_1's `s`.
fn bounds<B: TestBlock>(w: &[B], x: &[ActQ8x4]) -> (f64, f64) {
    let (mut mag, mut serr) = (0.0f64, 0.0f64);
    for (i, wb) in w.iter().enumerate() {
        let (c, d, m) = wb.parts();
        let (dx, q, s) = act(x, i);
        let sum: i64 = c
            .iter()
            .zip(&q)
            .map(|(&a, &b)| (a as i64 * b as i64).abs())
            .sum();
        mag += (d as f64 * dx as f64).abs() * sum as f64;
        if B::USES_S {
            if !s.is_finite() {
                return (f64::INFINITY, f64::INFINITY);
            }
            mag += (m as f64 * s as f64).abs();
            // s = f16(d * sum q) (rel. error 2^-11) with the unrounded d (another 2^-11 of
            // |m| * 32 * 127 * |d_x|).
            serr += (m as f64 * s as f64).abs() * 1e-3
                + (m as f64 * dx as f64).abs() * 32.0 * 127.0 * 1e-3;
        }
    }
    (mag, serr)
}

/// f64 dot of the dequantized weights and activations.
fn dequantized_dot<B: TestBlock>(w: &[B], x: &[ActQ8x4]) -> f64 {
    let mut sum = 0.0f64;
    for (i, wb) in w.iter().enumerate() {
        let (c, d, m) = wb.parts();
        let (dx, q, _) = act(x, i);
        for j in 0..32 {
            let wv = (c[j] as f32 * d + m) as f64;
            sum += wv * (q[j] as f32 * dx) as f64;
        }
    }
    sum
}

fn check_close(what: &str, got: f32, want: f64, tol: f64) {
    let err = (got as f64 - want).abs();
    assert!(
        err <= tol
            // Overflow (f16-max scales times 1e4 activations overflow q8_1's f16 `s`, in
            // ggml too): then both sides must be the same non-finite value.
            || (got.is_nan() && want.is_nan())
            || (got.is_infinite() && got as f64 == want),
        "{what}: got {got}, want {want}, |diff| {err:e} > tol {tol:e}"
    );
}

fn quantize(k: &Kernels, x: &[f32]) -> Vec<ActQ8x4> {
    let mut y = vec![ActQ8x4::default(); act_groups(x.len() / QK)];
    (k.quantize)(x, &mut y);
    y
}

/// `nt` rows of `x`, each quantized on its own: [nt, act_groups(nb)].
fn quantize_rows(k: &Kernels, x: &[f32], nt: usize) -> Vec<ActQ8x4> {
    x.chunks(x.len() / nt)
        .flat_map(|r| quantize(k, r))
        .collect()
}

fn dot_case<B: TestBlock>(seed: u64) {
    let scalar = &generic::SCALAR;
    let name = B::DTYPE.name();
    let mut rng = Rng(seed);
    for nb in 1..=33usize {
        let w: Vec<B> = (0..nb).map(|_| B::random(&mut rng)).collect();
        let x = acts(&mut rng, nb * QK);
        let xq = quantize(scalar, &x);
        let mut want = [0.0f32];
        B::tile(scalar)(&w, 1, &xq, &mut want);
        let (mag, serr) = bounds(&w, &xq);
        // Scalar vs the dequantized dot in f64; skipped when q8_1's f16 `s` overflowed
        // (huge scales; ggml overflows there too).
        if serr.is_finite() {
            let exact = dequantized_dot(&w, &xq);
            check_close(
                &format!("{name} scalar vs dequantized, nb={nb}"),
                want[0],
                exact,
                1e-5 * mag + serr + 1e-30,
            );
        }
        for k in levels() {
            // The level's own quantizer gives the same activations, bit for bit.
            assert!(
                quantize(k, &x) == xq,
                "{name}: {} quantizer differs from scalar, nb={nb}",
                k.name
            );
            let mut got = [0.0f32];
            B::tile(k)(&w, 1, &xq, &mut got);
            check_close(
                &format!("{name} {} vs scalar, nb={nb}", k.name),
                got[0],
                want[0] as f64,
                1e-5 * mag + 1e-30,
            );
            // Tiles of 1..=MAX_TILE_ROWS rows x 1..=tile_tokens tokens agree with single
            // scalar dots, and each (row, token) equals the level's own 1x1 tile bit for
            // bit (results do not depend on how a matmul splits rows and tokens).
            let ng = act_groups(nb);
            for rows in 1..=kernels::MAX_TILE_ROWS {
                let ws: Vec<B> = (0..rows * nb).map(|_| B::random(&mut rng)).collect();
                for nt in 1..=k.tile_tokens {
                    let xs: Vec<f32> = (0..nt).flat_map(|_| acts(&mut rng, nb * QK)).collect();
                    let xsq = quantize_rows(scalar, &xs, nt);
                    let mut out = vec![0.0f32; nt * rows];
                    B::tile(k)(&ws, rows, &xsq, &mut out);
                    for t in 0..nt {
                        let xt = &xsq[t * ng..(t + 1) * ng];
                        for r in 0..rows {
                            let wr = &ws[r * nb..(r + 1) * nb];
                            let (mut one, mut own) = ([0.0f32], [0.0f32]);
                            B::tile(scalar)(wr, 1, xt, &mut one);
                            B::tile(k)(wr, 1, xt, &mut own);
                            let (mag, _) = bounds(wr, xt);
                            let what =
                                format!("{name} {} tile {rows}x{nt} r={r} t={t} nb={nb}", k.name);
                            check_close(
                                &what,
                                out[t * rows + r],
                                one[0] as f64,
                                1e-5 * mag + 1e-30,
                            );
                            assert_eq!(
                                out[t * rows + r].to_bits(),
                                own[0].to_bits(),
                                "{what}: differs from the same level's 1x1 tile"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn dot_q4_0() {
    dot_case::<BlockQ4_0>(1);
}
#[test]
fn dot_q4_1() {
    dot_case::<BlockQ4_1>(2);
}
#[test]
fn dot_q5_0() {
    dot_case::<BlockQ5_0>(3);
}
#[test]
fn dot_q5_1() {
    dot_case::<BlockQ5_1>(4);
}
#[test]
fn dot_q8_0() {
    dot_case::<BlockQ8_0>(5);
}

/// The activation quantizers give exactly ggml's q8_0 / q8_1 blocks
/// (quant_formats::reference, the port of `quantize_row_q8_0_ref` / `_q8_1_ref`).
#[test]
fn quantizers_match_ggml_reference() {
    // amax = 127 -> d = 1, id = 1: x.5 values round away from zero.
    let mut x = [0.0f32; 32];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = -2.5;
    x[3] = 0.5;
    x[4] = -0.49999997;
    x[5] = -127.0;
    for k in levels() {
        let g = quantize(k, &x);
        assert_eq!(g[0].d[0], 1.0, "{}", k.name);
        assert_eq!(&g[0].codes(0)[..6], &[127, 3, -3, 1, 0, -127], "{}", k.name);
        assert_eq!(g[0].s[0], 1.0, "{}: s = d * sum(q) = 1", k.name);
        assert_eq!(
            g[0].bias,
            [-8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            "{}",
            k.name
        );
        // All-zero blocks: d = 0, q = 0.
        let z = quantize(k, &[0.0f32; 64]);
        assert_eq!(z[0], ActQ8x4::default(), "{}", k.name);
    }
    // Random data incl. zero, huge, tiny and subnormal-scale blocks: every level
    // equals the reference, block for block.
    let mut rng = Rng(99);
    for nb in [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 28, 152] {
        let mut x = acts(&mut rng, nb * QK);
        if nb > 4 {
            x[4 * QK..5 * QK].iter_mut().for_each(|v| *v *= 1e-36);
        }
        let mut want0 = vec![BlockQ8_0::default(); nb];
        let mut want1 = vec![BlockQ8_1::default(); nb];
        reference::quantize_row_q8_0(&x, &mut want0);
        reference::quantize_row_q8_1(&x, &mut want1);
        for k in levels() {
            let g = quantize(k, &x);
            for i in 0..nb {
                assert_eq!(
                    g[i / 4].to_q8_0(i % 4),
                    want0[i],
                    "{} q8_0 nb={nb} block {i}",
                    k.name
                );
                assert_eq!(
                    g[i / 4].to_q8_1(i % 4),
                    want1[i],
                    "{} q8_1 nb={nb} block {i}",
                    k.name
                );
                let sum: i32 = want0[i].qs.iter().map(|&q| q as i32).sum();
                assert_eq!(
                    g[i / 4].bias[4 * (i % 4)],
                    -8 * sum,
                    "{} bias nb={nb} block {i}",
                    k.name
                );
            }
            // Padding blocks of the last group are zero.
            for i in nb..act_groups(nb) * 4 {
                assert_eq!(g[i / 4].codes(i % 4), [0; 32]);
                assert_eq!((g[i / 4].d[i % 4], g[i / 4].s[i % 4]), (0.0, 0.0));
            }
        }
    }
}

fn float_case<T: Copy + bytemuck::Pod>(
    name: &str,
    from: fn(f32) -> T,
    to: fn(T) -> f32,
    tile: fn(&Kernels) -> kernels::FloatTileFn<T>,
) {
    let mut rng = Rng(7);
    let lens: Vec<usize> = (1..=70).chain([127, 128, 129, 896, 1000, 4864]).collect();
    for n in lens {
        for k in std::iter::once(&generic::SCALAR).chain(levels()) {
            for rows in 1..=kernels::MAX_FLOAT_ROWS {
                let nts: Vec<usize> = if n <= 70 {
                    vec![1, k.tile_tokens]
                } else {
                    (1..=k.tile_tokens).collect()
                };
                for nt in nts {
                    let w: Vec<T> = (0..rows * n)
                        .map(|i| from(if i % 13 == 5 { 0.0 } else { rng.f() * 4.0 }))
                        .collect();
                    let x: Vec<f32> = (0..nt * n).map(|_| rng.f() * 2.0).collect();
                    let mut out = vec![f32::NAN; nt * rows];
                    tile(k)(&w, rows, &x, &mut out);
                    for t in 0..nt {
                        for r in 0..rows {
                            let (wr, xt) = (&w[r * n..(r + 1) * n], &x[t * n..(t + 1) * n]);
                            let e: f64 = wr
                                .iter()
                                .zip(xt)
                                .map(|(&a, &b)| to(a) as f64 * b as f64)
                                .sum();
                            let m: f64 = wr
                                .iter()
                                .zip(xt)
                                .map(|(&a, &b)| (to(a) as f64 * b as f64).abs())
                                .sum();
                            check_close(
                                &format!("{name} {} n={n} rows={rows} nt={nt} r={r} t={t}", k.name),
                                out[t * rows + r],
                                e,
                                2e-6 * m + 1e-30,
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn dot_f32() {
    float_case::<f32>("f32", |v| v, |v| v, |k| k.f32);
}
#[test]
fn dot_f16() {
    float_case::<f16>("f16", f16::from_f32, f16::to_f32, |k| k.f16);
}
#[test]
fn dot_bf16() {
    float_case::<bf16>("bf16", bf16::from_f32, bf16::to_f32, |k| k.bf16);
}

/// Weight bytes of `rows` random rows of `cols` values in `dtype`.
fn random_matrix(rng: &mut Rng, dtype: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let nb = rows * cols / QK;
    fn blocks<B: TestBlock>(rng: &mut Rng, n: usize) -> Vec<u8> {
        let v: Vec<B> = (0..n)
            .map(|_| {
                let mut b = B::random(rng);
                // Keep scales ordinary so sums stay finite in the naive comparison.
                let s = bytemuck::bytes_of_mut(&mut b);
                let d = f16::from_f32(rng.f() * 0.01);
                s[..2].copy_from_slice(&d.to_le_bytes());
                b
            })
            .collect();
        bytemuck::cast_slice(&v).to_vec()
    }
    match dtype {
        GgmlType::F32 => {
            bytemuck::cast_slice(&(0..rows * cols).map(|_| rng.f()).collect::<Vec<f32>>()).to_vec()
        }
        GgmlType::F16 => bytemuck::cast_slice(
            &(0..rows * cols)
                .map(|_| f16::from_f32(rng.f()))
                .collect::<Vec<_>>(),
        )
        .to_vec(),
        GgmlType::Bf16 => bytemuck::cast_slice(
            &(0..rows * cols)
                .map(|_| bf16::from_f32(rng.f()))
                .collect::<Vec<_>>(),
        )
        .to_vec(),
        GgmlType::Q4_0 => blocks::<BlockQ4_0>(rng, nb),
        GgmlType::Q4_1 => blocks::<BlockQ4_1>(rng, nb),
        GgmlType::Q5_0 => blocks::<BlockQ5_0>(rng, nb),
        GgmlType::Q5_1 => blocks::<BlockQ5_1>(rng, nb),
        GgmlType::Q8_0 => blocks::<BlockQ8_0>(rng, nb),
        _ => unreachable!(),
    }
}

/// ggml's per-block formula for one weight row against reference q8 activations
/// (`ggml_vec_dot_*_generic`), written out independently of the kernels.
fn ggml_row<B: TestBlock>(w: &[B], q0: &[BlockQ8_0], q1: &[BlockQ8_1]) -> (f32, f64) {
    let (mut sumf, mut mag) = (0.0f32, 0.0f64);
    for (i, wb) in w.iter().enumerate() {
        let (c, d, m) = wb.parts();
        let (dy, qy, s) = if B::USES_S {
            (q1[i].d.to_f32(), q1[i].qs, q1[i].s.to_f32())
        } else {
            (q0[i].d.to_f32(), q0[i].qs, 0.0)
        };
        let sumi: i32 = c.iter().zip(&qy).map(|(&a, &b)| a * b as i32).sum();
        mag += (d as f64 * dy as f64 * sumi as f64).abs() + (m as f64 * s as f64).abs();
        sumf += match B::DTYPE {
            GgmlType::Q4_0 => sumi as f32 * d * dy,
            GgmlType::Q8_0 => sumi as f32 * (d * dy),
            GgmlType::Q5_0 => (d * dy) * sumi as f32,
            _ => (d * dy) * sumi as f32 + m * s,
        };
    }
    (sumf, mag)
}

/// Naive reference: every (row, token) on its own. Quantized weights: activations from
/// `quant_formats::reference` and ggml's formula; float weights: an f64 dot.
/// Returns (y, magnitude of each y's terms).
fn naive(
    dtype: GgmlType,
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n_tok: usize,
) -> (Vec<f32>, Vec<f64>) {
    fn rows_of<B: TestBlock>(data: &[u8], nb: usize, r: usize) -> &[B] {
        &bytemuck::cast_slice(data)[r * nb..(r + 1) * nb]
    }
    fn fdot<T: bytemuck::Pod>(
        data: &[u8],
        cols: usize,
        r: usize,
        xt: &[f32],
        to: fn(T) -> f32,
    ) -> (f32, f64) {
        let w: &[T] = &bytemuck::cast_slice(data)[r * cols..(r + 1) * cols];
        let e: f64 = w
            .iter()
            .zip(xt)
            .map(|(&a, &b)| to(a) as f64 * b as f64)
            .sum();
        let m: f64 = w
            .iter()
            .zip(xt)
            .map(|(&a, &b)| (to(a) as f64 * b as f64).abs())
            .sum();
        (e as f32, m)
    }
    let nb = cols / QK;
    let mut y = vec![0.0f32; n_tok * rows];
    let mut mag = vec![0.0f64; n_tok * rows];
    for t in 0..n_tok {
        let xt = &x[t * cols..(t + 1) * cols];
        let mut q0 = vec![BlockQ8_0::default(); nb];
        let mut q1 = vec![BlockQ8_1::default(); nb];
        reference::quantize_row_q8_0(&xt[..nb * QK], &mut q0);
        reference::quantize_row_q8_1(&xt[..nb * QK], &mut q1);
        for r in 0..rows {
            (y[t * rows + r], mag[t * rows + r]) = match dtype {
                GgmlType::F32 => fdot::<f32>(data, cols, r, xt, |v| v),
                GgmlType::F16 => fdot::<f16>(data, cols, r, xt, f16::to_f32),
                GgmlType::Bf16 => fdot::<bf16>(data, cols, r, xt, bf16::to_f32),
                GgmlType::Q4_0 => ggml_row(rows_of::<BlockQ4_0>(data, nb, r), &q0, &q1),
                GgmlType::Q4_1 => ggml_row(rows_of::<BlockQ4_1>(data, nb, r), &q0, &q1),
                GgmlType::Q5_0 => ggml_row(rows_of::<BlockQ5_0>(data, nb, r), &q0, &q1),
                GgmlType::Q5_1 => ggml_row(rows_of::<BlockQ5_1>(data, nb, r), &q0, &q1),
                GgmlType::Q8_0 => ggml_row(rows_of::<BlockQ8_0>(data, nb, r), &q0, &q1),
                _ => unreachable!(),
            };
        }
    }
    (y, mag)
}

#[test]
fn matmul_matches_naive_loop() {
    let types = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Bf16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
    ];
    let mut rng = Rng(11);
    // Shapes: one over the parallel threshold with ragged chunks, one tiny.
    for (rows, cols) in [(203, 320), (67, 512), (5, 64)] {
        for dtype in types {
            let data = random_matrix(&mut rng, dtype, rows, cols);
            // f32 weights need 4-byte alignment: copy into a Vec<f32>-backed buffer.
            let aligned: Vec<u32> = data
                .chunks(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let bytes: &[u8] = bytemuck::cast_slice(&aligned);
            let w = QMatrix::new("test", dtype, rows, cols, bytes).unwrap();
            for n_tok in [1usize, 2, 3, 7, 8, 17] {
                let x: Vec<f32> = (0..n_tok * cols).map(|_| rng.f()).collect();
                let (want, mag) = naive(dtype, bytes, rows, cols, &x, n_tok);
                // Per level: the first result, which every thread count, variant and
                // token-by-token run must reproduce bit for bit.
                let mut first: Vec<(&str, Vec<f32>)> = Vec::new();
                for threads in [1usize, 2] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    for k in levels() {
                        // max_tokens 5 < 7, 8, 17: activations are quantized in rounds.
                        let mut scratch = MatmulScratch::new(5, cols);
                        let mut y = vec![f32::NAN; n_tok * rows];
                        pool.install(|| matmul_with(k, &w, &x, &mut y, n_tok, &mut scratch));
                        for (i, (&g, &e)) in y.iter().zip(&want).enumerate() {
                            // The scalar level is ggml's formula to the bit; SIMD levels and
                            // float weights differ by summation order only.
                            let exact = k.name == "scalar"
                                && !matches!(dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16);
                            let tol = if exact { 0.0 } else { 1e-5 * mag[i] + 1e-30 };
                            assert!(
                                (g as f64 - e as f64).abs() <= tol,
                                "{dtype} {} {rows}x{cols} n_tok={n_tok} threads={threads}: y[{i}] = {g}, naive {e}",
                                k.name
                            );
                        }
                        let what = format!(
                            "{dtype} {} {} {rows}x{cols} n_tok={n_tok} threads={threads}",
                            k.name, k.variant
                        );
                        match first.iter().find(|(l, _)| *l == k.name) {
                            Some((_, y0)) => assert!(
                                bits(&y) == bits(y0),
                                "{what}: differs from the level's first run"
                            ),
                            None => {
                                // Token by token gives the same bits as the batch.
                                let mut y1 = vec![f32::NAN; n_tok * rows];
                                for t in 0..n_tok {
                                    pool.install(|| {
                                        matmul_with(
                                            k,
                                            &w,
                                            &x[t * cols..(t + 1) * cols],
                                            &mut y1[t * rows..(t + 1) * rows],
                                            1,
                                            &mut scratch,
                                        )
                                    });
                                }
                                assert!(bits(&y1) == bits(&y), "{what}: token by token differs");
                                first.push((k.name, y));
                            }
                        }
                    }
                }
            }
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn quantizers_report_non_finite() {
    let mut rng = Rng(5);
    for k in levels() {
        for nb in [1usize, 3, 5, 28] {
            let x = acts(&mut rng, nb * QK);
            let mut y = vec![ActQ8x4::default(); act_groups(nb)];
            assert!((k.quantize)(&x, &mut y), "{} nb={nb}: finite input", k.name);
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                for pos in [0, nb * QK / 2, nb * QK - 1] {
                    let mut xb = x.clone();
                    xb[pos] = bad;
                    assert!(
                        !(k.quantize)(&xb, &mut y),
                        "{} nb={nb}: {bad} at {pos} not reported",
                        k.name
                    );
                }
            }
        }
    }
}

/// A fused call equals one call per matrix, bit for bit, for mixed types, any
/// thread count and token count; a non-finite activation makes every output NaN.
#[test]
fn matmul_multi_matches_separate_calls() {
    let mut rng = Rng(21);
    let cols = 256;
    let shapes = [
        (GgmlType::Q4_0, 96),
        (GgmlType::Q8_0, 20),
        (GgmlType::F16, 36),
        (GgmlType::Q5_1, 300),
    ];
    let datas: Vec<Vec<u32>> = shapes
        .iter()
        .map(|&(t, r)| {
            random_matrix(&mut rng, t, r, cols)
                .chunks(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        })
        .collect();
    let ws: Vec<QMatrix> = shapes
        .iter()
        .zip(&datas)
        .map(|(&(t, r), d)| QMatrix::new("w", t, r, cols, bytemuck::cast_slice(d)).unwrap())
        .collect();
    let wr: Vec<&QMatrix> = ws.iter().collect();
    for n_tok in [1usize, 3, 9] {
        let mut x: Vec<f32> = (0..n_tok * cols).map(|_| rng.f()).collect();
        for threads in [1usize, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for k in levels() {
                let mut scratch = MatmulScratch::new(4, cols);
                let mut sep: Vec<Vec<f32>> = ws.iter().map(|w| vec![0.0; n_tok * w.rows]).collect();
                let mut fused = sep.clone();
                pool.install(|| {
                    for (w, y) in ws.iter().zip(sep.iter_mut()) {
                        matmul_with(k, w, &x, y, n_tok, &mut scratch);
                    }
                    let mut ys: Vec<&mut [f32]> =
                        fused.iter_mut().map(|v| v.as_mut_slice()).collect();
                    matmul_multi_with(k, &wr, &x, &mut ys, n_tok, &mut scratch);
                });
                for (i, (a, b)) in sep.iter().zip(&fused).enumerate() {
                    assert!(
                        bits(a) == bits(b),
                        "{} {} n_tok={n_tok} threads={threads}: matrix {i} differs",
                        k.name,
                        k.variant
                    );
                }
                // A NaN in the last token: every output of every matrix is NaN.
                x[n_tok * cols - 1] = f32::NAN;
                pool.install(|| {
                    let mut ys: Vec<&mut [f32]> =
                        fused.iter_mut().map(|v| v.as_mut_slice()).collect();
                    matmul_multi_with(k, &wr, &x, &mut ys, n_tok, &mut scratch);
                });
                assert!(
                    fused.iter().flatten().all(|v| v.is_nan()),
                    "{} n_tok={n_tok}: NaN activation not propagated",
                    k.name
                );
                x[n_tok * cols - 1] = 0.5;
            }
        }
    }
}

/// The GEMM's bias of unpacked rows `q`: -128 x the sum of each block's 32 codes.
fn gemm_bias(q: &[i8]) -> Vec<i32> {
    q.chunks(32)
        .map(|c| -128 * c.iter().map(|&v| v as i32).sum::<i32>())
        .collect()
}

/// Every level's GEMM on `w` x `gx` equals `want` (the scalar twin's) bit for bit.
fn assert_gemms_equal(w: &kernels::GemmRows, gx: &[kernels::ActGemm], want: &[f32], what: &str) {
    for k in levels() {
        if let Some(g) = k.gemm {
            let mut got = vec![0.0f32; want.len()];
            g(w, gx, &mut got);
            assert!(
                bits(&got) == bits(want),
                "{} {} gemm ({what}) differs from the scalar twin",
                k.name,
                k.variant
            );
        }
    }
}

/// The GEMM of every level that has one equals the scalar twin bit for bit, and the
/// twin equals the dequantized dot (f64) to rounding; matmul through the GEMM (16+
/// tokens per round) equals the naive loop to rounding, the same with 1 and 2 threads.
#[test]
fn gemm_matches_scalar_twin() {
    let mut rng = Rng(31);
    for nb in [1usize, 2, 5, 28] {
        // Unpacked rows as the GEMM takes them: codes in -128..127 (q8_0's range and
        // beyond), random scales.
        let q: Vec<i8> = (0..4 * nb * 32).map(|_| rng.byte() as i8).collect();
        let bias = gemm_bias(&q);
        let d: Vec<f32> = (0..4 * nb).map(|_| rng.scale().to_f32()).collect();
        let w = kernels::GemmRows {
            q: &q,
            bias: &bias,
            d: &d,
        };
        for nt in [1usize, 7, 16] {
            let x = acts(&mut rng, nt * nb * QK);
            let xq = quantize_rows(&generic::SCALAR, &x, nt);
            let mut gx = vec![kernels::ActGemm::default(); nb];
            kernels::gemm_acts(&xq, nt, &mut gx);
            let mut want = vec![0.0f32; 64];
            generic::gemm(&w, &gx, &mut want);
            for t in 0..nt {
                for r in 0..4 {
                    let ng = act_groups(nb);
                    let (mut exact, mut mag) = (0.0f64, 0.0f64);
                    for b in 0..nb {
                        let g = &xq[t * ng + b / 4];
                        let codes = g.codes(b % 4);
                        let isum: i64 = (0..32)
                            .map(|j| q[(r * nb + b) * 32 + j] as i64 * codes[j] as i64)
                            .sum();
                        let v = isum as f64 * d[r * nb + b] as f64 * g.d[b % 4] as f64;
                        exact += v;
                        mag += v.abs();
                    }
                    let got = want[t * 4 + r] as f64;
                    if mag < f32::MAX as f64 / 4.0 {
                        assert!(
                            (got - exact).abs() <= 1e-5 * mag + 1e-30,
                            "scalar gemm nb={nb} t={t} r={r}: {got} vs {exact}"
                        );
                    }
                }
            }
            assert_gemms_equal(&w, &gx, &want, &format!("nb={nb} nt={nt}"));
        }
    }
    // Through matmul: q4_0, q5_0, q8_0 at 40 tokens (two full token blocks and a part).
    for dtype in [GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0] {
        let (rows, cols, n_tok) = (70, 320, 40);
        let data: Vec<u32> = random_matrix(&mut rng, dtype, rows, cols)
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let data: &[u8] = bytemuck::cast_slice(&data);
        let w = QMatrix::new("test", dtype, rows, cols, data).unwrap();
        let x: Vec<f32> = (0..n_tok * cols).map(|_| rng.f()).collect();
        let (want, mag) = naive(dtype, data, rows, cols, &x, n_tok);
        for k in levels() {
            let mut first: Option<Vec<f32>> = None;
            for threads in [1usize, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut scratch = MatmulScratch::new(64, cols);
                let mut y = vec![f32::NAN; n_tok * rows];
                pool.install(|| matmul_with(k, &w, &x, &mut y, n_tok, &mut scratch));
                for (i, (&g, &e)) in y.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - e as f64).abs() <= 1e-5 * mag[i] + 1e-30,
                        "{dtype} {} n_tok={n_tok} threads={threads}: y[{i}] = {g}, naive {e}",
                        k.name
                    );
                }
                match &first {
                    Some(y0) => assert!(bits(&y) == bits(y0), "{dtype} {}: threads differ", k.name),
                    None => first = Some(y),
                }
            }
        }
    }
}

/// The GEMM at the edges of each weight code range the kernels special-case (AVX2
/// keeps sums in i16 for |code| <= 8 and <= 16): random codes within the range, and
/// every code at the range's end against activations all at +127 or -127 (the
/// largest partial sums), bit for bit against the scalar twin.
#[test]
fn gemm_code_ranges_match_scalar_twin() {
    let mut rng = Rng(47);
    let nb = 9;
    let mut cases: Vec<(String, Vec<i8>, Vec<f32>)> = Vec::new();
    for lim in [7i32, 8, 15, 16, 127, 128] {
        let span = 2 * lim as u64 + 1;
        let q: Vec<i8> = (0..4 * nb * 32)
            .map(|_| ((rng.next() % span) as i32 - lim).clamp(-128, 127) as i8)
            .collect();
        cases.push((
            format!("random |code| <= {lim}"),
            q,
            acts(&mut rng, 16 * nb * QK),
        ));
        for (edge, x) in [(-lim, 1.0f32), (lim, 1.0), (-lim, -1.0), (lim, -1.0)] {
            let q = vec![edge.clamp(-128, 127) as i8; 4 * nb * 32];
            cases.push((format!("codes {edge}, acts {x}"), q, vec![x; 16 * nb * QK]));
        }
    }
    for (what, q, x) in cases {
        let bias = gemm_bias(&q);
        let d: Vec<f32> = (0..4 * nb).map(|_| rng.f() * 0.05).collect();
        let w = kernels::GemmRows {
            q: &q,
            bias: &bias,
            d: &d,
        };
        let xq = quantize_rows(&generic::SCALAR, &x, 16);
        let mut gx = vec![kernels::ActGemm::default(); nb];
        kernels::gemm_acts(&xq, 16, &mut gx);
        let mut want = vec![0.0f32; 64];
        generic::gemm(&w, &gx, &mut want);
        assert_gemms_equal(&w, &gx, &want, &what);
    }
}

#[test]
fn qmatrix_rejects_bad_shapes() {
    let data = vec![0u8; 18 * 4];
    assert!(QMatrix::new("a", GgmlType::Q4_0, 2, 64, &data).is_ok());
    let e = QMatrix::new("a", GgmlType::Q4_0, 2, 65, &data).unwrap_err();
    assert!(e.contains("65") && e.contains("32"), "{e}");
    let e = QMatrix::new("blk.0.ffn_up", GgmlType::Q4_0, 3, 64, &data).unwrap_err();
    assert!(
        e.contains("blk.0.ffn_up") && e.contains("108") && e.contains("72"),
        "{e}"
    );
    let e = QMatrix::new("a", GgmlType::Q6K, 1, 256, &data[..0]).unwrap_err();
    assert!(e.contains("q6_K"), "{e}");
}

#[test]
fn select_levels() {
    for l in kernels::available() {
        assert_eq!(kernels::select(Some(l)), Ok(l));
        assert_eq!(kernels::level(), l);
    }
    let e = kernels::select(Some("sse9")).unwrap_err();
    assert!(e.contains("sse9") && e.contains("scalar"), "{e}");
    // QWEN_KERNELS is honoured when no level is given (no other test reads it).
    std::env::set_var("QWEN_KERNELS", "scalar");
    assert_eq!(kernels::select(None), Ok("scalar"));
    std::env::set_var("QWEN_KERNELS", "bogus");
    let e = kernels::select(None).unwrap_err();
    assert!(e.contains("bogus"), "{e}");
    std::env::remove_var("QWEN_KERNELS");
    let best = kernels::select(None).unwrap();
    assert_eq!(Some(&best), kernels::available().last());
}

/// The bandwidth probe sums exactly (wrapping), whatever the length.
#[test]
fn stream_sum_is_a_sum() {
    let mut rng = Rng(3);
    for n in [0usize, 1, 15, 16, 17, 100, 4099] {
        let v: Vec<u64> = (0..n).map(|_| rng.next()).collect();
        let want = v.iter().fold(0u64, |s, &x| s.wrapping_add(x));
        assert_eq!(kernels::stream_sum(&v), want, "n={n}");
    }
}
