//! The runtime's error type. Every variant's `Display` is one line that names
//! the value at fault and, where there is one, the limit it broke.

use quant_formats::gguf::GgufError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be opened, mapped or parsed as GGUF.
    #[error("{0}")]
    File(String),
    #[error("{path}: {source}")]
    Gguf { path: String, source: GgufError },
    #[error("unsupported architecture '{0}' (supported: qwen, qwen2, qwen3, llama)")]
    UnknownArch(String),
    #[error("missing metadata key '{0}'")]
    MissingKey(String),
    #[error("metadata key '{key}': {msg}")]
    BadKey { key: String, msg: String },
    #[error("missing tensor '{0}'")]
    MissingTensor(String),
    #[error("tensor '{name}': expected shape {expected:?}, found {found:?}")]
    Shape {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("tensor '{name}': {msg}")]
    Tensor { name: String, msg: String },
    #[error("token id {id} is out of range (the model has {n_vocab} embeddings)")]
    TokenOutOfRange { id: u32, n_vocab: usize },
    #[error(
        "context overflow: {needed} positions needed, the context holds {n_ctx} (raise --ctx-size)"
    )]
    ContextOverflow { needed: usize, n_ctx: usize },
    #[error("logits at position {pos} are not finite (NaN/Inf); weights contain NaN/Inf? run with --check-tensors")]
    NonFinite { pos: usize },
    #[error("{0}")]
    Other(String),
}

impl ModelError {
    pub(crate) fn bad_key(key: &str, msg: impl Into<String>) -> Self {
        ModelError::BadKey {
            key: key.to_string(),
            msg: msg.into(),
        }
    }
}
