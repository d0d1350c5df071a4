//! Activations and the KV cache, allocated once. A decoding step (one token,
//! last logits only) allocates nothing; only `all_logits` over more tokens than
//! were seen before grows the logits buffer.

use crate::config::Config;
use crate::error::ModelError;
use crate::matmul::MatmulScratch;

pub struct State {
    pub n_ctx: usize,
    pub max_batch: usize,
    /// Residual stream, [max_batch, n_embd].
    pub x: Vec<f32>,
    /// Normed input of a block, [max_batch, n_embd].
    pub xb: Vec<f32>,
    /// Output of attn_output / ffn_down, [max_batch, n_embd].
    pub xb2: Vec<f32>,
    /// Fused qkv output (Qwen-1), [max_batch, q_dim + 2*kv_dim]; empty otherwise.
    pub qkv: Vec<f32>,
    /// Queries, [max_batch, n_head, head_dim].
    pub q: Vec<f32>,
    /// Keys / values of the chunk, [max_batch, n_head_kv, head_dim].
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    /// Attention output, [max_batch, n_head, head_dim].
    pub attn_out: Vec<f32>,
    /// Attention scores, [n_head, n_ctx] (one row per head, reused per token).
    pub att: Vec<f32>,
    /// FFN gate and up, [max_batch, n_ff].
    pub hb: Vec<f32>,
    pub hb2: Vec<f32>,
    /// RoPE cos/sin of the chunk's positions, [max_batch, rope_dim/2].
    pub rope_cos: Vec<f32>,
    pub rope_sin: Vec<f32>,
    /// RoPE inverse frequencies, [rope_dim/2]; recomputed when the NTK alpha changes.
    pub inv_freq: Vec<f32>,
    /// The NTK alpha `inv_freq` was computed for (Qwen-1 dynamic NTK; 1 otherwise).
    pub ntk_alpha: f64,
    /// Keys and values of every layer, [n_layer, n_ctx, n_head_kv, head_dim].
    pub k_cache: Vec<f32>,
    pub v_cache: Vec<f32>,
    /// Logits, [n_vocab] for the last token, or [n_tokens, n_vocab] with all_logits.
    pub logits: Vec<f32>,
    pub scratch: MatmulScratch,
    /// When `Some`, forward() appends a copy of every named intermediate
    /// (llama.cpp's names: inp_embd, attn_norm-N, Qcur-N, …) for debugging
    /// against a PyTorch dump. `None` (the default) costs nothing.
    pub trace: Option<Vec<Trace>>,
}

/// One intermediate of one forward chunk: [rows, data.len() / rows].
#[derive(Clone, Debug)]
pub struct Trace {
    pub name: String,
    /// Position of the first row.
    pub pos0: usize,
    pub rows: usize,
    pub data: Vec<f32>,
}

/// A zeroed buffer. `vec![0.0; n]` gets pages the OS zeroes lazily, so a KV
/// cache larger than what is used costs address space, not memory.
fn zeros(n: usize) -> Vec<f32> {
    vec![0.0; n]
}

/// Physical memory in bytes (Linux /proc/meminfo MemTotal), if known.
fn mem_total() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// a * b * c..., or an error naming the buffer.
fn product(what: &str, dims: &[usize]) -> Result<usize, ModelError> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| ModelError::Other(format!("the {what} size {dims:?} overflows")))
}

impl State {
    /// `n_ctx`: positions the KV cache holds; `max_batch`: tokens per forward
    /// chunk (prefill splits longer inputs). Both are at least 1.
    ///
    /// Aborts like any `Vec` when memory runs out; the CLI uses [`State::try_new`].
    pub fn new(cfg: &Config, n_ctx: usize, max_batch: usize) -> Self {
        match Self::try_new(cfg, n_ctx, max_batch) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// As [`State::new`], but a KV cache or activation buffer that cannot be
    /// allocated (e.g. a huge --ctx-size) is an error naming its size.
    pub fn try_new(cfg: &Config, n_ctx: usize, max_batch: usize) -> Result<Self, ModelError> {
        let n_ctx = n_ctx.max(1);
        let b = max_batch.clamp(1, n_ctx);
        let (e, qd, kvd, ff) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff);
        let qkv_len = match cfg.arch.spec().qkv {
            crate::model::QkvLayout::Fused => b * (qd + 2 * kvd),
            crate::model::QkvLayout::Split => 0,
        };
        let half = cfg.rope_dim / 2;
        let max_cols = e.max(qd).max(ff);
        let mut inv_freq = vec![0f32; half];
        crate::ops::rope_inv_freq(&mut inv_freq, cfg.rope_base as f64, cfg.rope_dim);
        let kv = product("KV cache", &[cfg.n_layer, n_ctx, kvd])?;
        // Refuse a KV cache the machine cannot hold (a full one would be killed
        // by the OOM killer mid-run); the activations are small next to it.
        let kv_bytes = (kv as u64).saturating_mul(8);
        if let Some(total) = mem_total() {
            if kv_bytes > total {
                return Err(ModelError::Other(format!(
                    "the KV cache for {n_ctx} positions needs {} MiB, the machine has {} MiB (lower --ctx-size)",
                    kv_bytes >> 20,
                    total >> 20
                )));
            }
        }
        Ok(State {
            n_ctx,
            max_batch: b,
            x: zeros(b * e),
            xb: zeros(b * e),
            xb2: zeros(b * e),
            qkv: zeros(qkv_len),
            q: zeros(b * qd),
            k: zeros(b * kvd),
            v: zeros(b * kvd),
            attn_out: zeros(b * qd),
            att: zeros(product("attention scores", &[cfg.n_head, n_ctx])?),
            hb: zeros(b * ff),
            hb2: zeros(b * ff),
            rope_cos: zeros(b * half),
            rope_sin: zeros(b * half),
            inv_freq,
            ntk_alpha: 1.0,
            k_cache: zeros(kv),
            v_cache: zeros(kv),
            logits: zeros(cfg.n_vocab),
            scratch: MatmulScratch::new(b, max_cols),
            trace: None,
        })
    }

    /// Bytes held by the KV cache.
    pub fn kv_bytes(&self) -> usize {
        (self.k_cache.len() + self.v_cache.len()) * std::mem::size_of::<f32>()
    }
}
