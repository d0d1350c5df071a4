//! Qwen-1 (`QWenLMHeadModel`, modeling_qwen.py): one fused c_attn with bias
//! (q | k | v along its output rows), no k/v grouping, NEOX RoPE, and dynamic
//! NTK RoPE plus logn attention past the training length when the file says so.
//! The MLP is y = c_proj(w1(x) * silu(w2(x))): w1 -> ffn_up, w2 -> ffn_gate.

use super::{ArchSpec, QkvLayout, RopeStyle};

pub const SPEC: ArchSpec = ArchSpec {
    name: "qwen",
    qkv: QkvLayout::Fused,
    qk_norm: false,
    rope: RopeStyle::Neox,
    qwen1_long_context: true,
    ffn_len_may_be_doubled: true,
};
