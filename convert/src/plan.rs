//! Which tensor gets which ggml type, and the per-tensor error report.
//!
//! Policy (documented with numbers in quant-formats/FORMAT.md):
//! - 1-D tensors (norms, biases) stay f32: tiny, and the runtime adds them in f32.
//! - For 4/5-bit files (q4_0, q4_1, q5_0, q5_1) the output matrix - or
//!   token_embd when it also serves as output (tied) - is q8_0, as llama.cpp
//!   keeps the output at a higher-precision type: its error lands directly
//!   on the logits. `--output-type` overrides this choice.
//! - Every other 2-D tensor gets the requested type.
//! - A row length that is not a multiple of the block size falls back to f16,
//!   or to f32 when a value does not fit in f16.

use crate::arch::{Role, TensorSpec};
use crate::{bail, Result};
use quant_formats::GgmlType;

/// Types `-t` accepts.
pub const OUTPUT_TYPES: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
];

/// Parse a `-t` / `--output-type` value.
pub fn parse_type(s: &str) -> Result<GgmlType> {
    match GgmlType::from_name(s) {
        Some(t) if OUTPUT_TYPES.contains(&t) => Ok(t),
        _ => bail!(
            "unsupported type {s:?}; choose one of {}",
            OUTPUT_TYPES.map(|t| t.name()).join(", ")
        ),
    }
}

/// `general.file_type`: llama.cpp's `enum llama_ftype` for a "mostly TYPE" file.
pub fn llama_ftype(t: GgmlType) -> u32 {
    match t {
        GgmlType::F32 => 0,   // LLAMA_FTYPE_ALL_F32
        GgmlType::F16 => 1,   // LLAMA_FTYPE_MOSTLY_F16
        GgmlType::Q4_0 => 2,  // LLAMA_FTYPE_MOSTLY_Q4_0
        GgmlType::Q4_1 => 3,  // LLAMA_FTYPE_MOSTLY_Q4_1
        GgmlType::Q8_0 => 7,  // LLAMA_FTYPE_MOSTLY_Q8_0
        GgmlType::Q5_0 => 8,  // LLAMA_FTYPE_MOSTLY_Q5_0
        GgmlType::Q5_1 => 9,  // LLAMA_FTYPE_MOSTLY_Q5_1
        GgmlType::Bf16 => 32, // LLAMA_FTYPE_MOSTLY_BF16
        // Not offered by -t; "guessed" flag (1024) | all f32 keeps it honest.
        _ => 1024,
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

    /// Type of the matrix that produces the logits.
    pub fn output_type(&self) -> GgmlType {
        self.output.unwrap_or(match self.base {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => GgmlType::Q8_0,
            other => other,
        })
    }

    /// Type for one tensor before the block-size fallback.
    pub fn wanted(&self, spec: &TensorSpec) -> GgmlType {
        if spec.shape.len() < 2 {
            return GgmlType::F32;
        }
        match spec.role {
            Role::Output | Role::Embedding { tied: true } => self.output_type(),
            Role::Embedding { tied: false } | Role::Other => self.base,
        }
    }
}

/// Final type: `wanted`, unless the row length is not a whole number of
/// blocks; then f16, or f32 when `max_abs` (the tensor's largest magnitude,
/// only needed for such tensors) exceeds f16's range.
pub fn choose(
    wanted: GgmlType,
    row_len: usize,
    max_abs: impl FnOnce() -> Result<f32>,
) -> Result<GgmlType> {
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
        assert_eq!(p.wanted(&spec(vec![64], Role::Other)), GgmlType::F32);
        assert_eq!(p.wanted(&spec(vec![64, 64], Role::Other)), GgmlType::Q4_0);
        assert_eq!(p.wanted(&spec(vec![64, 64], Role::Output)), GgmlType::Q8_0);
        assert_eq!(
            p.wanted(&spec(vec![64, 64], Role::Embedding { tied: true })),
            GgmlType::Q8_0
        );
        assert_eq!(
            p.wanted(&spec(vec![64, 64], Role::Embedding { tied: false })),
            GgmlType::Q4_0
        );
        let p = TypePolicy::new(GgmlType::Q4_0, Some(GgmlType::Q4_0));
        assert_eq!(p.wanted(&spec(vec![64, 64], Role::Output)), GgmlType::Q4_0);
        let p = TypePolicy::new(GgmlType::F16, None);
        assert_eq!(p.wanted(&spec(vec![64, 64], Role::Output)), GgmlType::F16);
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
        assert!(parse_type("q6_K").unwrap_err().to_string().contains("q4_0"));
    }
}
