//! Per-architecture data: which config keys give the hyperparameters, and the
//! HF -> GGUF tensor-name table with the shape each tensor must have.
//! Names and keys follow llama.cpp (`convert_hf_to_gguf.py`, `llama-arch.cpp`).
//!
//! | HF class          | GGUF arch | differences                                     |
//! |-------------------|-----------|-------------------------------------------------|
//! | QWenLMHeadModel   | qwen      | fused QKV + bias, FFN width = intermediate/2    |
//! | Qwen2ForCausalLM  | qwen2     | q/k/v biases, GQA                               |
//! | Qwen3ForCausalLM  | qwen3     | q/k RMSNorm, explicit head_dim, no biases       |

use crate::hf::{Checkpoint, Config};
use crate::meta::{Meta, MetaValue};
use crate::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Qwen,
    Qwen2,
    Qwen3,
}

impl Arch {
    /// `general.architecture` and the key prefix.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Qwen => "qwen",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }

    pub fn detect(cfg: &Config) -> Result<Arch> {
        let class = cfg.architecture()?;
        match class.as_str() {
            "QWenLMHeadModel" => Ok(Arch::Qwen),
            "Qwen2ForCausalLM" => Ok(Arch::Qwen2),
            "Qwen3ForCausalLM" => Ok(Arch::Qwen3),
            other => bail!(
                "{}: unsupported architecture {other:?} (model_type {:?}); supported: QWenLMHeadModel, Qwen2ForCausalLM, Qwen3ForCausalLM",
                cfg.path.display(),
                cfg.opt_str("model_type").ok().flatten().unwrap_or("absent")
            ),
        }
    }
}

/// Qwen-1 only: settings of its dynamic-NTK / logn attention.
#[derive(Debug, Clone, PartialEq)]
pub struct QwenExtras {
    /// Training context; dynamic NTK and logn scaling start beyond it.
    pub seq_length: u32,
    pub use_dynamic_ntk: bool,
    pub use_logn_attn: bool,
    /// `intermediate_size` as written in config.json (twice the FFN width).
    pub intermediate_size_hf: u32,
}

/// Hyperparameters, validated against each other.
#[derive(Debug, Clone, PartialEq)]
pub struct Hparams {
    pub arch: Arch,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Per-head size of q/k/v.
    pub head_dim: usize,
    /// Real FFN width (rows of ffn_up / ffn_gate).
    pub n_ff: usize,
    pub n_ctx: u32,
    pub rope_theta: f32,
    pub rope_dim: u32,
    pub rms_eps: f32,
    pub tie_word_embeddings: bool,
    /// Qwen2: sliding window size when `use_sliding_window` is true, and the
    /// number of bottom layers that use full attention.
    pub sliding_window: Option<(u32, u32)>,
    pub qwen: Option<QwenExtras>,
}

impl Hparams {
    /// Reads config.json and checks the values against each other and against
    /// what the runtime loads ([`crate::limits`]).
    pub fn from_config(cfg: &Config) -> Result<Hparams> {
        let hp = Self::read(cfg)?;
        hp.check_runtime_limits(cfg)?;
        Ok(hp)
    }

    fn read(cfg: &Config) -> Result<Hparams> {
        let arch = Arch::detect(cfg)?;
        let p = cfg.path.display();
        if let Some(t) = cfg.rope_scaling_type() {
            bail!("{p}: RoPE scaling type {t:?} is not supported (only plain RoPE)");
        }
        // The runtime's FFN is SwiGLU: silu(gate) * up. Qwen2/3 name the activation
        // (transformers' default "silu"; "swish" is the same nn.SiLU); Qwen-1's
        // QWenMLP hard-codes F.silu and its config has no such key.
        if arch != Arch::Qwen {
            match cfg.opt_str("hidden_act")? {
                None | Some("silu") | Some("swish") => {}
                Some(other) => bail!(
                    "{p}: hidden_act {other:?} is not supported (only \"silu\": the FFN is SwiGLU)"
                ),
            }
        }
        let n_vocab = cfg.u32("vocab_size")? as usize;
        let n_embd = cfg.u32("hidden_size")? as usize;
        let n_layer = cfg.u32("num_hidden_layers")? as usize;
        let n_head = cfg.u32("num_attention_heads")? as usize;
        let tie = cfg.opt_bool("tie_word_embeddings")?;
        match arch {
            Arch::Qwen => {
                let kv_channels = cfg
                    .opt_u32("kv_channels")?
                    .map(|v| v as usize)
                    .unwrap_or(n_embd / n_head);
                if kv_channels * n_head != n_embd {
                    bail!(
                        "{p}: kv_channels {kv_channels} x num_attention_heads {n_head} = {} but hidden_size is {n_embd}; Qwen-1 needs them equal",
                        kv_channels * n_head
                    );
                }
                let inter = cfg.u32("intermediate_size")?;
                if inter % 2 != 0 {
                    bail!("{p}: Qwen-1 intermediate_size {inter} must be even (it is twice the FFN width)");
                }
                let rotary_pct = cfg.opt_f64("rotary_pct")?.unwrap_or(1.0);
                if !(rotary_pct > 0.0 && rotary_pct <= 1.0) {
                    bail!("{p}: rotary_pct {rotary_pct} must be in (0, 1]");
                }
                let rope_dim = (kv_channels as f64 * rotary_pct).round() as u32;
                if rope_dim % 2 != 0 {
                    bail!(
                        "{p}: rotary dimension {rope_dim} (kv_channels x rotary_pct) must be even"
                    );
                }
                let seq_length = cfg.u32("seq_length")?;
                let n_ctx = cfg
                    .opt_u32("max_position_embeddings")?
                    .unwrap_or(seq_length);
                Ok(Hparams {
                    arch,
                    n_vocab,
                    n_embd,
                    n_layer,
                    n_head,
                    n_head_kv: n_head,
                    head_dim: kv_channels,
                    n_ff: inter as usize / 2,
                    n_ctx,
                    rope_theta: positive_f32(
                        cfg,
                        "rotary_emb_base",
                        cfg.opt_f64("rotary_emb_base")?.unwrap_or(10000.0),
                    )?,
                    rope_dim,
                    rms_eps: positive_f32(
                        cfg,
                        "layer_norm_epsilon",
                        cfg.f64("layer_norm_epsilon")?,
                    )?,
                    tie_word_embeddings: tie.unwrap_or(false),
                    sliding_window: None,
                    qwen: Some(QwenExtras {
                        seq_length,
                        use_dynamic_ntk: cfg.opt_bool("use_dynamic_ntk")?.unwrap_or(false),
                        use_logn_attn: cfg.opt_bool("use_logn_attn")?.unwrap_or(false),
                        intermediate_size_hf: inter,
                    }),
                })
            }
            Arch::Qwen2 | Arch::Qwen3 => {
                let n_head_kv =
                    cfg.opt_u32("num_key_value_heads")?.unwrap_or(n_head as u32) as usize;
                if n_head % n_head_kv != 0 {
                    bail!("{p}: num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_head_kv}");
                }
                let head_dim = match cfg.opt_u32("head_dim")? {
                    Some(d) if arch == Arch::Qwen3 || d as usize * n_head == n_embd => d as usize,
                    Some(d) => bail!(
                        "{p}: Qwen2 head_dim {d} x num_attention_heads {n_head} != hidden_size {n_embd}"
                    ),
                    None => {
                        if n_embd % n_head != 0 {
                            bail!("{p}: hidden_size {n_embd} is not a multiple of num_attention_heads {n_head}");
                        }
                        n_embd / n_head
                    }
                };
                if head_dim % 2 != 0 {
                    bail!("{p}: head_dim {head_dim} must be even for RoPE");
                }
                if arch == Arch::Qwen3 && cfg.opt_bool("attention_bias")? == Some(true) {
                    bail!("{p}: Qwen3 with attention_bias = true is not supported");
                }
                let n_ctx = cfg.u32("max_position_embeddings")?;
                let sliding_window = if cfg.opt_bool("use_sliding_window")? == Some(true) {
                    let w = cfg.u32("sliding_window")?;
                    let full = cfg
                        .opt_u64("max_window_layers")?
                        .unwrap_or(n_layer as u64)
                        .min(u32::MAX as u64) as u32;
                    // transformers: layer i slides when i >= max_window_layers (or when
                    // config.layer_types says "sliding_attention"). The runtime attends to
                    // the whole context, so a window that can bite is refused, not ignored.
                    let by_types = match cfg.raw.get("layer_types") {
                        Some(serde_json::Value::Array(v)) => {
                            v.iter().any(|t| t.as_str() == Some("sliding_attention"))
                        }
                        _ => false,
                    };
                    if (by_types || (full as usize) < n_layer) && w < n_ctx {
                        bail!(
                            "{p}: sliding-window attention (use_sliding_window = true, sliding_window = {w} < max_position_embeddings {n_ctx}, from layer {}) is not supported",
                            if by_types { "layer_types".to_string() } else { full.to_string() }
                        );
                    }
                    Some((w, full))
                } else {
                    None
                };
                Ok(Hparams {
                    arch,
                    n_vocab,
                    n_embd,
                    n_layer,
                    n_head,
                    n_head_kv,
                    head_dim,
                    n_ff: cfg.u32("intermediate_size")? as usize,
                    n_ctx,
                    rope_theta: positive_f32(
                        cfg,
                        "rope_theta",
                        cfg.rope_theta()?.unwrap_or(10000.0),
                    )?,
                    rope_dim: head_dim as u32,
                    rms_eps: positive_f32(cfg, "rms_norm_eps", cfg.f64("rms_norm_eps")?)?,
                    tie_word_embeddings: tie.unwrap_or(false),
                    sliding_window,
                    qwen: None,
                })
            }
        }
    }

    /// GGUF metadata for the model hyperparameters (llama.cpp key names) and
    /// our Qwen-1 extras.
    pub fn metadata(&self, meta: &mut Meta) {
        let a = self.arch.gguf_name();
        let u = |v: usize| MetaValue::U32(v as u32);
        meta.push(format!("{a}.context_length"), MetaValue::U32(self.n_ctx));
        meta.push(format!("{a}.embedding_length"), u(self.n_embd));
        meta.push(format!("{a}.block_count"), u(self.n_layer));
        // Qwen-1: llama.cpp stores config's intermediate_size (2x the real
        // width) and halves it when loading; we do the same so llama.cpp
        // loads our files. Runtimes must use feed_forward_length / 2 for qwen.
        let ff = match &self.qwen {
            Some(q) => q.intermediate_size_hf as usize,
            None => self.n_ff,
        };
        meta.push(format!("{a}.feed_forward_length"), u(ff));
        meta.push(format!("{a}.attention.head_count"), u(self.n_head));
        meta.push(format!("{a}.attention.head_count_kv"), u(self.n_head_kv));
        meta.push(
            format!("{a}.rope.freq_base"),
            MetaValue::F32(self.rope_theta),
        );
        meta.push(
            format!("{a}.attention.layer_norm_rms_epsilon"),
            MetaValue::F32(self.rms_eps),
        );
        meta.push(
            format!("{a}.rope.dimension_count"),
            MetaValue::U32(self.rope_dim),
        );
        if self.arch == Arch::Qwen3 {
            meta.push(format!("{a}.attention.key_length"), u(self.head_dim));
            meta.push(format!("{a}.attention.value_length"), u(self.head_dim));
        }
        if let Some((w, full)) = self.sliding_window {
            meta.push("qwen_rs.attention.sliding_window", MetaValue::U32(w));
            meta.push("qwen_rs.attention.max_window_layers", MetaValue::U32(full));
        }
        if let Some(q) = &self.qwen {
            meta.push(
                "qwen_rs.qwen.use_dynamic_ntk",
                MetaValue::Bool(q.use_dynamic_ntk),
            );
            meta.push(
                "qwen_rs.qwen.use_logn_attn",
                MetaValue::Bool(q.use_logn_attn),
            );
            meta.push("qwen_rs.qwen.seq_length", MetaValue::U32(q.seq_length));
        }
    }
}

impl Hparams {
    /// The runtime refuses a file whose counts exceed its caps, whose epsilon is
    /// not in (0, 1) or whose RoPE base is not above 1 (`src/config.rs`,
    /// `Config::from_gguf`): refuse such a config here, naming its key.
    fn check_runtime_limits(&self, cfg: &Config) -> Result<()> {
        use quant_formats::limits::*;
        let p = cfg.path.display();
        let qwen1 = self.arch == Arch::Qwen;
        let ctx_key = if !qwen1 || cfg.has("max_position_embeddings") {
            "max_position_embeddings"
        } else {
            "seq_length"
        };
        let head_dim_key = match self.arch {
            Arch::Qwen => "kv_channels",
            _ if cfg.has("head_dim") => "head_dim",
            _ => "hidden_size / num_attention_heads",
        };
        // feed_forward_length as written: Qwen-1 stores intermediate_size (2x the width).
        let ff = self
            .qwen
            .as_ref()
            .map_or(self.n_ff, |q| q.intermediate_size_hf as usize);
        let mut counts = vec![
            ("vocab_size", self.n_vocab, MAX_VOCAB),
            ("hidden_size", self.n_embd, MAX_EMBD),
            ("num_hidden_layers", self.n_layer, MAX_LAYERS),
            ("num_attention_heads", self.n_head, MAX_HEADS),
            ("num_key_value_heads", self.n_head_kv, MAX_HEADS),
            (head_dim_key, self.head_dim, MAX_HEAD_DIM),
            ("intermediate_size", ff, MAX_FF),
            (ctx_key, self.n_ctx as usize, MAX_CTX),
        ];
        if let Some(q) = &self.qwen {
            counts.push(("seq_length", q.seq_length as usize, MAX_CTX));
        }
        for (key, v, max) in counts {
            if v > max {
                bail!("{p}: `{key}` = {v} is above {max}, the most the qwen-rs runtime loads");
            }
        }
        let (eps_key, base_key) = if qwen1 {
            ("layer_norm_epsilon", "rotary_emb_base")
        } else {
            ("rms_norm_eps", "rope_theta")
        };
        if !(self.rms_eps > 0.0 && self.rms_eps < 1.0) {
            bail!(
                "{p}: `{eps_key}` = {} must be in (0, 1) (the qwen-rs runtime refuses it)",
                self.rms_eps
            );
        }
        // Finite and positive already (positive_f32).
        if self.rope_theta <= 1.0 {
            bail!(
                "{p}: `{base_key}` = {} must be above 1 (the qwen-rs runtime refuses it)",
                self.rope_theta
            );
        }
        if self.rope_dim < 2 {
            bail!(
                "{p}: rotary dimension {} (kv_channels x rotary_pct) must be at least 2",
                self.rope_dim
            );
        }
        if let Some(q) = &self.qwen {
            // Runtime: dynamic NTK computes base * alpha^(d / (d - 2)); logn divides by log(seq).
            if q.use_dynamic_ntk && self.rope_dim <= 2 {
                bail!(
                    "{p}: use_dynamic_ntk needs a rotary dimension above 2, found {}",
                    self.rope_dim
                );
            }
            if q.use_logn_attn && q.seq_length < 2 {
                bail!(
                    "{p}: use_logn_attn needs `seq_length` >= 2, found {}",
                    q.seq_length
                );
            }
        }
        Ok(())
    }
}

/// A config value stored as f32 that must be positive and finite in f32
/// (an epsilon or RoPE base of 0, < 0 or 1e39 would poison every forward pass).
fn positive_f32(cfg: &Config, key: &str, v: f64) -> Result<f32> {
    let f = v as f32;
    if !(f.is_finite() && f > 0.0) {
        bail!(
            "{}: `{key}` = {v} must be positive and at most {:e} (it is stored as f32)",
            cfg.path.display(),
            f32::MAX
        );
    }
    Ok(f)
}

/// What the output matrix is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// token_embd; `tied` when it also serves as the output matrix.
    Embedding {
        tied: bool,
    },
    Output,
    Other,
}

/// One tensor to write: its GGUF name, HF source name and HF-order shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub gguf: String,
    pub hf: String,
    /// PyTorch order; GGUF dims are this reversed.
    pub shape: Vec<usize>,
    pub role: Role,
}

impl TensorSpec {
    /// ggml order: dims[0] is the row length.
    pub fn gguf_dims(&self) -> Vec<u64> {
        self.shape.iter().rev().map(|&d| d as u64).collect()
    }
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// HF tensors that carry no weights we need (recomputed buffers).
fn ignorable(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// The tensor table for `hp`, checked against the checkpoint: every tensor
/// present with the right shape, no unknown tensor left over. `lm_head`
/// missing (or `tie_word_embeddings`) means the output reuses token_embd.
pub fn tensor_specs(hp: &Hparams, ck: &Checkpoint) -> Result<Vec<TensorSpec>> {
    let (e, v, ff) = (hp.n_embd, hp.n_vocab, hp.n_ff);
    let q_dim = hp.n_head * hp.head_dim;
    let kv_dim = hp.n_head_kv * hp.head_dim;
    let (embd_name, norm_name) = match hp.arch {
        Arch::Qwen => ("transformer.wte.weight", "transformer.ln_f.weight"),
        _ => ("model.embed_tokens.weight", "model.norm.weight"),
    };
    let tied = hp.tie_word_embeddings || ck.get("lm_head.weight").is_none();
    let mut specs = Vec::new();
    let mut add = |gguf: String, hf: String, shape: Vec<usize>, role: Role| {
        specs.push(TensorSpec {
            gguf,
            hf,
            shape,
            role,
        });
    };
    add(
        "token_embd.weight".into(),
        embd_name.into(),
        vec![v, e],
        Role::Embedding { tied },
    );
    for i in 0..hp.n_layer {
        let b = |s: &str| format!("blk.{i}.{s}");
        match hp.arch {
            Arch::Qwen => {
                let h = |s: &str| format!("transformer.h.{i}.{s}");
                // [3 * n_embd, n_embd]: q, k, v stacked along the rows.
                add(
                    b("attn_norm.weight"),
                    h("ln_1.weight"),
                    vec![e],
                    Role::Other,
                );
                add(
                    b("attn_qkv.weight"),
                    h("attn.c_attn.weight"),
                    vec![3 * q_dim, e],
                    Role::Other,
                );
                add(
                    b("attn_qkv.bias"),
                    h("attn.c_attn.bias"),
                    vec![3 * q_dim],
                    Role::Other,
                );
                add(
                    b("attn_output.weight"),
                    h("attn.c_proj.weight"),
                    vec![e, q_dim],
                    Role::Other,
                );
                add(b("ffn_norm.weight"), h("ln_2.weight"), vec![e], Role::Other);
                // y = c_proj(w1(x) * silu(w2(x))): w1 is "up", w2 is "gate".
                add(
                    b("ffn_up.weight"),
                    h("mlp.w1.weight"),
                    vec![ff, e],
                    Role::Other,
                );
                add(
                    b("ffn_gate.weight"),
                    h("mlp.w2.weight"),
                    vec![ff, e],
                    Role::Other,
                );
                add(
                    b("ffn_down.weight"),
                    h("mlp.c_proj.weight"),
                    vec![e, ff],
                    Role::Other,
                );
            }
            Arch::Qwen2 | Arch::Qwen3 => {
                let h = |s: &str| format!("model.layers.{i}.{s}");
                add(
                    b("attn_norm.weight"),
                    h("input_layernorm.weight"),
                    vec![e],
                    Role::Other,
                );
                add(
                    b("attn_q.weight"),
                    h("self_attn.q_proj.weight"),
                    vec![q_dim, e],
                    Role::Other,
                );
                add(
                    b("attn_k.weight"),
                    h("self_attn.k_proj.weight"),
                    vec![kv_dim, e],
                    Role::Other,
                );
                add(
                    b("attn_v.weight"),
                    h("self_attn.v_proj.weight"),
                    vec![kv_dim, e],
                    Role::Other,
                );
                if hp.arch == Arch::Qwen2 {
                    add(
                        b("attn_q.bias"),
                        h("self_attn.q_proj.bias"),
                        vec![q_dim],
                        Role::Other,
                    );
                    add(
                        b("attn_k.bias"),
                        h("self_attn.k_proj.bias"),
                        vec![kv_dim],
                        Role::Other,
                    );
                    add(
                        b("attn_v.bias"),
                        h("self_attn.v_proj.bias"),
                        vec![kv_dim],
                        Role::Other,
                    );
                } else {
                    add(
                        b("attn_q_norm.weight"),
                        h("self_attn.q_norm.weight"),
                        vec![hp.head_dim],
                        Role::Other,
                    );
                    add(
                        b("attn_k_norm.weight"),
                        h("self_attn.k_norm.weight"),
                        vec![hp.head_dim],
                        Role::Other,
                    );
                }
                add(
                    b("attn_output.weight"),
                    h("self_attn.o_proj.weight"),
                    vec![e, q_dim],
                    Role::Other,
                );
                add(
                    b("ffn_norm.weight"),
                    h("post_attention_layernorm.weight"),
                    vec![e],
                    Role::Other,
                );
                add(
                    b("ffn_gate.weight"),
                    h("mlp.gate_proj.weight"),
                    vec![ff, e],
                    Role::Other,
                );
                add(
                    b("ffn_up.weight"),
                    h("mlp.up_proj.weight"),
                    vec![ff, e],
                    Role::Other,
                );
                add(
                    b("ffn_down.weight"),
                    h("mlp.down_proj.weight"),
                    vec![e, ff],
                    Role::Other,
                );
            }
        }
    }
    add(
        "output_norm.weight".into(),
        norm_name.into(),
        vec![e],
        Role::Other,
    );
    if !tied {
        add(
            "output.weight".into(),
            "lm_head.weight".into(),
            vec![v, e],
            Role::Output,
        );
    }

    for s in &specs {
        let Some(t) = ck.get(&s.hf) else {
            bail!(
                "checkpoint: tensor {:?} (for {}) is missing; a {} checkpoint needs it",
                s.hf,
                s.gguf,
                hp.arch.gguf_name()
            );
        };
        if t.shape != s.shape {
            bail!(
                "{}: tensor {:?} has shape {:?} but config.json implies {:?}",
                ck.shard_path(t).display(),
                s.hf,
                t.shape,
                s.shape
            );
        }
    }
    let mut used: std::collections::HashSet<&str> = specs.iter().map(|s| s.hf.as_str()).collect();
    // A tied checkpoint may still carry a copy of lm_head; it equals the embedding.
    if tied {
        used.insert("lm_head.weight");
    }
    for name in ck.names() {
        if !used.contains(name) && !ignorable(name) {
            let t = ck
                .get(name)
                .map(|t| ck.shard_path(t).display().to_string())
                .unwrap_or_default();
            bail!(
                "{t}: unexpected tensor {name:?} is not part of the {} layout implied by config.json",
                hp.arch.gguf_name()
            );
        }
    }
    Ok(specs)
}
