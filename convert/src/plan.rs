//! Which tensor gets which ggml type, and the per-tensor error report.
//!
//! Policy (documented with numbers in quant-formats/FORMAT.md):
//! - 1-D tensors (norms, biases) stay f32: tiny, and the runtime adds them in f32.
//! - For 4/5-bit files (q4_0, q4_1, q5_0, q5_1) the output matrix - or
//!   token_embd when it also serves as output (tied) - is q8_0, as llama.cpp
//!   keeps the output at a higher-precision type: its error lands directly
//!   on the logits. `--output-type` overrides this choice.
//! - K-quant files follow llama.cpp's mixes (`llama_tensor_get_type_impl` in
//!   src/llama-quant.cpp) for a dense model: q4_K = llama-quantize's Q4_K_M (its
//!   alias "Q4_K"), q5_K = Q5_K_M ("Q5_K"), q6_K = Q6_K. The output matrix (token_embd
//!   when tied) is q6_K, or q8_0 when its rows are not whole 256-blocks; for Q4_K_M /
//!   Q5_K_M, attn_v (attn_qkv for Qwen-1) and ffn_down are q6_K in the layers
//!   `use_more_bits` picks (the first and last eighth, every third between).
//! - Every other 2-D tensor gets the requested type.
//! - A row length that is not a multiple of the block size falls back as
//!   llama.cpp's `tensor_type_fallback` does for K types (q4_K -> q5_0, q5_K ->
//!   q5_1, q6_K -> q8_0, q2_K / q3_K -> q4_0); then, or for any other type, to f16,
//!   or to f32 when a value does not fit in f16.

use crate::arch::{Role, TensorSpec};
use crate::{bail, Result};
use quant_formats::GgmlType;

/// Types `-t` accepts.
pub const OUTPUT_TYPES: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// Parse a `-t` / `--output-type` value: a ggml type name in any case, or llama.cpp's
/// mix names `q4_K_M` / `q5_K_M` (the same files as `q4_K` / `q5_K`).
pub fn parse_type(s: &str) -> Result<GgmlType> {
    let t = match s.to_ascii_lowercase().as_str() {
        "q4_k_m" => Some(GgmlType::Q4K),
        "q5_k_m" => Some(GgmlType::Q5K),
        _ => GgmlType::from_name(s),
    };
    match t {
        Some(t) if OUTPUT_TYPES.contains(&t) => Ok(t),
        _ => bail!(
            "unsupported type {s:?}; choose one of {} (q4_K = q4_K_M, q5_K = q5_K_M)",
            OUTPUT_TYPES.map(|t| t.name()).join(", ")
        ),
    }
}

/// `general.file_type`: llama.cpp's `enum llama_ftype` for a "mostly TYPE" file
/// (for K types: the mix `TypePolicy` writes).
pub fn llama_ftype(t: GgmlType) -> u32 {
    match t {
        GgmlType::F32 => 0,   // LLAMA_FTYPE_ALL_F32
        GgmlType::F16 => 1,   // LLAMA_FTYPE_MOSTLY_F16
        GgmlType::Q4_0 => 2,  // LLAMA_FTYPE_MOSTLY_Q4_0
        GgmlType::Q4_1 => 3,  // LLAMA_FTYPE_MOSTLY_Q4_1
        GgmlType::Q8_0 => 7,  // LLAMA_FTYPE_MOSTLY_Q8_0
        GgmlType::Q5_0 => 8,  // LLAMA_FTYPE_MOSTLY_Q5_0
        GgmlType::Q5_1 => 9,  // LLAMA_FTYPE_MOSTLY_Q5_1
        GgmlType::Q4K => 15,  // LLAMA_FTYPE_MOSTLY_Q4_K_M
        GgmlType::Q5K => 17,  // LLAMA_FTYPE_MOSTLY_Q5_K_M
        GgmlType::Q6K => 18,  // LLAMA_FTYPE_MOSTLY_Q6_K
        GgmlType::Bf16 => 32, // LLAMA_FTYPE_MOSTLY_BF16
        // Not offered by -t; "guessed" flag (1024) | all f32 keeps it honest.
        _ => 1024,
    }
}

/// llama.cpp's `use_more_bits(i_layer, n_layers)`: the layers the _M mixes give more bits.
pub fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    let (i, n) = (i_layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The layer number of a `blk.N.*` tensor name.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// llama.cpp's `tensor_type_fallback`: the type a K-quant falls back to when the row
/// length is not a multiple of 256 (other types, and fitting rows, are unchanged).
pub fn block_fallback(t: GgmlType, row_len: usize) -> GgmlType {
    if row_len % t.block_size() == 0 {
        return t;
    }
    match t {
        GgmlType::Q2K | GgmlType::Q3K => GgmlType::Q4_0,
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        other => other,
    }
}

/// The user's type choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypePolicy {
    /// `-t`
    pub base: GgmlType,
    /// `--output-type`: type of the output matrix (token_embd when tied).
    pub output: Option<GgmlType>,
}

impl TypePolicy {
    pub fn new(base: GgmlType, output: Option<GgmlType>) -> Self {
        TypePolicy { base, output }
    }

    /// Type of the matrix that produces the logits, whose rows hold `row_len` values.
    pub fn output_type(&self, row_len: usize) -> GgmlType {
        self.output.unwrap_or(match self.base {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => GgmlType::Q8_0,
            // llama.cpp: q8_0 when the rows are not whole blocks of the K type, else q6_K.
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => {
                if row_len % self.base.block_size() != 0 {
                    GgmlType::Q8_0
                } else {
                    GgmlType::Q6K
                }
            }
            other => other,
        })
    }

    /// Type for one tensor of a model with `n_layer` layers, before the block-size fallback.
    pub fn wanted(&self, spec: &TensorSpec, n_layer: usize) -> GgmlType {
        if spec.shape.len() < 2 {
            return GgmlType::F32;
        }
        let row_len = spec.shape.last().copied().unwrap_or(1);
        match spec.role {
            Role::Output | Role::Embedding { tied: true } => self.output_type(row_len),
            Role::Embedding { tied: false } => self.base,
            Role::Other => self.k_mix(&spec.gguf, n_layer),
        }
    }

    /// Q4_K_M / Q5_K_M: attn_v (attn_qkv) and ffn_down get q6_K in the
    /// `use_more_bits` layers; everything else (and every other base type) is `base`.
    fn k_mix(&self, name: &str, n_layer: usize) -> GgmlType {
        if !matches!(self.base, GgmlType::Q4K | GgmlType::Q5K) {
            return self.base;
        }
        let sensitive = name.contains("attn_v.weight")
            || name.contains("attn_qkv.weight")
            || name.contains("ffn_down");
        match layer_of(name) {
            Some(i) if sensitive && use_more_bits(i, n_layer) => GgmlType::Q6K,
            _ => self.base,
        }
    }
}

/// Final type: `wanted`, unless the row length is not a whole number of
/// blocks; then the K fallback ([`block_fallback`]) if its blocks fit, else f16, or
/// f32 when `max_abs` (the tensor's largest magnitude, only needed for such
/// tensors) exceeds f16's range.
pub fn choose(
    wanted: GgmlType,
    row_len: usize,
    max_abs: impl FnOnce() -> Result<f32>,
) -> Result<GgmlType> {
    let wanted = block_fallback(wanted, row_len);
    if row_len % wanted.block_size() == 0 {
        return Ok(wanted);
    }
    if max_abs()? > half::f16::MAX.to_f32() {
        Ok(GgmlType::F32)
    } else {
        Ok(GgmlType::F16)
    }
}

/// Quantization error of one tensor, accumulated chunk by chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ErrorStats {
    pub n: u64,
    /// sum of (x - dequant(quant(x)))^2
    pub sq_err: f64,
    /// sum of x^2
    pub sq_ref: f64,
    pub max_abs_err: f32,
}

impl ErrorStats {
    pub fn add(&mut self, x: &[f32], y: &[f32]) {
        for (&a, &b) in x.iter().zip(y) {
            let d = (a - b) as f64;
            self.sq_err += d * d;
            self.sq_ref += (a as f64) * (a as f64);
            self.max_abs_err = self.max_abs_err.max((a - b).abs());
        }
        self.n += x.len().min(y.len()) as u64;
    }
    pub fn rmse(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.sq_err / self.n as f64).sqrt()
        }
    }
    /// RMSE relative to the RMS of the tensor.
    pub fn rel_rmse(&self) -> f64 {
        if self.sq_ref == 0.0 {
            0.0
        } else {
            (self.sq_err / self.sq_ref).sqrt()
        }
    }
}

/// One line of the `-v` report.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorReport {
    pub name: String,
    /// ggml order.
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    pub n_bytes: u64,
    /// Present when the error was measured.
    pub error: Option<ErrorStats>,
}

impl std::fmt::Display for TensorReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self.dims.iter().map(u64::to_string).collect();
        write!(
            f,
            "{:<28} [{}] {:<5} {:>10} bytes",
            self.name,
            dims.join(", "),
            self.dtype.name(),
            self.n_bytes
        )?;
        if let Some(e) = &self.error {
            write!(
                f,
                "  rmse {:.3e} (rel {:.3e}, max {:.3e})",
                e.rmse(),
                e.rel_rmse(),
                e.max_abs_err
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shape: Vec<usize>, role: Role) -> TensorSpec {
        TensorSpec {
            gguf: "t".into(),
            hf: "t".into(),
            shape,
            role,
        }
    }

    #[test]
    fn policy() {
        let p = TypePolicy::new(GgmlType::Q4_0, None);
        assert_eq!(p.wanted(&spec(vec![64], Role::Other), 1), GgmlType::F32);
        assert_eq!(
            p.wanted(&spec(vec![64, 64], Role::Other), 1),
            GgmlType::Q4_0
        );
        assert_eq!(
            p.wanted(&spec(vec![64, 64], Role::Output), 1),
            GgmlType::Q8_0
        );
        assert_eq!(
            p.wanted(&spec(vec![64, 64], Role::Embedding { tied: true }), 1),
            GgmlType::Q8_0
        );
        assert_eq!(
            p.wanted(&spec(vec![64, 64], Role::Embedding { tied: false }), 1),
            GgmlType::Q4_0
        );
        let p = TypePolicy::new(GgmlType::Q4_0, Some(GgmlType::Q4_0));
        assert_eq!(
            p.wanted(&spec(vec![64, 64], Role::Output), 1),
            GgmlType::Q4_0
        );
        let p = TypePolicy::new(GgmlType::F16, None);
        assert_eq!(
            p.wanted(&spec(vec![64, 64], Role::Output), 1),
            GgmlType::F16
        );
    }

    #[test]
    fn fallback() {
        assert_eq!(
            choose(GgmlType::Q4_0, 64, || Ok(1.0)).unwrap(),
            GgmlType::Q4_0
        );
        assert_eq!(
            choose(GgmlType::Q4_0, 40, || Ok(1.0)).unwrap(),
            GgmlType::F16
        );
        assert_eq!(
            choose(GgmlType::Q4_0, 40, || Ok(1e6)).unwrap(),
            GgmlType::F32
        );
        assert_eq!(
            choose(GgmlType::F32, 40, || Ok(1e6)).unwrap(),
            GgmlType::F32
        );
    }

    #[test]
    fn ftypes() {
        assert_eq!(llama_ftype(GgmlType::Bf16), 32);
        assert_eq!(llama_ftype(GgmlType::Q8_0), 7);
        for t in OUTPUT_TYPES {
            assert_eq!(parse_type(t.name()).unwrap(), t);
        }
        assert!(parse_type("q2_K").unwrap_err().to_string().contains("q4_0"));
        assert_eq!(parse_type("Q4_K_M").unwrap(), GgmlType::Q4K);
        assert_eq!(parse_type("q5_k_m").unwrap(), GgmlType::Q5K);
        assert_eq!(parse_type("q6_k").unwrap(), GgmlType::Q6K);
        assert_eq!(llama_ftype(GgmlType::Q4K), 15);
        assert_eq!(llama_ftype(GgmlType::Q5K), 17);
        assert_eq!(llama_ftype(GgmlType::Q6K), 18);
    }

    fn named(name: &str, shape: Vec<usize>) -> TensorSpec {
        TensorSpec {
            gguf: name.into(),
            hf: name.into(),
            shape,
            role: Role::Other,
        }
    }

    /// llama.cpp's Q4_K_M on a 24-layer Qwen2 (layers from use_more_bits: 0-2, 21-23,
    /// and 5, 8, ..., 20), checked against llama-quantize's choices for
    /// Qwen2.5-0.5B (row lengths 896 and 4864).
    #[test]
    fn k_mixes() {
        let more: Vec<usize> = (0..24).filter(|&i| use_more_bits(i, 24)).collect();
        assert_eq!(more, [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]);
        let p = TypePolicy::new(GgmlType::Q4K, None);
        let t = |name: &str, row: usize| {
            let s = named(name, vec![64, row]);
            choose(p.wanted(&s, 24), row, || Ok(1.0)).unwrap()
        };
        assert_eq!(t("blk.0.attn_v.weight", 896), GgmlType::Q8_0);
        assert_eq!(t("blk.3.attn_v.weight", 896), GgmlType::Q5_0);
        assert_eq!(t("blk.5.ffn_down.weight", 4864), GgmlType::Q6K);
        assert_eq!(t("blk.6.ffn_down.weight", 4864), GgmlType::Q4K);
        assert_eq!(t("blk.6.ffn_up.weight", 896), GgmlType::Q5_0);
        assert_eq!(t("blk.6.attn_qkv.weight", 1024), GgmlType::Q4K);
        assert_eq!(t("blk.8.attn_qkv.weight", 1024), GgmlType::Q6K);
        let out = |p: TypePolicy, row: usize| {
            p.wanted(&spec(vec![64, row], Role::Embedding { tied: true }), 24)
        };
        assert_eq!(out(p, 896), GgmlType::Q8_0);
        assert_eq!(out(p, 1024), GgmlType::Q6K);
        assert_eq!(
            out(TypePolicy::new(GgmlType::Q4K, Some(GgmlType::Q4K)), 1024),
            GgmlType::Q4K
        );
        let p = TypePolicy::new(GgmlType::Q5K, None);
        assert_eq!(
            p.wanted(&named("blk.0.ffn_down.weight", vec![64, 512]), 24),
            GgmlType::Q6K
        );
        assert_eq!(
            choose(
                p.wanted(&named("blk.4.attn_q.weight", vec![64, 896]), 24),
                896,
                || Ok(1.0)
            )
            .unwrap(),
            GgmlType::Q5_1
        );
        let p = TypePolicy::new(GgmlType::Q6K, None);
        assert_eq!(
            p.wanted(&named("blk.4.attn_v.weight", vec![64, 512]), 24),
            GgmlType::Q6K
        );
        assert_eq!(
            choose(GgmlType::Q6K, 896, || Ok(1.0)).unwrap(),
            GgmlType::Q8_0
        );
        // Not even 32-blocks: f16 as llama.cpp (f32 when out of f16's range).
        assert_eq!(
            choose(GgmlType::Q4K, 40, || Ok(1.0)).unwrap(),
            GgmlType::F16
        );
        assert_eq!(
            choose(GgmlType::Q4K, 40, || Ok(1e6)).unwrap(),
            GgmlType::F32
        );
    }
}
