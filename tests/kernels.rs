//! Kernels: every level this CPU has against the scalar twin (exact integer sums,
//! float differences only from summation order), the scalar twin against an f32 dot
//! of dequantized values, and matmul against a naive loop, with 1 and 2 threads.
//!
//! Run: `cargo test --release --test kernels` (a level missing on this CPU is skipped
//! and named on stderr).

use half::{bf16, f16};
use quant_formats::block::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, QK};
use quant_formats::GgmlType;
use qwen::kernels::{self, generic, Kernels};
use qwen::matmul::{matmul_with, MatmulScratch, QMatrix};

/// splitmix64: seeded, reproducible test data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
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
    kernels::available()
        .into_iter()
        .filter_map(kernels::table)
        .collect()
}

fn deq_q8_0(b: &[BlockQ8_0]) -> Vec<f32> {
    b.iter()
        .flat_map(|b| b.qs.map(|q| q as f32 * b.d.to_f32()))
        .collect()
}
fn deq_q8_1(b: &[BlockQ8_1]) -> Vec<f32> {
    b.iter()
        .flat_map(|b| b.qs.map(|q| q as f32 * b.d.to_f32()))
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

/// Weight blocks of one type: random codes, scales from `Rng::scale`.
trait TestBlock: Sized + Copy + bytemuck::Pod {
    type Act: Copy + Default + bytemuck::Pod;
    const DTYPE: GgmlType;
    fn random(rng: &mut Rng) -> Self;
    fn deq(&self) -> [f32; 32];
    fn tile(k: &Kernels) -> kernels::TileFn<Self, Self::Act>;
    fn quantize(k: &Kernels, x: &[f32], y: &mut [Self::Act]);
    fn deq_act(a: &[Self::Act]) -> Vec<f32>;
    /// Bound on |terms| the float result depends on, per block: |d_w d_x| sum|q_w q_x| + |m s|.
    fn magnitude(&self, a: &Self::Act) -> f64;
    /// Extra error of the dequantized reference from q8_1's f16 `s` (0 for q8_0 activations).
    fn s_err(&self, a: &Self::Act) -> f64;
}

fn mag_int(dw: f16, dx: f16, w: &[i32; 32], x: &[i8; 32]) -> f64 {
    let s: i64 = w
        .iter()
        .zip(x)
        .map(|(&a, &b)| (a as i64 * b as i64).abs())
        .sum();
    (dw.to_f32() as f64 * dx.to_f32() as f64).abs() * s as f64
}

macro_rules! test_block {
    ($t:ty, $act:ty, $dt:expr, $tile:ident, $q:ident, $deqa:ident, $offset:expr, has_m = $m:tt, has_h = $h:tt) => {
        impl TestBlock for $t {
            type Act = $act;
            const DTYPE: GgmlType = $dt;
            fn random(rng: &mut Rng) -> Self {
                let mut b = <$t>::default();
                b.d = rng.scale();
                b.qs = std::array::from_fn(|_| rng.byte());
                test_block!(@m $m, b, rng);
                test_block!(@h $h, b, rng);
                b
            }
            fn deq(&self) -> [f32; 32] {
                let c = codes(&self.qs, test_block!(@qh $h, self));
                let d = self.d.to_f32();
                std::array::from_fn(|i| (c[i] - $offset) as f32 * d + test_block!(@mv $m, self))
            }
            fn tile(k: &Kernels) -> kernels::TileFn<Self, Self::Act> {
                k.$tile
            }
            fn quantize(k: &Kernels, x: &[f32], y: &mut [Self::Act]) {
                (k.$q)(x, y)
            }
            fn deq_act(a: &[Self::Act]) -> Vec<f32> {
                $deqa(a)
            }
            fn magnitude(&self, a: &Self::Act) -> f64 {
                let c = codes(&self.qs, test_block!(@qh $h, self)).map(|v| v - $offset);
                mag_int(self.d, a.d, &c, &a.qs) + test_block!(@ms $m, self, a)
            }
            #[allow(unused_variables)]
            fn s_err(&self, a: &Self::Act) -> f64 {
                // s = f16(d * sum q): relative error <= 2^-11, plus d's own f16 rounding.
                test_block!(@ms $m, self, a) * 2e-3
                    + test_block!(@se $m, self, a)
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
    (@ms true, $s:ident, $a:ident) => {
        if $a.s.is_finite() { ($s.m.to_f32() as f64 * $a.s.to_f32() as f64).abs() } else { f64::INFINITY }
    };
    (@ms false, $s:ident, $a:ident) => { 0.0 };
    (@se true, $s:ident, $a:ident) => {{
        // The reference uses m * sum(q * d_x) with d_x rounded to f16, the kernel m * s with
        // s from the unrounded d: the two differ by up to |m| * 32 * 127 * |d_x| * 2^-11.
        ($s.m.to_f32() as f64 * $a.d.to_f32() as f64).abs() * 32.0 * 127.0 * 1e-3
    }};
    (@se false, $s:ident, $a:ident) => { 0.0 };
}

test_block!(
    BlockQ4_0,
    BlockQ8_0,
    GgmlType::Q4_0,
    q4_0,
    quantize_q8_0,
    deq_q8_0,
    8,
    has_m = false,
    has_h = false
);
test_block!(
    BlockQ4_1,
    BlockQ8_1,
    GgmlType::Q4_1,
    q4_1,
    quantize_q8_1,
    deq_q8_1,
    0,
    has_m = true,
    has_h = false
);
test_block!(
    BlockQ5_0,
    BlockQ8_0,
    GgmlType::Q5_0,
    q5_0,
    quantize_q8_0,
    deq_q8_0,
    16,
    has_m = false,
    has_h = true
);
test_block!(
    BlockQ5_1,
    BlockQ8_1,
    GgmlType::Q5_1,
    q5_1,
    quantize_q8_1,
    deq_q8_1,
    0,
    has_m = true,
    has_h = true
);

impl TestBlock for BlockQ8_0 {
    type Act = BlockQ8_0;
    const DTYPE: GgmlType = GgmlType::Q8_0;
    fn random(rng: &mut Rng) -> Self {
        let mut qs: [i8; 32] = std::array::from_fn(|_| rng.byte() as i8);
        // q8_0 codes are -127..=127; keep one -128 block in a while to check the kernels
        // do not rely on it (ggml's do not either: sign tricks use |w| <= 128 fine).
        if rng.next() % 4 != 0 {
            qs.iter_mut().for_each(|q| *q = (*q).max(-127));
        }
        Self { d: rng.scale(), qs }
    }
    fn deq(&self) -> [f32; 32] {
        self.qs.map(|q| q as f32 * self.d.to_f32())
    }
    fn tile(k: &Kernels) -> kernels::TileFn<Self, Self::Act> {
        k.q8_0
    }
    fn quantize(k: &Kernels, x: &[f32], y: &mut [Self::Act]) {
        (k.quantize_q8_0)(x, y)
    }
    fn deq_act(a: &[Self::Act]) -> Vec<f32> {
        deq_q8_0(a)
    }
    fn magnitude(&self, a: &Self::Act) -> f64 {
        mag_int(self.d, a.d, &self.qs.map(|v| v as i32), &a.qs)
    }
    fn s_err(&self, _: &Self::Act) -> f64 {
        0.0
    }
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

fn dot_case<B: TestBlock>(seed: u64) {
    let scalar = &generic::SCALAR;
    let mut rng = Rng(seed);
    for nb in 1..=33usize {
        let w: Vec<B> = (0..nb).map(|_| B::random(&mut rng)).collect();
        let x = acts(&mut rng, nb * QK);
        let mut xq = vec![B::Act::default(); nb];
        B::quantize(scalar, &x, &mut xq);
        let mut want = [0.0f32];
        B::tile(scalar)(&w, &xq, &mut want);
        let mag: f64 = w.iter().zip(&xq).map(|(a, b)| a.magnitude(b)).sum();
        let serr: f64 = w.iter().zip(&xq).map(|(a, b)| a.s_err(b)).sum();
        // Scalar vs f32 dot of the dequantized values (in f64).
        let wd: Vec<f32> = w.iter().flat_map(|b| b.deq()).collect();
        let xd = B::deq_act(&xq);
        let exact: f64 = wd.iter().zip(&xd).map(|(&a, &b)| a as f64 * b as f64).sum();
        let name = B::DTYPE.name();
        // Skipped when q8_1's f16 `s` overflowed (huge scales; ggml overflows there too).
        if serr.is_finite() {
            check_close(
                &format!("{name} scalar vs dequantized, nb={nb}"),
                want[0],
                exact,
                1e-5 * mag + serr + 1e-30,
            );
        }
        for k in levels() {
            // Same activations from the level's own quantizer: must be bit-identical.
            let mut xk = vec![B::Act::default(); nb];
            B::quantize(k, &x, &mut xk);
            assert!(
                bytemuck::cast_slice::<B::Act, u8>(&xk) == bytemuck::cast_slice::<B::Act, u8>(&xq),
                "{name}: {} activation quantizer differs from scalar, nb={nb}",
                k.name
            );
            let mut got = [0.0f32];
            B::tile(k)(&w, &xq, &mut got);
            check_close(
                &format!("{name} {} vs scalar, nb={nb}", k.name),
                got[0],
                want[0] as f64,
                1e-5 * mag + 1e-30,
            );
            // Tiles of 1..=tile_tokens tokens agree with single dots.
            for nt in 1..=k.tile_tokens {
                let xs: Vec<f32> = (0..nt).flat_map(|_| acts(&mut rng, nb * QK)).collect();
                let mut xsq = vec![B::Act::default(); nt * nb];
                B::quantize(scalar, &xs, &mut xsq);
                let mut out = vec![0.0f32; nt];
                B::tile(k)(&w, &xsq, &mut out);
                for t in 0..nt {
                    let xt = &xsq[t * nb..(t + 1) * nb];
                    let mut one = [0.0f32];
                    B::tile(scalar)(&w, xt, &mut one);
                    let mag: f64 = w.iter().zip(xt).map(|(a, b)| a.magnitude(b)).sum();
                    check_close(
                        &format!("{name} {} tile nt={nt} t={t} nb={nb}", k.name),
                        out[t],
                        one[0] as f64,
                        1e-5 * mag + 1e-30,
                    );
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

/// The activation quantizers round like ggml's `_ref`: half away from zero, d = amax/127.
#[test]
fn quantizers_match_ggml_rounding() {
    // amax = 127 -> d = 1, id = 1: x.5 values round away from zero.
    let mut x = [0.0f32; 32];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = -2.5;
    x[3] = 0.5;
    x[4] = -0.49999997;
    x[5] = -127.0;
    for k in levels() {
        let mut y = [BlockQ8_0::default()];
        (k.quantize_q8_0)(&x, &mut y);
        assert_eq!(y[0].d.to_f32(), 1.0, "{}", k.name);
        assert_eq!(&y[0].qs[..6], &[127, 3, -3, 1, 0, -127], "{}", k.name);
        let mut y1 = [BlockQ8_1::default()];
        (k.quantize_q8_1)(&x, &mut y1);
        assert_eq!(&y1[0].qs[..6], &[127, 3, -3, 1, 0, -127], "{}", k.name);
        assert_eq!(y1[0].s.to_f32(), 1.0, "{}: s = d * sum(q) = 1", k.name);
        // All-zero block: d = 0, q = 0.
        let z = [0.0f32; 64];
        let mut y = [BlockQ8_0::default(); 2];
        (k.quantize_q8_0)(&z, &mut y);
        assert!(
            y.iter().all(|b| b.d.to_f32() == 0.0 && b.qs == [0; 32]),
            "{}",
            k.name
        );
    }
    // Random data, every level bit-identical to scalar on many lengths.
    let mut rng = Rng(99);
    for nb in [1, 2, 3, 7, 8, 9, 16, 17, 28, 152] {
        let x = acts(&mut rng, nb * QK);
        let mut want0 = vec![BlockQ8_0::default(); nb];
        let mut want1 = vec![BlockQ8_1::default(); nb];
        generic::quantize_row_q8_0(&x, &mut want0);
        generic::quantize_row_q8_1(&x, &mut want1);
        for k in levels() {
            let mut y0 = vec![BlockQ8_0::default(); nb];
            let mut y1 = vec![BlockQ8_1::default(); nb];
            (k.quantize_q8_0)(&x, &mut y0);
            (k.quantize_q8_1)(&x, &mut y1);
            assert_eq!(y0, want0, "{} q8_0 nb={nb}", k.name);
            assert_eq!(y1, want1, "{} q8_1 nb={nb}", k.name);
        }
    }
}

fn float_case<T: Copy + bytemuck::Pod>(
    name: &str,
    from: fn(f32) -> T,
    to: fn(T) -> f32,
    tile: fn(&Kernels) -> kernels::TileFn<T, f32>,
) {
    let mut rng = Rng(7);
    let lens: Vec<usize> = (1..=70).chain([127, 128, 129, 896, 1000, 4864]).collect();
    for n in lens {
        let w: Vec<T> = (0..n)
            .map(|i| from(if i % 13 == 5 { 0.0 } else { rng.f() * 4.0 }))
            .collect();
        let x: Vec<f32> = (0..n).map(|_| rng.f() * 2.0).collect();
        let exact: f64 = w
            .iter()
            .zip(&x)
            .map(|(&a, &b)| to(a) as f64 * b as f64)
            .sum();
        let mag: f64 = w
            .iter()
            .zip(&x)
            .map(|(&a, &b)| (to(a) as f64 * b as f64).abs())
            .sum();
        let tol = 2e-6 * mag + 1e-30;
        for k in std::iter::once(&generic::SCALAR).chain(levels()) {
            let mut got = [0.0f32];
            tile(k)(&w, &x, &mut got);
            check_close(&format!("{name} {} n={n}", k.name), got[0], exact, tol);
            for nt in 2..=k.tile_tokens {
                let xs: Vec<f32> = (0..nt * n).map(|_| rng.f()).collect();
                let mut out = vec![0.0f32; nt];
                tile(k)(&w, &xs, &mut out);
                for t in 0..nt {
                    let xt = &xs[t * n..(t + 1) * n];
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
                    check_close(
                        &format!("{name} {} tile nt={nt} t={t} n={n}", k.name),
                        out[t],
                        e,
                        2e-6 * m + 1e-30,
                    );
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

/// Naive reference: scalar dot of every (row, token), activations from the scalar quantizer.
fn naive(
    dtype: GgmlType,
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n_tok: usize,
) -> Vec<f32> {
    let s = &generic::SCALAR;
    let nb = cols / QK;
    let mut y = vec![0.0f32; n_tok * rows];
    for t in 0..n_tok {
        let xt = &x[t * cols..(t + 1) * cols];
        let mut q0 = vec![BlockQ8_0::default(); nb];
        let mut q1 = vec![BlockQ8_1::default(); nb];
        if cols % QK == 0 {
            generic::quantize_row_q8_0(xt, &mut q0);
            generic::quantize_row_q8_1(xt, &mut q1);
        }
        for r in 0..rows {
            y[t * rows + r] = match dtype {
                GgmlType::F32 => {
                    s.dot_f32(&bytemuck::cast_slice(data)[r * cols..(r + 1) * cols], xt)
                }
                GgmlType::F16 => {
                    s.dot_f16(&bytemuck::cast_slice(data)[r * cols..(r + 1) * cols], xt)
                }
                GgmlType::Bf16 => {
                    s.dot_bf16(&bytemuck::cast_slice(data)[r * cols..(r + 1) * cols], xt)
                }
                GgmlType::Q4_0 => {
                    s.dot_q4_0(&bytemuck::cast_slice(data)[r * nb..(r + 1) * nb], &q0)
                }
                GgmlType::Q4_1 => {
                    s.dot_q4_1(&bytemuck::cast_slice(data)[r * nb..(r + 1) * nb], &q1)
                }
                GgmlType::Q5_0 => {
                    s.dot_q5_0(&bytemuck::cast_slice(data)[r * nb..(r + 1) * nb], &q0)
                }
                GgmlType::Q5_1 => {
                    s.dot_q5_1(&bytemuck::cast_slice(data)[r * nb..(r + 1) * nb], &q1)
                }
                GgmlType::Q8_0 => {
                    s.dot_q8_0(&bytemuck::cast_slice(data)[r * nb..(r + 1) * nb], &q0)
                }
                _ => unreachable!(),
            };
        }
    }
    y
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
    for (rows, cols) in [(203, 320), (5, 64)] {
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
                let want = naive(dtype, bytes, rows, cols, &x, n_tok);
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
                            let tol = if k.name == "scalar" {
                                0.0
                            } else {
                                1e-4 * (1.0 + e.abs())
                            };
                            assert!(
                                (g - e).abs() <= tol,
                                "{dtype} {} {rows}x{cols} n_tok={n_tok} threads={threads}: y[{i}] = {g}, naive {e}",
                                k.name
                            );
                        }
                    }
                }
            }
        }
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
    assert!(e.contains("sse9"), "{e}");
    kernels::select(Some("scalar")).unwrap();
}
