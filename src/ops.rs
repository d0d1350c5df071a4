//! The small non-matmul operations of the forward pass, plain and readable.
//! Each works on one row; the model loops over tokens and heads.

/// y = x / sqrt(mean(x^2) + eps) * w, as transformers' RMSNorm (sum in f32,
/// like torch's float32 `pow(2).mean`; we sum in f64 for a stabler reference).
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    debug_assert!(out.len() == x.len() && x.len() == w.len());
    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let scale = (1.0 / (ss / x.len() as f64 + eps as f64).sqrt()) as f32;
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// RMSNorm in place.
pub fn rmsnorm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    debug_assert_eq!(x.len(), w.len());
    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let scale = (1.0 / (ss / x.len() as f64 + eps as f64).sqrt()) as f32;
    for (v, &g) in x.iter_mut().zip(w) {
        *v = *v * scale * g;
    }
}

/// Which dimensions form a rotated pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// GPT-NeoX / HF `rotate_half`: pairs (i, i + rope_dim/2). All Qwen models.
    Neox,
    /// Original RoPE / llama.cpp's "normal" mode: pairs (2i, 2i+1). Llama files
    /// whose q/k rows llama.cpp's converter permuted.
    Norm,
}

/// Rotates the first `cos.len() * 2` dimensions of one head in place; the rest
/// of the head passes through (Qwen-1's rotary_pct < 1).
/// `cos`, `sin`: [rope_dim/2] for this position.
pub fn rope(head: &mut [f32], cos: &[f32], sin: &[f32], style: RopeStyle) {
    let half = cos.len();
    debug_assert!(2 * half <= head.len() && sin.len() == half);
    match style {
        RopeStyle::Neox => {
            for i in 0..half {
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * cos[i] - b * sin[i];
                head[i + half] = b * cos[i] + a * sin[i];
            }
        }
        RopeStyle::Norm => {
            for i in 0..half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * cos[i] - b * sin[i];
                head[2 * i + 1] = b * cos[i] + a * sin[i];
            }
        }
    }
}

/// RoPE inverse frequencies: inv_freq[i] = 1 / base^(2i / rope_dim), rounded
/// to f32 as transformers computes them. `out`: [rope_dim/2].
pub fn rope_inv_freq(out: &mut [f32], base: f64, rope_dim: usize) {
    for (i, f) in out.iter_mut().enumerate() {
        let exp = (2 * i) as f32 / rope_dim as f32;
        *f = (1.0 / base.powf(exp as f64)) as f32;
    }
}

/// cos/sin of angle pos * inv_freq[i] (the product rounded to f32 as torch does).
pub fn rope_cos_sin(cos: &mut [f32], sin: &mut [f32], inv_freq: &[f32], pos: f32) {
    for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(inv_freq) {
        let theta = pos * f;
        *c = theta.cos();
        *s = theta.sin();
    }
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// gate[i] = silu(gate[i]) * up[i] (SwiGLU).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

/// x[i] += y[i].
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Adds a bias of length `b.len()` to every row of `x` ([n, b.len()]).
pub fn add_bias_rows(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_exact_mut(b.len()) {
        add_inplace(row, b);
    }
}

/// Index of the largest value (first one on ties); 0 for an empty slice.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmsnorm_unit_rows() {
        let x = [3.0f32, 4.0];
        let mut y = [0f32; 2];
        rmsnorm(&mut y, &x, &[1.0, 2.0], 0.0);
        let r = (12.5f32).sqrt();
        assert!((y[0] - 3.0 / r).abs() < 1e-6 && (y[1] - 8.0 / r).abs() < 1e-6);
    }

    #[test]
    fn rope_styles_rotate_their_pairs() {
        // One pair rotated by 90 degrees.
        let (c, s) = ([0.0f32], [1.0f32]);
        let mut h = [1.0f32, 2.0, 7.0];
        rope(&mut h, &c, &s, RopeStyle::Neox);
        assert_eq!(h, [-2.0, 1.0, 7.0]);
        let mut h = [1.0f32, 2.0, 3.0, 4.0];
        rope(&mut h, &[0.0, 1.0], &[1.0, 0.0], RopeStyle::Norm);
        assert_eq!(h, [-2.0, 1.0, 3.0, 4.0]);
        let mut h = [1.0f32, 2.0, 3.0, 4.0];
        rope(&mut h, &[0.0, 1.0], &[1.0, 0.0], RopeStyle::Neox);
        assert_eq!(h, [-3.0, 2.0, 1.0, 4.0]);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = [1.0f32, 2.0, 3.0, -1e30];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(x[3], 0.0);
        assert_eq!(argmax(&x), 2);
    }
}
