//! Llama as written by llama.cpp's converter (SmolLM2's file, for one). The
//! converter permutes the rows of attn_q / attn_k so that each rotated pair is
//! adjacent (`LlamaModel.permute` in convert_hf_to_gguf.py); such files need the
//! "normal" RoPE over interleaved pairs (x[2i], x[2i+1]), not NEOX.

use super::{ArchSpec, QkvLayout, RopeStyle};

pub const SPEC: ArchSpec = ArchSpec {
    name: "llama",
    qkv: QkvLayout::Split,
    qk_norm: false,
    rope: RopeStyle::Norm,
    qwen1_long_context: false,
    ffn_len_may_be_doubled: false,
};
