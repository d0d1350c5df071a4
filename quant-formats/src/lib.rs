//! The qbin/GGUF v3 file format and ggml block types, shared by `qwen-convert`
//! and the qwen runtime. See `FORMAT.md` for what we write.
//!
//! - [`block`]: `#[repr(C)]` ggml blocks (`BlockQ4_0` … `BlockQ8_1`, `BlockQ2K` …
//!   `BlockQ8K`), `bytemuck::Pod`, each with a size assert.
//! - [`dtype`]: [`GgmlType`], the on-disk type tag and its block geometry.
//! - [`reference`](mod@reference): scalar quantizers/dequantizers bit-exact with ggml's
//!   `*_ref` functions, and whole-tensor `quantize` / `dequantize`.
//! - [`gguf`]: the validating zero-copy reader [`gguf::Gguf`] and the streaming
//!   writer [`gguf::GgufWriter`].
//! - [`limits`]: the caps and sampling ranges the runtime accepts (and the
//!   converter checks).

// `n % k != 0` instead of `is_multiple_of` (Rust 1.87): our MSRV is 1.80.
#![allow(clippy::manual_is_multiple_of)]

pub mod block;
pub mod dtype;
pub mod gguf;
pub mod limits;
pub mod reference;

pub use dtype::GgmlType;
pub use reference::QuantError;
