//! One decoder for every architecture. What differs between architectures is
//! data (`ArchSpec`, one small file per arch) and the optional tensors in
//! `Weights`; the forward pass below reads top to bottom like the paper:
//! embed -> n_layer x [RMSNorm, q/k/v, (q/k norm), RoPE, causal GQA over the
//! KV cache, o-proj, residual, RMSNorm, SwiGLU FFN, residual] -> RMSNorm -> logits.

pub mod llama;
pub mod qwen;
pub mod qwen2;
pub mod qwen3;

use quant_formats::gguf::Gguf;

pub use crate::config::{Arch, Config};
pub use crate::error::ModelError;
use crate::kernels::attn::{self, AttnKernels, KvElem};
use crate::matmul::{matmul, matmul_multi, MatmulScratch, QMatrix};
use crate::ops;
pub use crate::ops::RopeStyle;
pub use crate::state::{KvCache, KvType, State, Trace};
use crate::weights::QkvWeights;
pub use crate::weights::Weights;

/// Layout of the attention input projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkvLayout {
    /// One attn_qkv matrix whose output rows are q | k | v (Qwen-1's c_attn).
    Fused,
    /// attn_q, attn_k, attn_v.
    Split,
}

/// Everything that distinguishes one architecture from another.
#[derive(Clone, Copy, Debug)]
pub struct ArchSpec {
    pub name: &'static str,
    pub qkv: QkvLayout,
    /// RMSNorm over each q and k head before RoPE (Qwen3).
    pub qk_norm: bool,
    pub rope: RopeStyle,
    /// Reads Qwen-1's dynamic-NTK / logn-attention settings (qwen_rs.qwen.*).
    pub qwen1_long_context: bool,
    /// feed_forward_length may hold twice the FFN width (llama.cpp's Qwen-1 files).
    pub ffn_len_may_be_doubled: bool,
}

pub struct Model<'a> {
    pub config: Config,
    pub weights: Weights<'a>,
}

/// Qwen-1's `get_ntk_alpha`: 2^ceil(log2(len / seq_length) + 1) - 1, at least 1.
pub fn qwen_ntk_alpha(true_seq_len: usize, seq_length: usize) -> f64 {
    let context_value = (true_seq_len as f64 / seq_length as f64).log2() + 1.0;
    let alpha = 2f64.powf(context_value.ceil()) - 1.0;
    alpha.max(1.0)
}

/// Qwen-1's logn attention factor for the query at 0-based position `pos`:
/// log(pos + 1) / log(seq_length) past the training length, else 1.
pub fn qwen_logn(pos: usize, seq_length: usize) -> f32 {
    let i = pos + 1;
    if i > seq_length {
        ((i as f64).ln() / (seq_length as f64).ln()) as f32
    } else {
        1.0
    }
}

/// Most tokens a forward pass takes with a polling peer (see `Model::forward`).
const POLL_MAX_TOKENS: usize = 8;

impl<'a> Model<'a> {
    /// Reads the config and borrows the weights from `g` (shapes all checked).
    pub fn load(g: &Gguf<'a>) -> Result<Self, ModelError> {
        let config = Config::from_gguf(g)?;
        let weights = Weights::load(g, &config)?;
        Ok(Model { config, weights })
    }

    /// The KV cache type [`Model::new_state`] uses: f32 when the key projection
    /// of the first layer is stored as f32 (an f32 file: its logits are held to
    /// 1e-3·(1 + max|ref|) of transformers, and rounding K/V to f16 alone spends up
    /// to a third of that on our fixtures), else f16, which halves the bytes every
    /// attention step reads at a cost far below the weights' own rounding.
    pub fn default_kv_type(&self) -> KvType {
        let k = self.weights.layers.first().map(|l| match &l.qkv {
            QkvWeights::Fused { w, .. } => w.dtype,
            QkvWeights::Split { k, .. } => k.dtype,
        });
        if k == Some(quant_formats::GgmlType::F32) {
            KvType::F32
        } else {
            KvType::F16
        }
    }

    /// A State for this model: KV cache of `n_ctx` positions of
    /// [`Model::default_kv_type`], prefill chunks of up to `max_batch` tokens.
    pub fn new_state(&self, n_ctx: usize, max_batch: usize) -> State {
        let kv = self.default_kv_type();
        self.new_state_kv(n_ctx, max_batch, kv, kv)
    }

    /// As [`Model::new_state`], but running out of memory is an error.
    pub fn try_new_state(&self, n_ctx: usize, max_batch: usize) -> Result<State, ModelError> {
        let kv = self.default_kv_type();
        self.try_new_state_kv(n_ctx, max_batch, kv, kv)
    }

    /// As [`Model::try_new_state`] with the element types of the cached keys
    /// (`k`) and values (`v`).
    pub fn try_new_state_kv(
        &self,
        n_ctx: usize,
        max_batch: usize,
        k: KvType,
        v: KvType,
    ) -> Result<State, ModelError> {
        State::try_new_kv(&self.config, n_ctx, max_batch, k, v)
    }

    /// As [`Model::try_new_state_kv`]; aborts when memory runs out (tests, benches).
    pub fn new_state_kv(&self, n_ctx: usize, max_batch: usize, k: KvType, v: KvType) -> State {
        match self.try_new_state_kv(n_ctx, max_batch, k, v) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// Evaluates tokens at positions start_pos.. (KV cache filled for them). Returns logits of the LAST token
    /// ([n_vocab]) or, if all_logits, of every token ([n_tokens * n_vocab]). Err if logits turn non-finite or ctx overflows.
    /// Decode-sized inputs (at most [`POLL_MAX_TOKENS`]) run with a polling peer
    /// thread ([`crate::kernels::with_polling_peer`]): their parallel calls last tens
    /// of microseconds, so a peer's wake-up matters; a prompt's last milliseconds.
    pub fn forward<'s>(
        &self,
        st: &'s mut State,
        tokens: &[u32],
        start_pos: usize,
        all_logits: bool,
    ) -> Result<&'s [f32], ModelError> {
        if tokens.len() > POLL_MAX_TOKENS {
            return self.forward_body(st, tokens, start_pos, all_logits);
        }
        crate::kernels::with_polling_peer(|| self.forward_body(st, tokens, start_pos, all_logits))
    }

    fn forward_body<'s>(
        &self,
        st: &'s mut State,
        tokens: &[u32],
        start_pos: usize,
        all_logits: bool,
    ) -> Result<&'s [f32], ModelError> {
        let cfg = &self.config;
        let n = tokens.len();
        if n == 0 {
            return Err(ModelError::Other("forward: no tokens to evaluate".into()));
        }
        let end = start_pos.saturating_add(n);
        if end > st.n_ctx {
            return Err(ModelError::ContextOverflow {
                needed: end,
                n_ctx: st.n_ctx,
            });
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= cfg.n_vocab_embd) {
            return Err(ModelError::TokenOutOfRange {
                id,
                n_vocab: cfg.n_vocab_embd,
            });
        }

        // Qwen-1 dynamic NTK: like modeling_qwen.py, alpha is chosen from the
        // length of a sequence evaluated from position 0 and kept for the
        // tokens that extend it (HF caches `_ntk_alpha_cached_list`).
        if cfg.use_dynamic_ntk && start_pos == 0 {
            let alpha = qwen_ntk_alpha(n, cfg.qwen_seq_length);
            if alpha != st.ntk_alpha {
                let d = cfg.rope_dim as f64;
                let base = cfg.rope_base as f64 * alpha.powf(d / (d - 2.0));
                ops::rope_inv_freq(&mut st.inv_freq, base, cfg.rope_dim);
                st.ntk_alpha = alpha;
            }
        }

        let v = cfg.n_vocab;
        let out_len = if all_logits { n * v } else { v };
        if st.logits.len() < out_len {
            // Only all_logits over a longer input than before gets here.
            st.logits.resize(out_len, 0.0);
        }

        let mut done = 0;
        while done < n {
            let t = st.max_batch.min(n - done);
            self.forward_chunk(st, &tokens[done..done + t], start_pos + done)?;
            let e = cfg.n_embd;
            if all_logits {
                for i in 0..t {
                    ops::rmsnorm(
                        &mut st.xb[i * e..(i + 1) * e],
                        &st.x[i * e..(i + 1) * e],
                        &self.weights.output_norm,
                        cfg.norm_eps,
                    );
                }
                trace(
                    &mut st.trace,
                    "result_norm",
                    None,
                    start_pos + done,
                    t,
                    &st.xb[..t * e],
                );
                matmul(
                    &self.weights.output,
                    &st.xb[..t * e],
                    &mut st.logits[done * v..(done + t) * v],
                    t,
                    &mut st.scratch,
                );
            } else if done + t == n {
                ops::rmsnorm(
                    &mut st.xb[..e],
                    &st.x[(t - 1) * e..t * e],
                    &self.weights.output_norm,
                    cfg.norm_eps,
                );
                matmul(
                    &self.weights.output,
                    &st.xb[..e],
                    &mut st.logits[..v],
                    1,
                    &mut st.scratch,
                );
            }
            done += t;
        }

        let logits = &st.logits[..out_len];
        if let Some(bad) = logits.iter().position(|x| !x.is_finite()) {
            let row = bad / v;
            let pos = if all_logits { start_pos + row } else { end - 1 };
            return Err(ModelError::NonFinite { pos });
        }
        Ok(logits)
    }

    /// Runs `tokens` (at most st.max_batch) through every layer; leaves the
    /// final residual stream in st.x ([t, n_embd]) and their k/v in the cache.
    fn forward_chunk(&self, st: &mut State, tokens: &[u32], pos0: usize) -> Result<(), ModelError> {
        let cfg = &self.config;
        let w = &self.weights;
        let t = tokens.len();
        let (e, qd, kvd, hd, ff) = (
            cfg.n_embd,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.head_dim,
            cfg.n_ff,
        );
        let half = cfg.rope_dim / 2;
        let eps = cfg.norm_eps;

        // Embeddings: x[i] = token_embd[id], dequantized row by row.
        let emb = &w.token_embd;
        let row_bytes = emb.data.len() / emb.rows;
        for (i, &id) in tokens.iter().enumerate() {
            let src = &emb.data[id as usize * row_bytes..(id as usize + 1) * row_bytes];
            quant_formats::reference::dequantize(emb.dtype, src, &mut st.x[i * e..(i + 1) * e])
                .map_err(|err| ModelError::Tensor {
                    name: "token_embd.weight".into(),
                    msg: format!("cannot dequantize row {id}: {err}"),
                })?;
        }

        trace(&mut st.trace, "inp_embd", None, pos0, t, &st.x[..t * e]);

        // RoPE angles of the chunk's positions, shared by all layers.
        for i in 0..t {
            let pos = (pos0 + i) as f32 * cfg.rope_freq_scale;
            ops::rope_cos_sin(
                &mut st.rope_cos[i * half..(i + 1) * half],
                &mut st.rope_sin[i * half..(i + 1) * half],
                &st.inv_freq,
                pos,
            );
        }

        // Attention kernels of the active level ([n_head_kv, n_ctx, head_dim] per layer).
        let kern = attn::active();
        for (il, lw) in w.layers.iter().enumerate() {
            // attn_norm
            for i in 0..t {
                ops::rmsnorm(
                    &mut st.xb[i * e..(i + 1) * e],
                    &st.x[i * e..(i + 1) * e],
                    &lw.attn_norm,
                    eps,
                );
            }
            trace(
                &mut st.trace,
                "attn_norm",
                Some(il),
                pos0,
                t,
                &st.xb[..t * e],
            );
            let xb = &st.xb[..t * e];

            // q [t, qd], k [t, kvd], v [t, kvd]
            match &lw.qkv {
                QkvWeights::Fused { w: wqkv, b } => {
                    let width = qd + 2 * kvd;
                    let qkv = &mut st.qkv[..t * width];
                    matmul(wqkv, xb, qkv, t, &mut st.scratch);
                    if let Some(b) = b {
                        ops::add_bias_rows(qkv, b);
                    }
                    for i in 0..t {
                        let row = &qkv[i * width..(i + 1) * width];
                        st.q[i * qd..(i + 1) * qd].copy_from_slice(&row[..qd]);
                        st.k[i * kvd..(i + 1) * kvd].copy_from_slice(&row[qd..qd + kvd]);
                        st.v[i * kvd..(i + 1) * kvd].copy_from_slice(&row[qd + kvd..]);
                    }
                }
                QkvWeights::Split {
                    q,
                    k,
                    v,
                    bq,
                    bk,
                    bv,
                } => {
                    // One quantization of xb and one parallel dispatch for all three.
                    let (yq, yk, yv) = (
                        &mut st.q[..t * qd],
                        &mut st.k[..t * kvd],
                        &mut st.v[..t * kvd],
                    );
                    matmul_multi(
                        &[q, k, v],
                        xb,
                        &mut [&mut *yq, &mut *yk, &mut *yv],
                        t,
                        &mut st.scratch,
                    );
                    for (y, b) in [(yq, bq), (yk, bk), (yv, bv)] {
                        if let Some(b) = b {
                            ops::add_bias_rows(y, b);
                        }
                    }
                }
            }
            let q = &mut st.q[..t * qd];
            let k = &mut st.k[..t * kvd];

            // Qwen3: RMSNorm over each head of q and k.
            if let Some(qn) = &lw.attn_q_norm {
                q.chunks_exact_mut(hd)
                    .for_each(|h| ops::rmsnorm_inplace(h, qn, eps));
            }
            if let Some(kn) = &lw.attn_k_norm {
                k.chunks_exact_mut(hd)
                    .for_each(|h| ops::rmsnorm_inplace(h, kn, eps));
            }

            // RoPE on the first rope_dim dimensions of every head.
            for i in 0..t {
                let (c, s) = (
                    &st.rope_cos[i * half..(i + 1) * half],
                    &st.rope_sin[i * half..(i + 1) * half],
                );
                q[i * qd..(i + 1) * qd]
                    .chunks_exact_mut(hd)
                    .for_each(|h| ops::rope(h, c, s, cfg.rope_style));
                k[i * kvd..(i + 1) * kvd]
                    .chunks_exact_mut(hd)
                    .for_each(|h| ops::rope(h, c, s, cfg.rope_style));
            }

            // Qwen-1 logn attention: queries past the training length are scaled.
            if cfg.use_logn_attn {
                for i in 0..t {
                    let f = qwen_logn(pos0 + i, cfg.qwen_seq_length);
                    if f != 1.0 {
                        q[i * qd..(i + 1) * qd].iter_mut().for_each(|x| *x *= f);
                    }
                }
            }

            trace(&mut st.trace, "Qcur", Some(il), pos0, t, q);
            trace(&mut st.trace, "Kcur", Some(il), pos0, t, k);
            trace(&mut st.trace, "Vcur", Some(il), pos0, t, &st.v[..t * kvd]);

            // Append k, v to the cache, then causal grouped-query attention of
            // the chunk's queries over positions 0..pos0 + t of this layer.
            let layer = cfg.n_head_kv * st.n_ctx * hd;
            let (kc, vc) = (&mut st.k_cache, &mut st.v_cache);
            let (kc, vc) = (
                cache_layer(kc, il * layer..(il + 1) * layer),
                cache_layer(vc, il * layer..(il + 1) * layer),
            );
            let scale = 1.0 / (hd as f32).sqrt();
            let out = &mut st.attn_out[..t * qd];
            let v = &st.v[..t * kvd];
            match (kc, vc) {
                (Layer::F32(kc), Layer::F32(vc)) => {
                    attend_layer(kern, q, k, v, kc, vc, pos0, scale, &mut st.attn, out)
                }
                (Layer::F32(kc), Layer::F16(vc)) => {
                    attend_layer(kern, q, k, v, kc, vc, pos0, scale, &mut st.attn, out)
                }
                (Layer::F16(kc), Layer::F32(vc)) => {
                    attend_layer(kern, q, k, v, kc, vc, pos0, scale, &mut st.attn, out)
                }
                (Layer::F16(kc), Layer::F16(vc)) => {
                    attend_layer(kern, q, k, v, kc, vc, pos0, scale, &mut st.attn, out)
                }
            }

            trace(
                &mut st.trace,
                "kqv_out",
                Some(il),
                pos0,
                t,
                &st.attn_out[..t * qd],
            );

            // o-proj and residual.
            proj(
                &lw.attn_output,
                &st.attn_out[..t * qd],
                &mut st.xb2[..t * e],
                t,
                lw.attn_output_b.as_deref(),
                &mut st.scratch,
            );
            ops::add_inplace(&mut st.x[..t * e], &st.xb2[..t * e]);
            trace(&mut st.trace, "ffn_inp", Some(il), pos0, t, &st.x[..t * e]);

            // FFN: down(silu(gate(x)) * up(x)) and residual.
            for i in 0..t {
                ops::rmsnorm(
                    &mut st.xb[i * e..(i + 1) * e],
                    &st.x[i * e..(i + 1) * e],
                    &lw.ffn_norm,
                    eps,
                );
            }
            matmul_multi(
                &[&lw.ffn_gate, &lw.ffn_up],
                &st.xb[..t * e],
                &mut [&mut st.hb[..t * ff], &mut st.hb2[..t * ff]],
                t,
                &mut st.scratch,
            );
            ops::swiglu(&mut st.hb[..t * ff], &st.hb2[..t * ff]);
            matmul(
                &lw.ffn_down,
                &st.hb[..t * ff],
                &mut st.xb2[..t * e],
                t,
                &mut st.scratch,
            );
            trace(
                &mut st.trace,
                "ffn_out",
                Some(il),
                pos0,
                t,
                &st.xb2[..t * e],
            );
            ops::add_inplace(&mut st.x[..t * e], &st.xb2[..t * e]);
            trace(&mut st.trace, "l_out", Some(il), pos0, t, &st.x[..t * e]);
        }
        Ok(())
    }
}

/// Records an intermediate when tracing is on (see [`State::trace`]).
fn trace(
    tr: &mut Option<Vec<Trace>>,
    name: &str,
    il: Option<usize>,
    pos0: usize,
    rows: usize,
    data: &[f32],
) {
    if let Some(v) = tr {
        v.push(Trace {
            name: match il {
                Some(il) => format!("{name}-{il}"),
                None => name.to_string(),
            },
            pos0,
            rows,
            data: data.to_vec(),
        });
    }
}

/// y = W x (+ b) for t tokens.
fn proj(
    w: &QMatrix,
    x: &[f32],
    y: &mut [f32],
    t: usize,
    b: Option<&[f32]>,
    scratch: &mut MatmulScratch,
) {
    matmul(w, x, y, t, scratch);
    if let Some(b) = b {
        ops::add_bias_rows(y, b);
    }
}

/// One layer of a [`KvCache`], borrowed at its element type.
enum Layer<'c> {
    F32(&'c mut [f32]),
    F16(&'c mut [half::f16]),
}

fn cache_layer(c: &mut KvCache, r: std::ops::Range<usize>) -> Layer<'_> {
    match c {
        KvCache::F32(v) => Layer::F32(&mut v[r]),
        KvCache::F16(v) => Layer::F16(&mut v[r]),
    }
}

/// Stores the chunk's keys `k` and values `v` ([t, n_head_kv, head_dim], positions
/// pos0..) into one layer of the cache (`kc`, `vc`: [n_head_kv, n_ctx, head_dim]),
/// then attends queries `q` ([t, n_head, head_dim]) into `out` (same shape).
#[allow(clippy::too_many_arguments)]
fn attend_layer<K: KvElem, V: KvElem>(
    kern: &AttnKernels,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    kc: &mut [K],
    vc: &mut [V],
    pos0: usize,
    scale: f32,
    scratch: &mut attn::AttnScratch,
    out: &mut [f32],
) {
    let dims = scratch.dims();
    attn::store(kern, &dims, k, pos0, kc);
    attn::store(kern, &dims, v, pos0, vc);
    attn::attend(kern, q, kc, vc, pos0, scale, scratch, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntk_alpha_matches_modeling_qwen() {
        // Within the training length alpha is 1; 2x -> 3, 3x -> 7 (ceil), 4x -> 7.
        assert_eq!(qwen_ntk_alpha(100, 2048), 1.0);
        assert_eq!(qwen_ntk_alpha(2048, 2048), 1.0);
        assert_eq!(qwen_ntk_alpha(4096, 2048), 3.0);
        assert_eq!(qwen_ntk_alpha(6000, 2048), 7.0);
        assert_eq!(qwen_ntk_alpha(8192, 2048), 7.0);
    }

    #[test]
    fn logn_is_one_inside_training_length() {
        assert_eq!(qwen_logn(0, 2048), 1.0);
        assert_eq!(qwen_logn(2047, 2048), 1.0);
        let f = qwen_logn(4095, 2048);
        assert!((f - (4096f32.ln() / 2048f32.ln())).abs() < 1e-6);
    }
}
