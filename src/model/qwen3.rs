//! Qwen3 (`Qwen3ForCausalLM`): split q/k/v without biases, an RMSNorm over each
//! q and k head (attn_q_norm / attn_k_norm, [head_dim]) before RoPE, and a head
//! size of its own (attention.key_length), so n_head * head_dim may differ from
//! n_embd. NEOX RoPE.

use super::{ArchSpec, QkvLayout, RopeStyle};

pub const SPEC: ArchSpec = ArchSpec {
    name: "qwen3",
    qkv: QkvLayout::Split,
    qk_norm: true,
    rope: RopeStyle::Neox,
    qwen1_long_context: false,
    ffn_len_may_be_doubled: false,
};
