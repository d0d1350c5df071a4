//! The qbin/GGUF v3 file format and ggml block types, shared by `qwen-convert`
//! and the qwen runtime. See `FORMAT.md` for what we write.

pub mod block;
pub mod dtype;
pub mod gguf;
pub mod reference;

pub use dtype::GgmlType;
pub use reference::QuantError;
