//! Hyperparameters read from GGUF metadata (llama.cpp's key names, see
//! `llama-arch.cpp`), each capped and cross-checked before anything is
//! allocated from it.

use quant_formats::gguf::Gguf;

use crate::error::ModelError;
use crate::model::{ArchSpec, RopeStyle};

/// Architectures we run. The per-arch differences live in `model/<arch>.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Qwen,
    Qwen2,
    Qwen3,
    Llama,
}

impl Arch {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "qwen" => Some(Arch::Qwen),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            "llama" => Some(Arch::Llama),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        self.spec().name
    }
    pub fn spec(self) -> &'static ArchSpec {
        match self {
            Arch::Qwen => &crate::model::qwen::SPEC,
            Arch::Qwen2 => &crate::model::qwen2::SPEC,
            Arch::Qwen3 => &crate::model::qwen3::SPEC,
            Arch::Llama => &crate::model::llama::SPEC,
        }
    }
}

// Caps on values read from the file (shared with the converter, which refuses the same).
pub use quant_formats::limits::{
    MAX_CTX, MAX_EMBD, MAX_FF, MAX_HEADS, MAX_HEAD_DIM, MAX_LAYERS, MAX_VOCAB,
};

#[derive(Clone, Debug)]
pub struct Config {
    pub arch: Arch,
    /// general.name, when present.
    pub name: Option<String>,
    /// Rows of the output matrix (may exceed the tokenizer's entries).
    pub n_vocab: usize,
    /// Rows of token_embd (the ids we can embed); equals n_vocab in our files.
    pub n_vocab_embd: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Per-head size of q, k and v.
    pub head_dim: usize,
    pub n_ff: usize,
    /// Training context (ARCH.context_length).
    pub n_ctx_train: usize,
    /// Leading dimensions of each head that are rotated.
    pub rope_dim: usize,
    pub rope_base: f32,
    /// Linear RoPE scaling: positions are multiplied by this (1 = none).
    pub rope_freq_scale: f32,
    pub rope_style: RopeStyle,
    pub norm_eps: f32,
    /// Qwen-1: dynamic NTK RoPE and logn attention past `qwen_seq_length`.
    pub use_dynamic_ntk: bool,
    pub use_logn_attn: bool,
    pub qwen_seq_length: usize,
}

fn get_u32(g: &Gguf, key: &str) -> Result<Option<u32>, ModelError> {
    g.get_u32(key)
        .map_err(|e| ModelError::bad_key(key, e.to_string()))
}

fn get_f32(g: &Gguf, key: &str) -> Result<Option<f32>, ModelError> {
    g.get_f32(key)
        .map_err(|e| ModelError::bad_key(key, e.to_string()))
}

fn get_bool(g: &Gguf, key: &str) -> Result<Option<bool>, ModelError> {
    g.get_bool(key)
        .map_err(|e| ModelError::bad_key(key, e.to_string()))
}

fn get_str(g: &Gguf, key: &str) -> Result<Option<String>, ModelError> {
    g.get_str(key)
        .map(|o| o.map(|s| s.to_string()))
        .map_err(|e| ModelError::bad_key(key, e.to_string()))
}

/// A required count in 1..=max.
fn count(g: &Gguf, key: &str, max: usize) -> Result<usize, ModelError> {
    let v = get_u32(g, key)?.ok_or_else(|| ModelError::MissingKey(key.to_string()))?;
    check_count(key, v as usize, max)
}

fn check_count(key: &str, v: usize, max: usize) -> Result<usize, ModelError> {
    if v == 0 || v > max {
        return Err(ModelError::bad_key(
            key,
            format!("value {v} is outside 1..={max}"),
        ));
    }
    Ok(v)
}

/// Dims of a tensor in ggml order, or an error naming it.
fn tensor_dims(g: &Gguf, name: &str) -> Option<Vec<u64>> {
    g.tensor(name).map(|t| t.dims.clone())
}

impl Config {
    /// Reads and validates the hyperparameters. Tensor shapes are checked
    /// against the result in `Weights::load`.
    pub fn from_gguf(g: &Gguf) -> Result<Self, ModelError> {
        let arch_name = get_str(g, "general.architecture")?
            .ok_or_else(|| ModelError::MissingKey("general.architecture".into()))?;
        let arch = Arch::from_name(&arch_name).ok_or(ModelError::UnknownArch(arch_name.clone()))?;
        let spec = arch.spec();
        let a = arch_name.as_str();
        let k = |s: &str| format!("{a}.{s}");

        let n_embd = count(g, &k("embedding_length"), MAX_EMBD)?;
        let n_layer = count(g, &k("block_count"), MAX_LAYERS)?;
        let n_ff_file = count(g, &k("feed_forward_length"), MAX_FF)?;
        // Qwen-1: llama.cpp's converter stores the HF `intermediate_size`, twice
        // the width of w1/w2 (QWenMLP halves it). Our own files may store either;
        // the ffn_up tensor decides which, and Weights checks every layer.
        let n_ff = if spec.ffn_len_may_be_doubled
            && n_ff_file % 2 == 0
            && tensor_dims(g, "blk.0.ffn_up.weight").and_then(|d| d.get(1).copied())
                == Some(n_ff_file as u64 / 2)
        {
            n_ff_file / 2
        } else {
            n_ff_file
        };
        let n_head = count(g, &k("attention.head_count"), MAX_HEADS)?;
        let n_head_kv = match get_u32(g, &k("attention.head_count_kv"))? {
            Some(v) => check_count(&k("attention.head_count_kv"), v as usize, MAX_HEADS)?,
            None => n_head,
        };
        if n_head % n_head_kv != 0 {
            return Err(ModelError::bad_key(
                &k("attention.head_count_kv"),
                format!("value {n_head_kv} does not divide head_count {n_head}"),
            ));
        }
        let n_ctx_train = count(g, &k("context_length"), MAX_CTX)?;

        // Head size: key_length when given (Qwen3), else n_embd / n_head.
        let head_dim = match get_u32(g, &k("attention.key_length"))? {
            Some(v) => check_count(&k("attention.key_length"), v as usize, MAX_HEAD_DIM)?,
            None => {
                if n_embd % n_head != 0 {
                    return Err(ModelError::bad_key(
                        &k("attention.head_count"),
                        format!("value {n_head} does not divide embedding_length {n_embd} and attention.key_length is absent"),
                    ));
                }
                check_count(&k("embedding_length"), n_embd / n_head, MAX_HEAD_DIM)?
            }
        };
        if let Some(v) = get_u32(g, &k("attention.value_length"))? {
            if v as usize != head_dim {
                return Err(ModelError::bad_key(
                    &k("attention.value_length"),
                    format!("value {v} differs from the key length {head_dim}; not supported"),
                ));
            }
        }
        let rope_dim = match get_u32(g, &k("rope.dimension_count"))? {
            Some(v) => v as usize,
            None => head_dim,
        };
        if rope_dim == 0 || rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(ModelError::bad_key(
                &k("rope.dimension_count"),
                format!("value {rope_dim} must be even and in 2..={head_dim} (the head size)"),
            ));
        }
        let rope_base = get_f32(g, &k("rope.freq_base"))?.unwrap_or(10000.0);
        if !(rope_base.is_finite() && rope_base > 1.0) {
            return Err(ModelError::bad_key(
                &k("rope.freq_base"),
                format!("value {rope_base} must be finite and > 1"),
            ));
        }
        let rope_freq_scale = rope_scaling(g, a)?;
        let norm_eps = get_f32(g, &k("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| ModelError::MissingKey(k("attention.layer_norm_rms_epsilon")))?;
        if !(norm_eps.is_finite() && norm_eps > 0.0 && norm_eps < 1.0) {
            return Err(ModelError::bad_key(
                &k("attention.layer_norm_rms_epsilon"),
                format!("value {norm_eps} must be in (0, 1)"),
            ));
        }

        // Vocabulary sizes come from the tensor table; Weights checks the rest.
        let embd = tensor_dims(g, "token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
        let n_vocab_embd = vocab_rows("token_embd.weight", &embd, n_embd)?;
        let n_vocab = match tensor_dims(g, "output.weight") {
            Some(d) => vocab_rows("output.weight", &d, n_embd)?,
            None => n_vocab_embd,
        };

        let (use_dynamic_ntk, use_logn_attn, qwen_seq_length) = if spec.qwen1_long_context {
            let ntk = get_bool(g, "qwen_rs.qwen.use_dynamic_ntk")?.unwrap_or(false);
            let logn = get_bool(g, "qwen_rs.qwen.use_logn_attn")?.unwrap_or(false);
            let seq = match get_u32(g, "qwen_rs.qwen.seq_length")? {
                Some(v) => check_count("qwen_rs.qwen.seq_length", v as usize, MAX_CTX)?,
                None => n_ctx_train,
            };
            // base * alpha^(d / (d - 2)) needs d > 2.
            if ntk && rope_dim <= 2 {
                return Err(ModelError::bad_key(
                    &k("rope.dimension_count"),
                    format!("value {rope_dim} must be > 2 with dynamic NTK"),
                ));
            }
            // log(seq) is a divisor in logn attention.
            if logn && seq < 2 {
                return Err(ModelError::bad_key(
                    "qwen_rs.qwen.seq_length",
                    format!("value {seq} must be >= 2 with logn attention"),
                ));
            }
            (ntk, logn, seq)
        } else {
            (false, false, n_ctx_train)
        };

        Ok(Config {
            arch,
            name: get_str(g, "general.name")?,
            n_vocab,
            n_vocab_embd,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_ctx_train,
            rope_dim,
            rope_base,
            rope_freq_scale,
            rope_style: spec.rope,
            norm_eps,
            use_dynamic_ntk,
            use_logn_attn,
            qwen_seq_length,
        })
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// `[n_embd, rows]` with rows in 1..=MAX_VOCAB.
fn vocab_rows(name: &str, dims: &[u64], n_embd: usize) -> Result<usize, ModelError> {
    if dims.len() != 2 || dims[0] != n_embd as u64 || dims[1] == 0 || dims[1] > MAX_VOCAB as u64 {
        let found_rows = dims.get(1).copied().unwrap_or(0);
        return Err(ModelError::Shape {
            name: name.to_string(),
            expected: vec![n_embd as u64, found_rows.clamp(1, MAX_VOCAB as u64)],
            found: dims.to_vec(),
        });
    }
    Ok(dims[1] as usize)
}

/// ARCH.rope.scaling.type: none or linear (positions / factor); anything else
/// is refused rather than silently ignored.
fn rope_scaling(g: &Gguf, a: &str) -> Result<f32, ModelError> {
    let type_key = format!("{a}.rope.scaling.type");
    let factor_key = format!("{a}.rope.scaling.factor");
    let kind = get_str(g, &type_key)?;
    match kind.as_deref() {
        None | Some("none") => Ok(1.0),
        Some("linear") => {
            let f = get_f32(g, &factor_key)?.unwrap_or(1.0);
            if !(f.is_finite() && (1.0..=1024.0).contains(&f)) {
                return Err(ModelError::bad_key(
                    &factor_key,
                    format!("value {f} must be in 1..=1024"),
                ));
            }
            Ok(1.0 / f)
        }
        Some(other) => Err(ModelError::bad_key(
            &type_key,
            format!("rope scaling '{other}' is not supported (only none, linear)"),
        )),
    }
}
