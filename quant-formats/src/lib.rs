//! The qbin/GGUF v3 file format and ggml block types, shared by `qwen-convert`
//! and the qwen runtime. See `FORMAT.md` for what we write.

// `n % k != 0` instead of `is_multiple_of` (Rust 1.87): our MSRV is 1.80.
#![allow(clippy::manual_is_multiple_of)]

pub mod block;
pub mod dtype;
pub mod gguf;
pub mod reference;

pub use dtype::GgmlType;
pub use reference::QuantError;
