//! Attention over the KV cache: the kernel table (one per instruction-set level,
//! chosen by [`crate::kernels::level`], so `QWEN_KERNELS` / `--kernels` force it
//! too) and the safe driver [`attend`] that runs causal grouped-query attention of
//! a chunk of query tokens against one layer of the cache.
//!
//! - `attn_generic.rs`: the scalar twin of every kernel (the spec);
//! - `attn_x86.rs`: AVX2 + FMA + F16C and AVX-512F (all `unsafe` of attention);
//! - `attn_aarch64.rs`: NEON (+ fp16 conversions).
//!
//! The cache of one layer is `[n_head_kv, n_ctx, head_dim]`: the keys of one KV
//! head are one contiguous run, so a score pass streams them front to back.
//! Elements are f32 or f16 ([`KvElem`]); f16 halves the bytes a long-context
//! decode step reads.
//!
//! [`attend`] is a flash-style loop: keys in blocks of [`key_block`], a running
//! max and sum per (query, head) (online softmax), the output rescaled when the
//! max grows. One parallel dispatch per call over (KV head x block of [`QUERY_BLOCK`]
//! query tokens); a task serves every query head of its KV group, so each key
//! block is read from memory once and reused from L1 by all of them. An f16
//! block read by two or more query rows is widened to f32 once per task (exact),
//! so the f16 -> f32 conversion is not repeated per head; small calls (a decode
//! step at a short context) run on the calling thread.

#[cfg(target_arch = "aarch64")]
#[path = "attn_aarch64.rs"]
mod aarch64;
#[path = "attn_generic.rs"]
pub mod generic;
#[cfg(target_arch = "x86_64")]
#[path = "attn_x86.rs"]
mod x86;

use half::f16;
use rayon::prelude::*;

/// One instruction-set level of the attention kernels. Every function panics (a
/// bug) when its slice lengths do not fit the shape stated.
#[derive(Debug)]
pub struct AttnKernels {
    /// "scalar" | "avx2" | "avx512" | "neon".
    pub name: &'static str,
    /// `out[j] = scale * dot(q, k[j])` for `j < out.len()`; q: [hd], k: [out.len(), hd].
    /// Returns the largest `out[j]` (NaNs skipped; -inf when every one is NaN).
    pub scores_f32: fn(q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) -> f32,
    pub scores_f16: fn(q: &[f32], k: &[f16], scale: f32, out: &mut [f32]) -> f32,
    /// `out += sum_j p[j] * v[j]`; p: [n], v: [n, hd], out: [hd].
    pub accum_f32: fn(p: &[f32], v: &[f32], out: &mut [f32]),
    pub accum_f16: fn(p: &[f32], v: &[f16], out: &mut [f32]),
    /// `s[j] = exp(s[j] - max)` in place; returns the sum of the new `s`.
    pub exp_sum: fn(s: &mut [f32], max: f32) -> f32,
    /// `y[i] = f16(x[i])`, rounded to nearest even (as `half::f16::from_f32`).
    pub to_f16: fn(x: &[f32], y: &mut [f16]),
    /// `y[i] = f32(x[i])` (exact).
    pub to_f32: fn(x: &[f16], y: &mut [f32]),
}

/// The table of `level` if this build has it and this CPU supports it.
pub fn table(level: &str) -> Option<&'static AttnKernels> {
    match level {
        "scalar" => Some(&generic::SCALAR),
        #[cfg(target_arch = "x86_64")]
        "avx2" => x86::avx2(),
        #[cfg(target_arch = "x86_64")]
        "avx512" => x86::avx512(),
        #[cfg(target_arch = "aarch64")]
        "neon" => aarch64::neon(),
        _ => None,
    }
}

/// The table of the kernel level in use ([`crate::kernels::level`]).
pub fn active() -> &'static AttnKernels {
    table(super::level()).unwrap_or(&generic::SCALAR)
}

/// An element type of the KV cache.
pub trait KvElem: Copy + Default + Send + Sync + 'static {
    /// Whether [`attend`] widens a block of this type to f32 once when several
    /// query rows read it (f16: the conversion would be repeated by every one).
    const WIDEN: bool;
    /// Stores `x` as this type (`y.len() == x.len()`).
    fn store(k: &AttnKernels, x: &[f32], y: &mut [Self]);
    /// `y = f32(x)` (`y.len() == x.len()`).
    fn widen(k: &AttnKernels, x: &[Self], y: &mut [f32]);
    fn scores(k: &AttnKernels) -> fn(&[f32], &[Self], f32, &mut [f32]) -> f32;
    fn accum(k: &AttnKernels) -> fn(&[f32], &[Self], &mut [f32]);
}

impl KvElem for f32 {
    const WIDEN: bool = false;
    fn store(_: &AttnKernels, x: &[f32], y: &mut [f32]) {
        y.copy_from_slice(x);
    }
    fn widen(_: &AttnKernels, x: &[f32], y: &mut [f32]) {
        y.copy_from_slice(x);
    }
    fn scores(k: &AttnKernels) -> fn(&[f32], &[f32], f32, &mut [f32]) -> f32 {
        k.scores_f32
    }
    fn accum(k: &AttnKernels) -> fn(&[f32], &[f32], &mut [f32]) {
        k.accum_f32
    }
}

impl KvElem for f16 {
    const WIDEN: bool = true;
    fn store(k: &AttnKernels, x: &[f32], y: &mut [f16]) {
        (k.to_f16)(x, y)
    }
    fn widen(k: &AttnKernels, x: &[f16], y: &mut [f32]) {
        (k.to_f32)(x, y)
    }
    fn scores(k: &AttnKernels) -> fn(&[f32], &[f16], f32, &mut [f32]) -> f32 {
        k.scores_f16
    }
    fn accum(k: &AttnKernels) -> fn(&[f32], &[f16], &mut [f32]) {
        k.accum_f16
    }
}

/// Bytes of keys per block of the online softmax, as f32: with as many bytes of
/// values, a block stays in L1 while every query row of a task uses it (head_dim
/// 64: 64 keys). Larger blocks mean fewer rescales and calls per key.
pub const KEY_BLOCK_BYTES: usize = 16 << 10;

/// Most keys per block.
pub const MAX_KEY_BLOCK: usize = 256;

/// Keys per block for a head size.
pub fn key_block(head_dim: usize) -> usize {
    (KEY_BLOCK_BYTES / (head_dim * 4).max(1)).clamp(16, MAX_KEY_BLOCK)
}

/// Query tokens per parallel task.
pub const QUERY_BLOCK: usize = 8;

/// Below this many multiply-adds a call runs on the calling thread: waking a
/// worker costs more than it saves (a few µs; 2^17 multiply-adds take ~10 µs
/// here), and a short decode step then never waits for a descheduled peer.
pub const SERIAL_MACS: usize = 1 << 17;

/// Shape of the attention of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Positions the cache holds (stride between KV heads, in rows).
    pub n_ctx: usize,
}

impl AttnDims {
    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.n_head / self.n_head_kv
    }
}

/// Per-task scratch of [`attend`], allocated once for up to `max_batch` query tokens.
#[derive(Debug)]
pub struct AttnScratch {
    dims: AttnDims,
    max_batch: usize,
    /// Outputs by task: [n_head_kv, ceil(max_batch / QUERY_BLOCK), QUERY_BLOCK, group, head_dim].
    out: Vec<f32>,
    /// Running (max, sum) by task: [n_tasks, QUERY_BLOCK, group, 2].
    ml: Vec<f32>,
    /// By task: scores of one key block [MAX_KEY_BLOCK], then that block's keys and
    /// values widened to f32 [2, key_block, head_dim] ([`AttnScratch::work_len`]).
    work: Vec<f32>,
}

impl AttnScratch {
    pub fn new(dims: AttnDims, max_batch: usize) -> Self {
        let max_batch = max_batch.max(1);
        let tasks = dims.n_head_kv * max_batch.div_ceil(QUERY_BLOCK);
        let per_task = QUERY_BLOCK * dims.group();
        AttnScratch {
            dims,
            max_batch,
            out: vec![0.0; tasks * per_task * dims.head_dim],
            ml: vec![0.0; tasks * per_task * 2],
            work: vec![0.0; tasks * Self::work_len(&dims)],
        }
    }

    fn work_len(dims: &AttnDims) -> usize {
        MAX_KEY_BLOCK + 2 * key_block(dims.head_dim) * dims.head_dim
    }

    /// The shape this scratch serves.
    pub fn dims(&self) -> AttnDims {
        self.dims
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        (self.out.len() + self.ml.len() + self.work.len()) * std::mem::size_of::<f32>()
    }
}

/// Causal grouped-query attention of `t` query tokens at positions `pos0..pos0 + t`
/// over one layer of the cache, whose rows `0..pos0 + t` must already hold their
/// keys and values (the chunk's own included).
///
/// - `q`: [t, n_head, head_dim] (RoPE applied; `scale` multiplies every score);
/// - `kc`, `vc`: [n_head_kv, n_ctx, head_dim];
/// - `out`: [t, n_head, head_dim].
///
/// Query head `h` reads KV head `h / group`. Panics (a bug) when the shapes do not
/// fit `dims` / the scratch, or `pos0 + t > n_ctx`. Allocates nothing.
#[allow(clippy::too_many_arguments)]
pub fn attend<K: KvElem, V: KvElem>(
    kern: &AttnKernels,
    q: &[f32],
    kc: &[K],
    vc: &[V],
    pos0: usize,
    scale: f32,
    scratch: &mut AttnScratch,
    out: &mut [f32],
) {
    let d = scratch.dims;
    let (hd, g, n_ctx) = (d.head_dim, d.group(), d.n_ctx);
    let qd = d.n_head * hd;
    let t = q.len() / qd;
    assert!(
        t >= 1
            && q.len() == t * qd
            && out.len() == q.len()
            && t <= scratch.max_batch
            && pos0 + t <= n_ctx
            && d.n_head == g * d.n_head_kv
            && kc.len() == d.n_head_kv * n_ctx * hd
            && vc.len() == kc.len(),
        "attend: q {} out {} t {t} (max {}) pos0 {pos0} cache {}/{} for {d:?}",
        q.len(),
        out.len(),
        scratch.max_batch,
        kc.len(),
        vc.len()
    );
    let nqb = t.div_ceil(QUERY_BLOCK);
    let n_tasks = d.n_head_kv * nqb;
    let per_task = QUERY_BLOCK * g;
    let scores_fn = K::scores(kern);
    let kblock = key_block(hd);
    let work_len = AttnScratch::work_len(&d);
    let accum_fn = V::accum(kern);

    let task = |ti: usize, o: &mut [f32], ml: &mut [f32], work: &mut [f32]| {
        let (sc, wide) = work.split_at_mut(MAX_KEY_BLOCK);
        let (kbuf, vbuf) = wide.split_at_mut(kblock * hd);
        let (kvh, qb) = (ti / nqb, ti % nqb);
        let (i0, i1) = (qb * QUERY_BLOCK, ((qb + 1) * QUERY_BLOCK).min(t));
        let keys = &kc[kvh * n_ctx * hd..(kvh + 1) * n_ctx * hd];
        let vals = &vc[kvh * n_ctx * hd..(kvh + 1) * n_ctx * hd];
        let rows = (i1 - i0) * g;
        o[..rows * hd].fill(0.0);
        for r in 0..rows {
            ml[2 * r] = f32::NEG_INFINITY;
            ml[2 * r + 1] = 0.0;
        }
        // Keys 0..n_keys serve the last query of the block (causal).
        let n_keys = pos0 + i1;
        let mut kb = 0;
        while kb < n_keys {
            let ke = (kb + kblock).min(n_keys);
            // Query rows that read this block; with two or more, f16 keys/values
            // are widened once here instead of once per row inside the kernels.
            let users = (i0..i1).filter(|&i| pos0 + i + 1 > kb).count() * g;
            let (wide_k, wide_v) = (K::WIDEN && users >= 2, V::WIDEN && users >= 2);
            if wide_k {
                K::widen(kern, &keys[kb * hd..ke * hd], &mut kbuf[..(ke - kb) * hd]);
            }
            if wide_v {
                V::widen(kern, &vals[kb * hd..ke * hd], &mut vbuf[..(ke - kb) * hd]);
            }
            for i in i0..i1 {
                // Query i sees keys 0..=pos0 + i.
                let end = ke.min(pos0 + i + 1);
                if end <= kb {
                    continue;
                }
                let nk = end - kb;
                let kblk = &keys[kb * hd..end * hd];
                let vblk = &vals[kb * hd..end * hd];
                for j in 0..g {
                    let h = kvh * g + j;
                    let qh = &q[i * qd + h * hd..i * qd + (h + 1) * hd];
                    let r = (i - i0) * g + j;
                    let s = &mut sc[..nk];
                    // Widening is exact and the f16 and f32 kernels add in the same
                    // order, so both paths give the same scores.
                    let mx = if wide_k {
                        (kern.scores_f32)(qh, &kbuf[..nk * hd], scale, s)
                    } else {
                        scores_fn(qh, kblk, scale, s)
                    };
                    let (m_old, l_old) = (ml[2 * r], ml[2 * r + 1]);
                    let m_new = m_old.max(mx);
                    let orow = &mut o[r * hd..(r + 1) * hd];
                    let mut l = l_old;
                    if m_new > m_old && m_old != f32::NEG_INFINITY {
                        // The max grew: earlier terms shrink by exp(m_old - m_new).
                        let c = (m_old - m_new).exp();
                        l *= c;
                        orow.iter_mut().for_each(|x| *x *= c);
                    }
                    l += (kern.exp_sum)(s, m_new);
                    if wide_v {
                        (kern.accum_f32)(s, &vbuf[..nk * hd], orow);
                    } else {
                        accum_fn(s, vblk, orow);
                    }
                    ml[2 * r] = m_new;
                    ml[2 * r + 1] = l;
                }
            }
            kb = ke;
        }
        for r in 0..rows {
            let inv = 1.0 / ml[2 * r + 1];
            o[r * hd..(r + 1) * hd].iter_mut().for_each(|x| *x *= inv);
        }
    };

    let o_all = &mut scratch.out[..n_tasks * per_task * hd];
    let ml_all = &mut scratch.ml[..n_tasks * per_task * 2];
    let sc_all = &mut scratch.work[..n_tasks * work_len];
    // Multiply-adds of q·k and p·v (causal: query i reads pos0 + i + 1 keys).
    let macs = 2 * d.n_head * hd * (t * pos0 + t * (t + 1) / 2);
    if n_tasks == 1 || macs < SERIAL_MACS {
        for (ti, ((o, ml), sc)) in o_all
            .chunks_mut(per_task * hd)
            .zip(ml_all.chunks_mut(per_task * 2))
            .zip(sc_all.chunks_mut(work_len))
            .enumerate()
        {
            task(ti, o, ml, sc);
        }
    } else {
        o_all
            .par_chunks_mut(per_task * hd)
            .zip(ml_all.par_chunks_mut(per_task * 2))
            .zip(sc_all.par_chunks_mut(work_len))
            .enumerate()
            .with_max_len(1)
            .for_each(|(ti, ((o, ml), sc))| task(ti, o, ml, sc));
    }

    // Scatter [kvh, qb, QUERY_BLOCK, group, hd] back to [t, n_head, hd].
    for ti in 0..n_tasks {
        let (kvh, qb) = (ti / nqb, ti % nqb);
        let (i0, i1) = (qb * QUERY_BLOCK, ((qb + 1) * QUERY_BLOCK).min(t));
        let src = &scratch.out[ti * per_task * hd..];
        for i in i0..i1 {
            let n = g * hd;
            let s = &src[(i - i0) * n..(i - i0 + 1) * n];
            let dst = i * qd + kvh * n;
            out[dst..dst + n].copy_from_slice(s);
        }
    }
}

/// Writes `t` rows of new keys or values into one layer of the cache.
/// `x`: [t, n_head_kv, head_dim] (positions pos0..pos0 + t); `cache`: [n_head_kv, n_ctx, head_dim].
pub fn store<T: KvElem>(
    kern: &AttnKernels,
    dims: &AttnDims,
    x: &[f32],
    pos0: usize,
    cache: &mut [T],
) {
    let (hd, n_ctx) = (dims.head_dim, dims.n_ctx);
    let kvd = dims.n_head_kv * hd;
    let t = x.len() / kvd;
    assert!(
        x.len() == t * kvd && pos0 + t <= n_ctx && cache.len() == dims.n_head_kv * n_ctx * hd,
        "store: {} values at {pos0} into a cache of {} for {dims:?}",
        x.len(),
        cache.len()
    );
    for i in 0..t {
        for h in 0..dims.n_head_kv {
            let dst = (h * n_ctx + pos0 + i) * hd;
            T::store(
                kern,
                &x[i * kvd + h * hd..i * kvd + (h + 1) * hd],
                &mut cache[dst..dst + hd],
            );
        }
    }
}
