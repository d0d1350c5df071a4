//! qwen-rs: a CPU-first runtime for Qwen models stored as GGUF v3 (`.qbin`) files.

pub mod chat;
pub mod cli;
pub mod config;
pub mod error;
pub mod interactive;
pub mod kernels;
pub mod loader;
pub mod matmul;
pub mod model;
pub mod npy;
pub mod ops;
pub mod progress;
pub mod sampler;
pub mod state;
pub mod tokenizer;
pub mod weights;

pub use config::{Arch, Config};
pub use error::ModelError;
pub use loader::ModelFile;
pub use model::Model;
pub use state::State;
pub use weights::Weights;
