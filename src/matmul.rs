//! `y = x · Wᵀ` for a weight matrix in any supported ggml type: quantizes the
//! activations once per call (q8_0 for q4_0/q5_0/q8_0 weights, q8_1 for q4_1/q5_1,
//! as ggml does; float weights use the f32 activations as they are), splits the
//! rows over rayon's current pool in small chunks (work stealing, so a descheduled
//! thread holds up one chunk, not a fixed share), and calls the active kernel
//! level's tile kernel: one weight row against up to `tile_tokens` tokens, so each
//! weight block is read from memory once per block of tokens (prefill is a GEMM,
//! decode a streaming GEMV).

use crate::kernels::{self, act_groups, ActQ8x4, Kernels, MAX_TILE_TOKENS};
use half::{bf16, f16};
use quant_formats::block::QK;
use quant_formats::GgmlType;
use rayon::prelude::*;

/// A weight matrix borrowed from the file: [rows, cols], row-major; a row is
/// `cols` elements of `dtype`.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

/// The weight types [`matmul`] handles.
pub const SUPPORTED: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
];

impl<'a> QMatrix<'a> {
    /// Checks the type is supported, `cols` is a positive multiple of its block size,
    /// `data` holds exactly `rows` rows and is aligned for the block type. `name`
    /// (the tensor's) goes into the error message.
    pub fn new(
        name: &str,
        dtype: GgmlType,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self, String> {
        if !SUPPORTED.contains(&dtype) {
            return Err(format!(
                "tensor {name}: type {dtype} is not supported by matmul (supported: {})",
                SUPPORTED
                    .iter()
                    .map(|t| t.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if cols == 0 {
            return Err(format!("tensor {name}: row length is 0"));
        }
        let row_bytes = dtype.row_bytes(cols as u64).ok_or_else(|| {
            format!(
                "tensor {name}: row length {cols} is not a multiple of {dtype}'s block size {}",
                dtype.block_size()
            )
        })?;
        let need = (row_bytes as u128) * (rows as u128);
        if need != data.len() as u128 {
            return Err(format!(
                "tensor {name}: {rows} x {cols} {dtype} needs {need} bytes, got {}",
                data.len()
            ));
        }
        let align = match dtype {
            GgmlType::F32 => 4,
            _ => 2,
        };
        if !(data.as_ptr() as usize).is_multiple_of(align) {
            return Err(format!(
                "tensor {name}: data at address {:p} is not {align}-byte aligned as {dtype} needs",
                data.as_ptr()
            ));
        }
        Ok(Self {
            dtype,
            rows,
            cols,
            data,
        })
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }
}

/// Quantized activations, allocated once at load: room for `max_tokens` rows of
/// `max_cols` values (q8_0 and q8_1 data at once, see [`ActQ8x4`]).
#[derive(Debug, Clone)]
pub struct MatmulScratch {
    max_tokens: usize,
    max_cols: usize,
    /// [max_tokens, act_groups(max_cols / 32)]
    acts: Vec<ActQ8x4>,
}

impl MatmulScratch {
    /// `max_tokens`: most tokens per call that are quantized at once (more are done in
    /// rounds); `max_cols`: the widest matrix row.
    pub fn new(max_tokens: usize, max_cols: usize) -> Self {
        let max_tokens = max_tokens.max(1);
        let ng = act_groups(max_cols.div_ceil(QK));
        Self {
            max_tokens,
            max_cols,
            acts: vec![ActQ8x4::default(); max_tokens * ng],
        }
    }
}

/// `y[t*rows + r] = sum_c W[r,c] * x[t*cols + c]`; `x`: [n_tok, cols], `y`: [n_tok, rows].
/// No allocation; threads from rayon's current pool. Call it from inside the pool
/// (`ThreadPool::install` around the whole generation loop): called from a thread
/// outside the pool, every call hands its work to a worker and sleeps until it is
/// done, a cross-thread round trip per matrix. Panics (a caller bug) when the
/// slice lengths do not match the shapes or `w.cols` exceeds the scratch's `max_cols`.
pub fn matmul(w: &QMatrix, x: &[f32], y: &mut [f32], n_tok: usize, scratch: &mut MatmulScratch) {
    matmul_with(kernels::active(), w, x, y, n_tok, scratch)
}

/// [`matmul`] with an explicit kernel table (tests and benches compare levels).
pub fn matmul_with(
    k: &Kernels,
    w: &QMatrix,
    x: &[f32],
    y: &mut [f32],
    n_tok: usize,
    scratch: &mut MatmulScratch,
) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(
        x.len(),
        n_tok * cols,
        "matmul: x has {} values, want {n_tok} x {cols}",
        x.len()
    );
    assert_eq!(
        y.len(),
        n_tok * rows,
        "matmul: y has {} values, want {n_tok} x {rows}",
        y.len()
    );
    if n_tok == 0 || rows == 0 {
        return;
    }
    let plan = Plan::new(k, rows, cols, n_tok);
    match w.dtype {
        GgmlType::F32 => plan.run(k.f32, cast(w), cols, x, y, n_tok),
        GgmlType::F16 => plan.run(k.f16, cast::<f16>(w), cols, x, y, n_tok),
        GgmlType::Bf16 => plan.run(k.bf16, cast::<bf16>(w), cols, x, y, n_tok),
        GgmlType::Q8_0 => plan.run_q(k.q8_0, k.quantize, cast(w), x, y, n_tok, scratch),
        GgmlType::Q4_0 => plan.run_q(k.q4_0, k.quantize, cast(w), x, y, n_tok, scratch),
        GgmlType::Q5_0 => plan.run_q(k.q5_0, k.quantize, cast(w), x, y, n_tok, scratch),
        GgmlType::Q4_1 => plan.run_q(k.q4_1, k.quantize, cast(w), x, y, n_tok, scratch),
        GgmlType::Q5_1 => plan.run_q(k.q5_1, k.quantize, cast(w), x, y, n_tok, scratch),
        other => panic!("matmul: type {other} passed QMatrix::new but has no kernel"),
    }
}

/// The weight bytes as blocks; `QMatrix::new` checked size and alignment.
fn cast<'a, T: bytemuck::Pod>(w: &QMatrix<'a>) -> &'a [T] {
    bytemuck::cast_slice(w.data)
}

/// How one call is split: tokens per tile, rows per parallel chunk.
struct Plan {
    tile_t: usize,
    chunk: usize,
    parallel: bool,
}

impl Plan {
    fn new(k: &Kernels, rows: usize, cols: usize, n_tok: usize) -> Self {
        let threads = rayon::current_num_threads().max(1);
        // Below ~64K multiply-adds a parallel call costs more than it saves.
        let parallel = threads > 1 && rows > 1 && rows * cols * n_tok >= 1 << 16;
        // ~16 chunks per thread so a late thread holds up little; rows per chunk in 4..=256
        // (multiple of 4), and at least ~16K weights so a chunk outweighs its scheduling.
        let min_rows = (16384 / cols).clamp(4, 256);
        let chunk = (rows / (threads * 16))
            .clamp(min_rows, 256)
            .next_multiple_of(4);
        Self {
            tile_t: k.tile_tokens.clamp(1, MAX_TILE_TOKENS),
            chunk,
            parallel,
        }
    }

    /// Quantizes `x` ([n_tok, cols]) into the scratch in rounds of its `max_tokens`, then runs.
    #[allow(clippy::too_many_arguments)]
    fn run_q<W: Sync>(
        &self,
        tile: fn(&[W], &[ActQ8x4], &mut [f32]),
        quantize: fn(&[f32], &mut [ActQ8x4]),
        w: &[W],
        x: &[f32],
        y: &mut [f32],
        n_tok: usize,
        scratch: &mut MatmulScratch,
    ) {
        let cols = x.len() / n_tok;
        assert!(
            cols <= scratch.max_cols,
            "matmul: row length {cols} exceeds the scratch's max_cols {}",
            scratch.max_cols
        );
        let ng = act_groups(cols / QK);
        let rows = y.len() / n_tok;
        let step = scratch.max_tokens;
        let acts = &mut scratch.acts;
        for t0 in (0..n_tok).step_by(step) {
            let nt = step.min(n_tok - t0);
            let q = &mut acts[..nt * ng];
            let xs = &x[t0 * cols..(t0 + nt) * cols];
            if self.parallel && nt > 1 {
                q.par_chunks_mut(ng)
                    .zip(xs.par_chunks(cols))
                    .for_each(|(qt, xt)| quantize(xt, qt));
            } else {
                for (qt, xt) in q.chunks_mut(ng).zip(xs.chunks(cols)) {
                    quantize(xt, qt);
                }
            }
            self.run(
                tile,
                w,
                cols / QK,
                q,
                &mut y[t0 * rows..(t0 + nt) * rows],
                nt,
            );
        }
    }

    /// `y` ([n_tok, rows]) from weights `w` ([rows, nb]) and activations `acts`
    /// ([n_tok, per_tok]: f32 values, or q8 groups of 4 blocks).
    fn run<W: Sync, A: Sync>(
        &self,
        tile: fn(&[W], &[A], &mut [f32]),
        w: &[W],
        nb: usize,
        acts: &[A],
        y: &mut [f32],
        n_tok: usize,
    ) {
        let per_tok = acts.len() / n_tok;
        let rows = y.len() / n_tok;
        debug_assert_eq!(w.len(), rows * nb);
        let tile_t = self.tile_t;
        kernels::for_each_row_chunk(y, rows, n_tok, self.chunk, self.parallel, |mut out| {
            let mut buf = [0.0f32; MAX_TILE_TOKENS];
            // Token blocks outside, rows inside: one block of activations (tile_t tokens)
            // stays in L1 while the chunk's weight rows (<= 256 rows, in L2 after the
            // first block) stream past it.
            let mut t0 = 0;
            while t0 < n_tok {
                let nt = tile_t.min(n_tok - t0);
                let xs = &acts[t0 * per_tok..(t0 + nt) * per_tok];
                for r in out.rows() {
                    tile(&w[r * nb..(r + 1) * nb], xs, &mut buf[..nt]);
                    out.write(r, t0, &buf[..nt]);
                }
                t0 += nt;
            }
        });
    }
}
