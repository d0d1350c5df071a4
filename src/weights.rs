//! Weights borrowed from the mapped file, never copied (1-D tensors stored in
//! another type than f32, or misaligned, are the one exception: they are
//! dequantized once at load into a small owned vector). Every tensor's shape is
//! checked against the Config; optional tensors are `Option`s.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;

use quant_formats::gguf::{Gguf, TensorInfo};
use quant_formats::GgmlType;
use rayon::prelude::*;

use crate::config::Config;
use crate::error::ModelError;
use crate::matmul::QMatrix;
use crate::model::QkvLayout;

/// The attention input projections, fused (Qwen-1's c_attn) or split.
pub enum QkvWeights<'a> {
    /// [q_dim + 2*kv_dim, n_embd]; output rows are q | k | v.
    Fused {
        w: QMatrix<'a>,
        /// [q_dim + 2*kv_dim]
        b: Option<Cow<'a, [f32]>>,
    },
    Split {
        /// [q_dim, n_embd]
        q: QMatrix<'a>,
        /// [kv_dim, n_embd]
        k: QMatrix<'a>,
        /// [kv_dim, n_embd]
        v: QMatrix<'a>,
        /// [q_dim]
        bq: Option<Cow<'a, [f32]>>,
        /// [kv_dim]
        bk: Option<Cow<'a, [f32]>>,
        /// [kv_dim]
        bv: Option<Cow<'a, [f32]>>,
    },
}

pub struct LayerWeights<'a> {
    /// [n_embd]
    pub attn_norm: Cow<'a, [f32]>,
    pub qkv: QkvWeights<'a>,
    /// [head_dim] each (Qwen3)
    pub attn_q_norm: Option<Cow<'a, [f32]>>,
    pub attn_k_norm: Option<Cow<'a, [f32]>>,
    /// [n_embd, q_dim]
    pub attn_output: QMatrix<'a>,
    /// [n_embd]
    pub attn_output_b: Option<Cow<'a, [f32]>>,
    /// [n_embd]
    pub ffn_norm: Cow<'a, [f32]>,
    /// [n_ff, n_embd]
    pub ffn_gate: QMatrix<'a>,
    /// [n_ff, n_embd]
    pub ffn_up: QMatrix<'a>,
    /// [n_embd, n_ff]
    pub ffn_down: QMatrix<'a>,
}

pub struct Weights<'a> {
    /// [n_vocab_embd, n_embd]; rows are fetched one at a time.
    pub token_embd: QMatrix<'a>,
    pub layers: Vec<LayerWeights<'a>>,
    /// [n_embd]
    pub output_norm: Cow<'a, [f32]>,
    /// [n_vocab, n_embd]; a view of token_embd when the file has no `output`.
    pub output: QMatrix<'a>,
    /// True when `output` is token_embd (tied embeddings).
    pub tied: bool,
}

struct Reader<'g, 'a> {
    g: &'g Gguf<'a>,
    /// Names of the tensors handed out so far: every tensor of the file must
    /// end up here, or the file holds something the forward pass would ignore.
    used: RefCell<HashSet<String>>,
}

impl<'g, 'a> Reader<'g, 'a> {
    fn info(&self, name: &str) -> Result<&'g TensorInfo, ModelError> {
        let info = self
            .g
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        self.used.borrow_mut().insert(name.to_string());
        Ok(info)
    }

    /// Refuses the file when a tensor was never asked for: a tensor we do not
    /// apply (rope_freqs, an FFN bias, q/k norms in a qwen2 file, a block past
    /// block_count) means the logits would silently differ from what the file
    /// describes. llama.cpp refuses such files too ("wrong number of tensors").
    fn check_all_used(&self, arch: &str, n_layer: usize) -> Result<(), ModelError> {
        let used = self.used.borrow();
        let mut unused = self.g.tensors.iter().filter(|t| !used.contains(&t.name));
        let Some(first) = unused.next() else {
            return Ok(());
        };
        let more = unused.count();
        let others = match more {
            0 => String::new(),
            1 => " (and 1 other)".to_string(),
            n => format!(" (and {n} others)"),
        };
        Err(ModelError::Tensor {
            name: first.name.clone(),
            msg: format!(
                "not used by this runtime's {arch} model with {n_layer} blocks{others}; \
                 refusing the file rather than ignoring weights it asks for"
            ),
        })
    }

    fn check_dims(info: &TensorInfo, expected: &[u64]) -> Result<(), ModelError> {
        if info.dims != expected {
            return Err(ModelError::Shape {
                name: info.name.clone(),
                expected: expected.to_vec(),
                found: info.dims.clone(),
            });
        }
        Ok(())
    }

    /// A [rows, cols] matrix (ggml dims [cols, rows]).
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<QMatrix<'a>, ModelError> {
        let info = self.info(name)?;
        Self::check_dims(info, &[cols as u64, rows as u64])?;
        let data = self.g.tensor_data(info);
        // QMatrix's message already names the tensor.
        QMatrix::new(name, info.dtype, rows, cols, data).map_err(ModelError::Other)
    }

    fn opt_matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<QMatrix<'a>>, ModelError> {
        match self.g.tensor(name) {
            None => Ok(None),
            Some(_) => self.matrix(name, rows, cols).map(Some),
        }
    }

    /// A [len] vector as f32: borrowed when the file stores aligned f32.
    fn vector(&self, name: &str, len: usize) -> Result<Cow<'a, [f32]>, ModelError> {
        let info = self.info(name)?;
        Self::check_dims(info, &[len as u64])?;
        let data = self.g.tensor_data(info);
        if info.dtype == GgmlType::F32 {
            if let Ok(v) = bytemuck::try_cast_slice::<u8, f32>(data) {
                return Ok(Cow::Borrowed(v));
            }
        }
        let mut out = vec![0f32; len];
        quant_formats::reference::dequantize(info.dtype, data, &mut out).map_err(|e| {
            ModelError::Tensor {
                name: name.to_string(),
                msg: format!("cannot read a {} vector: {e}", info.dtype),
            }
        })?;
        Ok(Cow::Owned(out))
    }

    fn opt_vector(&self, name: &str, len: usize) -> Result<Option<Cow<'a, [f32]>>, ModelError> {
        match self.g.tensor(name) {
            None => Ok(None),
            Some(_) => self.vector(name, len).map(Some),
        }
    }
}

impl<'a> Weights<'a> {
    pub fn load(g: &Gguf<'a>, cfg: &Config) -> Result<Self, ModelError> {
        let r = Reader {
            g,
            used: RefCell::new(HashSet::with_capacity(g.tensors.len())),
        };
        let spec = cfg.arch.spec();
        let (e, q_dim, kv_dim, hd, ff) = (
            cfg.n_embd,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.head_dim,
            cfg.n_ff,
        );
        let token_embd = r.matrix("token_embd.weight", cfg.n_vocab_embd, e)?;
        let (output, tied) = match r.opt_matrix("output.weight", cfg.n_vocab, e)? {
            Some(m) => (m, false),
            None => (r.matrix("token_embd.weight", cfg.n_vocab_embd, e)?, true),
        };
        let output_norm = r.vector("output_norm.weight", e)?;

        let mut layers = Vec::with_capacity(cfg.n_layer);
        for il in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}");
            let qkv = match spec.qkv {
                QkvLayout::Fused => QkvWeights::Fused {
                    w: r.matrix(&n("attn_qkv.weight"), q_dim + 2 * kv_dim, e)?,
                    b: r.opt_vector(&n("attn_qkv.bias"), q_dim + 2 * kv_dim)?,
                },
                QkvLayout::Split => QkvWeights::Split {
                    q: r.matrix(&n("attn_q.weight"), q_dim, e)?,
                    k: r.matrix(&n("attn_k.weight"), kv_dim, e)?,
                    v: r.matrix(&n("attn_v.weight"), kv_dim, e)?,
                    bq: r.opt_vector(&n("attn_q.bias"), q_dim)?,
                    bk: r.opt_vector(&n("attn_k.bias"), kv_dim)?,
                    bv: r.opt_vector(&n("attn_v.bias"), kv_dim)?,
                },
            };
            let (attn_q_norm, attn_k_norm) = if spec.qk_norm {
                (
                    Some(r.vector(&n("attn_q_norm.weight"), hd)?),
                    Some(r.vector(&n("attn_k_norm.weight"), hd)?),
                )
            } else {
                (None, None)
            };
            layers.push(LayerWeights {
                attn_norm: r.vector(&n("attn_norm.weight"), e)?,
                qkv,
                attn_q_norm,
                attn_k_norm,
                attn_output: r.matrix(&n("attn_output.weight"), e, q_dim)?,
                attn_output_b: r.opt_vector(&n("attn_output.bias"), e)?,
                ffn_norm: r.vector(&n("ffn_norm.weight"), e)?,
                ffn_gate: r.matrix(&n("ffn_gate.weight"), ff, e)?,
                ffn_up: r.matrix(&n("ffn_up.weight"), ff, e)?,
                ffn_down: r.matrix(&n("ffn_down.weight"), e, ff)?,
            });
        }
        r.check_all_used(spec.name, cfg.n_layer)?;
        Ok(Weights {
            token_embd,
            layers,
            output_norm,
            output,
            tied,
        })
    }
}

/// One tensor holding non-finite values.
#[derive(Debug, Clone)]
pub struct NonFinite {
    pub name: String,
    pub dtype: GgmlType,
    pub n_nan: u64,
    pub n_inf: u64,
    pub n_elements: u64,
}

/// Dequantizes every tensor of the file (row by row, in parallel over tensors)
/// and reports those holding NaN or Inf. Tensors whose type the reference
/// dequantizer does not know are an error naming them.
pub fn scan_non_finite(g: &Gguf) -> Result<Vec<NonFinite>, ModelError> {
    let results: Vec<Result<Option<NonFinite>, ModelError>> = g
        .tensors
        .par_iter()
        .map(|info| {
            let data = g.tensor_data(info);
            let row_len = info.dims.first().copied().unwrap_or(1).max(1) as usize;
            let n_elements: u64 = info.dims.iter().product();
            if n_elements == 0 || data.is_empty() {
                // Nothing to scan; and a [2^40, 0] tensor must not size a row buffer.
                return Ok(None);
            }
            let row_bytes =
                info.dtype
                    .row_bytes(row_len as u64)
                    .ok_or_else(|| ModelError::Tensor {
                        name: info.name.clone(),
                        msg: format!(
                            "row of {row_len} elements is not a whole number of {} blocks",
                            info.dtype
                        ),
                    })? as usize;
            let mut row = vec![0f32; row_len];
            let (mut n_nan, mut n_inf) = (0u64, 0u64);
            for chunk in data.chunks(row_bytes.max(1)) {
                if chunk.len() != row_bytes {
                    break;
                }
                quant_formats::reference::dequantize(info.dtype, chunk, &mut row).map_err(|e| {
                    ModelError::Tensor {
                        name: info.name.clone(),
                        msg: format!("cannot dequantize {}: {e}", info.dtype),
                    }
                })?;
                for &x in &row {
                    if x.is_nan() {
                        n_nan += 1;
                    } else if x.is_infinite() {
                        n_inf += 1;
                    }
                }
            }
            Ok((n_nan + n_inf > 0).then(|| NonFinite {
                name: info.name.clone(),
                dtype: info.dtype,
                n_nan,
                n_inf,
                n_elements,
            }))
        })
        .collect();
    let mut out = Vec::new();
    for r in results {
        if let Some(x) = r? {
            out.push(x);
        }
    }
    Ok(out)
}
