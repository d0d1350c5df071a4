//! qwen-convert: Hugging Face Qwen checkpoints to one GGUF v3 file.
fn main() {}
