//! Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): split q/k/v projections with biases
//! (optional here, so bias-free files such as our SmolLM2 conversion load too),
//! grouped-query attention, NEOX RoPE.

use super::{ArchSpec, QkvLayout, RopeStyle};

pub const SPEC: ArchSpec = ArchSpec {
    name: "qwen2",
    qkv: QkvLayout::Split,
    qk_norm: false,
    rope: RopeStyle::Neox,
    qwen1_long_context: false,
    ffn_len_may_be_doubled: false,
};
