//! qwen-rs: a CPU-first runtime for Qwen models stored as GGUF v3 (`.qbin`) files.
pub mod sampler;
pub mod kernels;
pub mod matmul;
