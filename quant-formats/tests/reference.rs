//! Round trips of every block type against ggml's error budgets
//! (llama.cpp `tests/test-quantize-fns.cpp`), plus length errors.

use quant_formats::reference::{dequantize, quantize, QuantError};
use quant_formats::GgmlType;

/// test-quantize-fns.cpp `generate_data`: `0.1 + 2 cos(i + offset)`.
fn generate_data(offset: f32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| 0.1 + 2.0 * (i as f32 + offset).cos())
        .collect()
}

/// test-quantize-fns.cpp `array_rmse`: note it is `sqrt(sum) / n`, not a true RMSE.
fn ggml_rmse(a: &[f32], b: &[f32]) -> f32 {
    let sum: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| ((x - y) as f64).powi(2))
        .sum();
    (sum.sqrt() as f32) / a.len() as f32
}

fn true_rmse(a: &[f32], b: &[f32]) -> f32 {
    let sum: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| ((x - y) as f64).powi(2))
        .sum();
    (sum / a.len() as f64).sqrt() as f32
}

/// (type, ggml's MAX_QUANTIZATION_TOTAL_ERROR for it, our bound on the true RMSE
/// for amplitude-2 data; the latter is a loose sanity bound, not from ggml).
const BUDGETS: &[(GgmlType, f32, f32)] = &[
    (GgmlType::F32, 0.002, 0.0),
    (GgmlType::F16, 0.002, 0.001),
    (GgmlType::Bf16, 0.002, 0.01),
    (GgmlType::Q4_0, 0.002, 0.12),
    (GgmlType::Q4_1, 0.002, 0.08),
    (GgmlType::Q5_0, 0.002, 0.06),
    (GgmlType::Q5_1, 0.002, 0.04),
    (GgmlType::Q8_0, 0.002, 0.01),
    (GgmlType::Q8_1, 0.002, 0.01),
    (GgmlType::Q2K, 0.0075, 0.4),
    (GgmlType::Q3K, 0.0040, 0.2),
    (GgmlType::Q4K, 0.002, 0.08),
    (GgmlType::Q5K, 0.002, 0.04),
    (GgmlType::Q6K, 0.002, 0.02),
    (GgmlType::Q8K, 0.002, 0.01),
];

#[test]
fn round_trip_within_ggml_budget() {
    let n = 32 * 128; // test-quantize-fns.cpp test_size
    let x = generate_data(0.0, n);
    for &(t, ggml_budget, rmse_budget) in BUDGETS {
        let q = quantize(t, &x).unwrap();
        assert_eq!(q.len(), n / t.block_size() * t.type_size(), "{t}");
        let mut y = vec![0f32; n];
        dequantize(t, &q, &mut y).unwrap();
        let e = ggml_rmse(&x, &y);
        let r = true_rmse(&x, &y);
        eprintln!("{t:>5}: ggml error {e:.6} (budget {ggml_budget}), rmse {r:.5}");
        assert!(e < ggml_budget, "{t}: ggml error {e} >= {ggml_budget}");
        assert!(r <= rmse_budget, "{t}: rmse {r} > {rmse_budget}");
    }
}

#[test]
fn dequantize_accepts_unaligned_bytes() {
    let x = generate_data(1.0, 512);
    for &(t, _, _) in BUDGETS {
        let q = quantize(t, &x).unwrap();
        let mut shifted = vec![0u8; q.len() + 1];
        shifted[1..].copy_from_slice(&q);
        let (mut a, mut b) = (vec![0f32; 512], vec![0f32; 512]);
        dequantize(t, &q, &mut a).unwrap();
        dequantize(t, &shifted[1..], &mut b).unwrap();
        assert_eq!(a, b, "{t}");
    }
}

#[test]
fn zeros_stay_zero() {
    let x = vec![0f32; 256];
    for &(t, _, _) in BUDGETS {
        let q = quantize(t, &x).unwrap();
        let mut y = vec![1f32; 256];
        dequantize(t, &q, &mut y).unwrap();
        assert!(y.iter().all(|&v| v == 0.0), "{t}: {y:?}");
    }
}

#[test]
fn odd_lengths_are_errors() {
    let x = vec![1f32; 33];
    let e = quantize(GgmlType::Q4_0, &x).unwrap_err();
    assert_eq!(
        e.to_string(),
        "q4_0: 33 values is not a multiple of the block size 32"
    );
    let e = quantize(GgmlType::Q6K, &[0.0; 288]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "q6_K: 288 values is not a multiple of the block size 256"
    );

    let mut out = vec![0f32; 64];
    let e = dequantize(GgmlType::Q8_0, &[0u8; 67], &mut out).unwrap_err();
    assert_eq!(e.to_string(), "q8_0: 64 values take 68 bytes, got 67 bytes");
    let mut out = vec![0f32; 31];
    let e = dequantize(GgmlType::Q8_0, &[0u8; 34], &mut out).unwrap_err();
    assert!(matches!(e, QuantError::Length { len: 31, .. }), "{e}");
}

#[test]
fn unsupported_and_non_finite_are_errors() {
    let e = quantize(GgmlType::Iq4Nl, &[0.0; 32]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("quantizing to iq4_nl is not supported"),
        "{e}"
    );
    let mut x = vec![0.5f32; 64];
    x[40] = f32::NAN;
    let e = quantize(GgmlType::Q4_0, &x).unwrap_err();
    assert_eq!(
        e.to_string(),
        "q4_0: value NaN at index 40 is not finite; refusing to quantize it"
    );
    // float types pass non-finite values through, as ggml does
    let q = quantize(GgmlType::F16, &x).unwrap();
    let mut y = vec![0f32; 64];
    dequantize(GgmlType::F16, &q, &mut y).unwrap();
    assert!(y[40].is_nan());
}

#[test]
fn q8_1_sum_and_q8_k_bsums() {
    use quant_formats::block::{BlockQ8K, BlockQ8_1};
    use quant_formats::reference::{quantize_row_q8_1, quantize_row_q8_k};
    let x = generate_data(2.0, 256);
    let mut b = [BlockQ8_1::default(); 8];
    quantize_row_q8_1(&x, &mut b);
    for blk in &b {
        let sum: i32 = blk.qs.iter().map(|&q| q as i32).sum();
        // ggml: s = fp16(sum * d) with the f32 d before rounding to f16
        let d = blk.d.to_f32();
        assert!((blk.s.to_f32() - sum as f32 * d).abs() <= 1e-3 * (1.0 + (sum as f32 * d).abs()));
    }
    let mut k = [BlockQ8K::default()];
    quantize_row_q8_k(&x, &mut k);
    for (i, s) in k[0].bsums.iter().enumerate() {
        let sum: i16 = k[0].qs[16 * i..16 * i + 16].iter().map(|&q| q as i16).sum();
        assert_eq!(*s, sum);
    }
    assert!(k[0].qs.iter().any(|&q| q.unsigned_abs() == 127));
}

#[test]
fn quantize_into_checks_the_buffer() {
    use quant_formats::reference::quantize_into;
    let x = generate_data(0.0, 64);
    let mut out = vec![0u8; 35];
    let e = quantize_into(GgmlType::Q4_0, &x, &mut out).unwrap_err();
    assert_eq!(e.to_string(), "q4_0: 64 values take 36 bytes, got 35 bytes");
    let mut out = vec![0u8; 36];
    quantize_into(GgmlType::Q4_0, &x, &mut out).unwrap();
    assert_eq!(out, quantize(GgmlType::Q4_0, &x).unwrap());
}

/// Blocks are independent: quantizing a tensor equals quantizing each block.
#[test]
fn blocks_are_independent() {
    let x = generate_data(3.0, 1024);
    for &(t, _, _) in BUDGETS {
        let whole = quantize(t, &x).unwrap();
        let bs = t.block_size();
        let parts: Vec<u8> = x.chunks(bs).flat_map(|c| quantize(t, c).unwrap()).collect();
        assert_eq!(whole, parts, "{t}");
    }
}
