//! qwen-convert: Hugging Face Qwen-1 / Qwen2 / Qwen3 checkpoints to one GGUF v3
//! file (llama.cpp conventions, see quant-formats/FORMAT.md).
//!
//! - [`hf`]: config.json and safetensors (single or sharded), memory-mapped
//! - [`arch`]: per-architecture hyperparameters and HF -> GGUF tensor tables
//! - [`tokenizer`]: tokenizer.json / qwen.tiktoken, chat template, generation defaults
//! - [`plan`]: the type policy and the per-tensor error report
//! - [`convert`]: the streaming, atomic conversion pipeline

// rust-version is 1.80: `is_multiple_of` / `Option::is_none_or` are newer.
#![allow(clippy::manual_is_multiple_of, clippy::unnecessary_map_or)]

pub mod arch;
pub mod convert;
pub mod error;
pub mod hf;
pub mod meta;
pub mod plan;
pub mod tokenizer;

pub use error::{Error, Result};
