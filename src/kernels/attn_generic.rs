//! The scalar attention kernels: the spec the SIMD levels are tested against.
//! Plain loops in element order; f16 is widened exactly (`half::f16::to_f32`) and
//! rounded to nearest even on the way in (`half::f16::from_f32`).

use super::AttnKernels;
use half::f16;

/// The scalar table.
pub static SCALAR: AttnKernels = AttnKernels {
    name: "scalar",
    scores_f32,
    scores_f16,
    accum_f32,
    accum_f16,
    exp_sum,
    to_f16,
    to_f32,
};

/// Checks `k: [out.len(), hd]` for `q: [hd]`; panics (a bug) otherwise.
pub(crate) fn check_scores(q: usize, k: usize, out: usize) {
    assert!(
        q > 0 && k == out * q,
        "scores: {k} key values for {out} keys of head_dim {q}"
    );
}

/// Checks `v: [p.len(), hd]` for `out: [hd]`; panics (a bug) otherwise.
pub(crate) fn check_accum(p: usize, v: usize, out: usize) {
    assert!(
        out > 0 && v == p * out,
        "accum: {v} values for {p} weights of head_dim {out}"
    );
}

pub fn scores_f32(q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) -> f32 {
    check_scores(q.len(), k.len(), out.len());
    for (o, kj) in out.iter_mut().zip(k.chunks_exact(q.len())) {
        let dot: f32 = q.iter().zip(kj).map(|(a, b)| a * b).sum();
        *o = dot * scale;
    }
    max_of(out)
}

pub fn scores_f16(q: &[f32], k: &[f16], scale: f32, out: &mut [f32]) -> f32 {
    check_scores(q.len(), k.len(), out.len());
    for (o, kj) in out.iter_mut().zip(k.chunks_exact(q.len())) {
        let dot: f32 = q.iter().zip(kj).map(|(a, b)| a * b.to_f32()).sum();
        *o = dot * scale;
    }
    max_of(out)
}

/// The largest value, NaNs skipped (-inf for none).
pub(crate) fn max_of(x: &[f32]) -> f32 {
    x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

pub fn accum_f32(p: &[f32], v: &[f32], out: &mut [f32]) {
    check_accum(p.len(), v.len(), out.len());
    for (&pj, vj) in p.iter().zip(v.chunks_exact(out.len())) {
        for (o, &x) in out.iter_mut().zip(vj) {
            *o += pj * x;
        }
    }
}

pub fn accum_f16(p: &[f32], v: &[f16], out: &mut [f32]) {
    check_accum(p.len(), v.len(), out.len());
    for (&pj, vj) in p.iter().zip(v.chunks_exact(out.len())) {
        for (o, &x) in out.iter_mut().zip(vj) {
            *o += pj * x.to_f32();
        }
    }
}

pub fn exp_sum(s: &mut [f32], max: f32) -> f32 {
    let mut sum = 0.0;
    for x in s.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    sum
}

pub fn to_f16(x: &[f32], y: &mut [f16]) {
    assert_eq!(
        x.len(),
        y.len(),
        "to_f16: {} values into {}",
        x.len(),
        y.len()
    );
    for (o, &v) in y.iter_mut().zip(x) {
        *o = f16::from_f32(v);
    }
}

pub fn to_f32(x: &[f16], y: &mut [f32]) {
    assert_eq!(
        x.len(),
        y.len(),
        "to_f32: {} values into {}",
        x.len(),
        y.len()
    );
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v.to_f32();
    }
}
