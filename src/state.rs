//! Activations and the KV cache, allocated once. A decoding step (one token,
//! last logits only) allocates nothing; only `all_logits` over more tokens than
//! were seen before grows the logits buffer.

use std::fmt;
use std::str::FromStr;

use half::f16;
use half::vec::HalfBitsVecExt;

use crate::config::Config;
use crate::error::ModelError;
use crate::kernels::attn::{AttnDims, AttnScratch};
use crate::matmul::MatmulScratch;

/// Element type of the keys or of the values in the KV cache (llama.cpp's
/// `--cache-type-k` / `--cache-type-v`). f16 halves the bytes every attention
/// step reads; keys and values are rounded to nearest even on the way in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    F32,
    #[default]
    F16,
}

impl KvType {
    /// Every type, as spelled on the command line.
    pub const NAMES: &'static [&'static str] = &["f16", "f32"];

    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvType {
    type Err = String;
    /// "f16" | "f32" (any case); anything else is an error naming it and the allowed ones.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            _ => Err(format!(
                "unknown KV cache type '{s}' (allowed: {})",
                KvType::NAMES.join(", ")
            )),
        }
    }
}

/// The keys or the values of every layer, [n_layer, n_head_kv, n_ctx, head_dim]:
/// one KV head's rows are contiguous, so attention streams them front to back.
#[derive(Debug)]
pub enum KvCache {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl KvCache {
    /// `n` zeroed elements. Zeroed pages come lazily from the OS, so positions
    /// never used cost address space, not memory.
    fn zeroed(ty: KvType, n: usize) -> Self {
        match ty {
            KvType::F32 => KvCache::F32(vec![0.0; n]),
            KvType::F16 => KvCache::F16(vec![0u16; n].reinterpret_into()),
        }
    }

    pub fn kv_type(&self) -> KvType {
        match self {
            KvCache::F32(_) => KvType::F32,
            KvCache::F16(_) => KvType::F16,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            KvCache::F32(v) => v.len() * 4,
            KvCache::F16(v) => v.len() * 2,
        }
    }
}

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
    /// Scratch of the attention driver (per-task outputs, running max/sum, scores).
    pub attn: AttnScratch,
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
    /// Keys and values of every layer, [n_layer, n_head_kv, n_ctx, head_dim].
    pub k_cache: KvCache,
    pub v_cache: KvCache,
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
    /// allocated (e.g. a huge --ctx-size) is an error naming its size. The KV cache
    /// is f16 ([`KvType::default`]).
    pub fn try_new(cfg: &Config, n_ctx: usize, max_batch: usize) -> Result<Self, ModelError> {
        Self::try_new_kv(cfg, n_ctx, max_batch, KvType::default(), KvType::default())
    }

    /// As [`State::try_new`] with the element types of the keys (`k`) and values (`v`).
    pub fn try_new_kv(
        cfg: &Config,
        n_ctx: usize,
        max_batch: usize,
        k: KvType,
        v: KvType,
    ) -> Result<Self, ModelError> {
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
        let kv_bytes = (kv as u64).saturating_mul((k.size() + v.size()) as u64);
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
            attn: AttnScratch::new(Self::attn_dims_of(cfg, n_ctx), b),
            hb: zeros(b * ff),
            hb2: zeros(b * ff),
            rope_cos: zeros(b * half),
            rope_sin: zeros(b * half),
            inv_freq,
            ntk_alpha: 1.0,
            k_cache: KvCache::zeroed(k, kv),
            v_cache: KvCache::zeroed(v, kv),
            logits: zeros(cfg.n_vocab),
            scratch: MatmulScratch::new(b, max_cols),
            trace: None,
        })
    }

    /// Bytes held by the KV cache (both halves, at their element types).
    pub fn kv_bytes(&self) -> usize {
        self.k_cache.bytes() + self.v_cache.bytes()
    }

    /// Element types of the keys and the values.
    pub fn kv_types(&self) -> (KvType, KvType) {
        (self.k_cache.kv_type(), self.v_cache.kv_type())
    }

    fn attn_dims_of(cfg: &Config, n_ctx: usize) -> AttnDims {
        AttnDims {
            n_head: cfg.n_head,
            n_head_kv: cfg.n_head_kv,
            head_dim: cfg.head_dim,
            n_ctx,
        }
    }
}
