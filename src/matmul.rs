//! `y = x · Wᵀ` for a weight matrix in any supported ggml type: quantizes the
//! activations once per call (q8_0 for q4_0/q5_0/q8_0 weights, q8_1 for q4_1/q5_1,
//! as ggml does; float weights use the f32 activations as they are; the same pass
//! checks they are finite), splits the rows over rayon's current pool in small
//! chunks (work stealing, so a descheduled thread holds up one chunk, not a fixed
//! share), and calls the active kernel level's tiles: up to 4 weight rows against up
//! to `tile_tokens` tokens (decode is a streaming GEMV, each activation group loaded
//! once per 4 rows). Rounds of 16+ tokens against q4_0/q5_0/q8_0 go through the
//! level's GEMM where it has one (4 rows x 16 tokens, weights unpacked once per 4
//! rows per round). [`matmul_multi`] runs several matrices with the same input in
//! one dispatch.

use crate::kernels::{
    self, act_groups, generic, ActGemm, ActQ8x4, FloatTileFn, GemmFn, GemmRows, Kernels,
    RowChunkOut, TileFn, GEMM_ROWS, GEMM_TOKENS, MAX_TILE_ROWS, MAX_TILE_TOKENS,
};
use half::{bf16, f16};
use quant_formats::block::QK;
use quant_formats::GgmlType;
use rayon::prelude::*;
use std::time::Instant;

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
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
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
    /// The same activations for the prefill GEMM: [max_tokens / 16 (rounded up),
    /// max_cols / 32] token blocks of [`ActGemm`]; empty when the level has no GEMM.
    gemm: Vec<ActGemm>,
    /// q8_K activations for the K-quant types.
    kq: kernels::kq::KqScratch,
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
            gemm: if kernels::LEVELS
                .iter()
                .any(|l| kernels::table(l).is_some_and(|k| k.gemm.is_some()))
                && max_tokens >= GEMM_TOKENS
            {
                vec![ActGemm::default(); max_tokens.div_ceil(GEMM_TOKENS) * max_cols.div_ceil(QK)]
            } else {
                Vec::new()
            },
            kq: kernels::kq::KqScratch::new(max_tokens, max_cols),
        }
    }
}

/// Most matrices one [`matmul_multi`] call takes.
pub const MAX_MULTI: usize = 4;

/// `y[t*rows + r] = sum_c W[r,c] * x[t*cols + c]`; `x`: [n_tok, cols], `y`: [n_tok, rows].
/// No allocation; threads from rayon's current pool. Call it from inside the pool
/// (`ThreadPool::install` around the whole generation loop): called from a thread
/// outside the pool, every call hands its work to a worker and sleeps until it is
/// done, a cross-thread round trip per matrix. Panics (a caller bug) when the
/// slice lengths do not match the shapes or `w.cols` exceeds the scratch's `max_cols`.
///
/// A non-finite activation makes every output NaN for quantized weights (rounding
/// to 8 bits would turn it into an ordinary code; ggml does and prints garbage), so
/// that the caller's check on the logits sees it; float weights propagate it.
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
    matmul_multi_with(k, &[w], x, &mut [y], n_tok, scratch)
}

/// Several matrices with the same input in one call: `ys[i] = x · ws[i]ᵀ` as
/// [`matmul`] would give it, bit for bit, but `x` ([n_tok, cols]) is quantized once
/// and all the matrices' rows go to the threads in ONE parallel dispatch (q, k, v;
/// gate, up), so a decode step waits for the threads fewer times. `ws`: 1 to
/// [`MAX_MULTI`] matrices with the same `cols` (any types); `ys[i]`: [n_tok,
/// ws[i].rows]. A non-finite activation with any quantized matrix makes every
/// output NaN. Panics (a caller bug) when shapes do not match.
pub fn matmul_multi(
    ws: &[&QMatrix],
    x: &[f32],
    ys: &mut [&mut [f32]],
    n_tok: usize,
    scratch: &mut MatmulScratch,
) {
    matmul_multi_with(kernels::active(), ws, x, ys, n_tok, scratch)
}

/// [`matmul_multi`] with an explicit kernel table.
pub fn matmul_multi_with(
    k: &Kernels,
    ws: &[&QMatrix],
    x: &[f32],
    ys: &mut [&mut [f32]],
    n_tok: usize,
    scratch: &mut MatmulScratch,
) {
    let n = ws.len();
    assert!(
        (1..=MAX_MULTI).contains(&n) && ys.len() == n,
        "matmul: {n} matrices and {} outputs (1..={MAX_MULTI})",
        ys.len()
    );
    let cols = ws[0].cols;
    assert_eq!(
        x.len(),
        n_tok * cols,
        "matmul: x has {} values, want {n_tok} x {cols}",
        x.len()
    );
    let mut rows = [0usize; MAX_MULTI];
    for (i, (w, y)) in ws.iter().zip(ys.iter()).enumerate() {
        assert_eq!(
            w.cols, cols,
            "matmul: matrix {i} has {} columns, not {cols}",
            w.cols
        );
        assert_eq!(
            y.len(),
            n_tok * w.rows,
            "matmul: y[{i}] has {} values, want {n_tok} x {}",
            y.len(),
            w.rows
        );
        rows[i] = w.rows;
    }
    let total_rows: usize = rows.iter().sum();
    if n_tok == 0 || total_rows == 0 {
        return;
    }
    // K-quant matrices multiply against q8_K activations: all of the call's K matrices
    // go to kernels::kq in one dispatch, the others through the path below together.
    if ws.iter().any(|w| kernels::kq::KQ_TYPES.contains(&w.dtype)) {
        let mut split_w = [[ws[0]; MAX_MULTI]; 2];
        let mut split_y: [[&mut [f32]; MAX_MULTI]; 2] = Default::default();
        let mut split_i = [[0usize; MAX_MULTI]; 2];
        let mut m = [0usize; 2];
        for (i, (&w, y)) in ws.iter().zip(ys.iter_mut()).enumerate() {
            let g = usize::from(kernels::kq::KQ_TYPES.contains(&w.dtype));
            (split_w[g][m[g]], split_y[g][m[g]], split_i[g][m[g]]) = (w, std::mem::take(y), i);
            m[g] += 1;
        }
        if m[0] > 0 {
            matmul_multi_with(
                k,
                &split_w[0][..m[0]],
                x,
                &mut split_y[0][..m[0]],
                n_tok,
                scratch,
            );
        }
        let (kw, ky) = (&split_w[1][..m[1]], &mut split_y[1][..m[1]]);
        let k_rows = kw.iter().map(|w| w.rows).sum();
        let parallel = stall::allow_parallel();
        let (key, start) = (stall::key(kw[0].dtype, k_rows, cols, n_tok), Instant::now());
        let kq = kernels::kq::table(k.name);
        kernels::kq::matmul_multi_with(kq, kw, x, ky, n_tok, &mut scratch.kq, parallel);
        if parallel {
            stall::record(key, start.elapsed());
        }
        // Give the caller's slice list back as it was.
        for g in 0..2 {
            for (y, &i) in split_y[g][..m[g]].iter_mut().zip(&split_i[g][..m[g]]) {
                ys[i] = std::mem::take(y);
            }
        }
        return;
    }
    let quantized = ws.iter().any(|w| is_quantized(w.dtype));
    assert!(
        !quantized || cols <= scratch.max_cols,
        "matmul: row length {cols} exceeds the scratch's max_cols {}",
        scratch.max_cols
    );
    let threads = rayon::current_num_threads().max(1);
    // Below ~64K multiply-adds a parallel call costs more than it saves. A parallel
    // call that stalled (a worker descheduled mid-chunk) makes the next calls run on
    // the calling thread alone for a while; see `stall`.
    let parallel = threads > 1
        && total_rows > 1
        && total_rows * cols * n_tok >= 1 << 16
        && stall::allow_parallel();
    let mut chunks = [1usize; MAX_MULTI];
    for (c, &r) in chunks.iter_mut().zip(&rows[..n]) {
        *c = chunk_rows(r, cols, threads);
    }
    let tile_t = k.tile_tokens.clamp(1, MAX_TILE_TOKENS);
    let key = stall::key(ws[0].dtype, total_rows, cols, n_tok);
    let start = Instant::now();

    let ng = act_groups(cols / QK);
    let step = if quantized { scratch.max_tokens } else { n_tok };
    for t0 in (0..n_tok).step_by(step) {
        let nt = step.min(n_tok - t0);
        let xs = &x[t0 * cols..(t0 + nt) * cols];
        let acts = &mut scratch.acts[..if quantized { nt * ng } else { 0 }];
        if quantized {
            // One pass over x: quantize and check it is finite.
            let finite = if parallel && nt > 1 {
                acts.par_chunks_mut(ng)
                    .zip(xs.par_chunks(cols))
                    .map(|(qt, xt)| (k.quantize)(xt, qt))
                    .reduce(|| true, |a, b| a && b)
            } else {
                acts.chunks_mut(ng)
                    .zip(xs.chunks(cols))
                    .fold(true, |ok, (qt, xt)| (k.quantize)(xt, qt) && ok)
            };
            if !finite {
                for y in ys.iter_mut() {
                    y.fill(f32::NAN);
                }
                return;
            }
        }
        let acts = &*acts;
        // Blocks of 16+ tokens against q4_0/q5_0/q8_0 weights: the GEMM layout too.
        let nb = cols / QK;
        let use_gemm = k.gemm.is_some()
            && nt >= GEMM_TOKENS
            && nb <= MAX_GEMM_BLOCKS
            && ws.iter().any(|w| gemm_unpack_kind(w.dtype))
            && scratch.gemm.len() >= nt.div_ceil(GEMM_TOKENS) * nb;
        let gx = &mut scratch.gemm[..if use_gemm {
            nt.div_ceil(GEMM_TOKENS) * nb
        } else {
            0
        }];
        if use_gemm {
            let build = |(tb, gb): (usize, &mut [ActGemm])| {
                let tn = GEMM_TOKENS.min(nt - tb * GEMM_TOKENS);
                let a = &acts[tb * GEMM_TOKENS * ng..(tb * GEMM_TOKENS + tn) * ng];
                kernels::gemm_acts(a, tn, gb);
            };
            if parallel {
                gx.par_chunks_mut(nb).enumerate().for_each(build);
            } else {
                gx.chunks_mut(nb).enumerate().for_each(build);
            }
        }
        let gx = &*gx;
        kernels::for_each_row_chunk_multi(
            ys,
            &rows[..n],
            n_tok,
            t0..t0 + nt,
            &chunks[..n],
            parallel,
            |i, mut out| run_chunk(k, ws[i], xs, acts, gx, nt, tile_t, &mut out),
        );
    }
    if parallel {
        stall::record(key, start.elapsed());
    }
}

/// Whether `dtype` multiplies against q8 activations (else f32 ones).
fn is_quantized(dtype: GgmlType) -> bool {
    !matches!(dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16)
}

/// Rows per parallel chunk of a [rows, cols] matrix: ~16 chunks per thread so a
/// late thread holds up little; 4..=256 rows (a multiple of 4, the tile height), and
/// at least ~16K weights so a chunk outweighs its scheduling.
fn chunk_rows(rows: usize, cols: usize, threads: usize) -> usize {
    let min_rows = (16384 / cols.max(1)).clamp(4, 256);
    (rows / (threads * 16))
        .clamp(min_rows, 256)
        .next_multiple_of(MAX_TILE_ROWS)
}

/// Most blocks per row the GEMM path takes (its unpacked rows live on the stack).
const MAX_GEMM_BLOCKS: usize = 512;

/// Whether `dtype` unpacks to the GEMM's `d * code` form.
fn gemm_unpack_kind(dtype: GgmlType) -> bool {
    matches!(dtype, GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0)
}

/// One chunk of rows of `w` for the `nt` tokens of this round: `xs` ([nt, cols] f32)
/// for float weights, `acts` ([nt, act_groups(cols / 32)] q8) for quantized ones,
/// `gx` (the same in GEMM token blocks, or empty) for the GEMM.
#[allow(clippy::too_many_arguments)]
fn run_chunk(
    k: &Kernels,
    w: &QMatrix,
    xs: &[f32],
    acts: &[ActQ8x4],
    gx: &[ActGemm],
    nt: usize,
    tile_t: usize,
    out: &mut RowChunkOut,
) {
    let (cols, nb) = (w.cols, w.cols / QK);
    let rows = out.rows();
    let gemm = k.gemm.filter(|_| !gx.is_empty());
    match (w.dtype, gemm) {
        (GgmlType::F32, _) => float_chunk(k.f32, cast(w), cols, xs, nt, tile_t, out),
        (GgmlType::F16, _) => float_chunk(k.f16, cast::<f16>(w), cols, xs, nt, tile_t, out),
        (GgmlType::Bf16, _) => float_chunk(k.bf16, cast::<bf16>(w), cols, xs, nt, tile_t, out),
        (GgmlType::Q8_0, Some(g)) => {
            let r = gemm_chunk(g, generic::unpack_gemm_q8_0, cast(w), nb, gx, nt, out);
            q_chunk(k.q8_0, cast(w), nb, acts, nt, tile_t, r..rows.end, out)
        }
        (GgmlType::Q4_0, Some(g)) => {
            let r = gemm_chunk(g, generic::unpack_gemm_q4_0, cast(w), nb, gx, nt, out);
            q_chunk(k.q4_0, cast(w), nb, acts, nt, tile_t, r..rows.end, out)
        }
        (GgmlType::Q5_0, Some(g)) => {
            let r = gemm_chunk(g, generic::unpack_gemm_q5_0, cast(w), nb, gx, nt, out);
            q_chunk(k.q5_0, cast(w), nb, acts, nt, tile_t, r..rows.end, out)
        }
        (GgmlType::Q8_0, None) => q_chunk(k.q8_0, cast(w), nb, acts, nt, tile_t, rows, out),
        (GgmlType::Q4_0, None) => q_chunk(k.q4_0, cast(w), nb, acts, nt, tile_t, rows, out),
        (GgmlType::Q5_0, None) => q_chunk(k.q5_0, cast(w), nb, acts, nt, tile_t, rows, out),
        (GgmlType::Q4_1, _) => q_chunk(k.q4_1, cast(w), nb, acts, nt, tile_t, rows, out),
        (GgmlType::Q5_1, _) => q_chunk(k.q5_1, cast(w), nb, acts, nt, tile_t, rows, out),
        (other, _) => panic!("matmul: type {other} passed QMatrix::new but has no kernel"),
    }
}

/// Unpacks rows of weights into GEMM rows: (w, codes, biases, scales).
type UnpackFn<W> = fn(&[W], &mut [i8], &mut [i32], &mut [f32]);

/// The chunk's rows in groups of [`GEMM_ROWS`] through the GEMM: each group unpacked
/// once (on the stack) and run against every token block of `gx` ([nt / 16 rounded
/// up, nb]). Returns the first row it did not do (the last few rows of a chunk that
/// is not a multiple of 4 go to the tiles).
fn gemm_chunk<W>(
    gemm: GemmFn,
    unpack: UnpackFn<W>,
    w: &[W],
    nb: usize,
    gx: &[ActGemm],
    nt: usize,
    out: &mut RowChunkOut,
) -> usize {
    let range = out.rows();
    let mut q = [0i8; GEMM_ROWS * MAX_GEMM_BLOCKS * 32];
    let mut bias = [0i32; GEMM_ROWS * MAX_GEMM_BLOCKS];
    let mut d = [0.0f32; GEMM_ROWS * MAX_GEMM_BLOCKS];
    let mut buf = [0.0f32; GEMM_ROWS * GEMM_TOKENS];
    let (q, bias, d) = (
        &mut q[..GEMM_ROWS * nb * 32],
        &mut bias[..GEMM_ROWS * nb],
        &mut d[..GEMM_ROWS * nb],
    );
    let mut r = range.start;
    while r + GEMM_ROWS <= range.end {
        unpack(&w[r * nb..(r + GEMM_ROWS) * nb], q, bias, d);
        let rows = GemmRows { q, bias, d };
        for (tb, xb) in gx.chunks_exact(nb).enumerate() {
            gemm(&rows, xb, &mut buf);
            let tn = GEMM_TOKENS.min(nt - tb * GEMM_TOKENS);
            out.write_tile(r, GEMM_ROWS, tb * GEMM_TOKENS, &buf[..tn * GEMM_ROWS]);
        }
        r += GEMM_ROWS;
    }
    r
}

/// Quantized weights `w` ([rows, nb]) against q8 activations `acts` ([nt,
/// act_groups(nb)]), the chunk's rows `rows`: tiles of up to `MAX_TILE_ROWS` rows x
/// `tile_t` tokens.
#[allow(clippy::too_many_arguments)]
fn q_chunk<W>(
    tile: TileFn<W>,
    w: &[W],
    nb: usize,
    acts: &[ActQ8x4],
    nt: usize,
    tile_t: usize,
    range: std::ops::Range<usize>,
    out: &mut RowChunkOut,
) {
    let per_tok = acts.len() / nt;
    let mut buf = [0.0f32; MAX_TILE_TOKENS * MAX_TILE_ROWS];
    // Token blocks outside, rows inside: one block of activations (tile_t tokens)
    // stays in L1 while the chunk's weight rows (<= 256 rows, in L2 after the first
    // block) stream past it.
    let mut t0 = 0;
    while t0 < nt && !range.is_empty() {
        let tb = tile_t.min(nt - t0);
        let xs = &acts[t0 * per_tok..(t0 + tb) * per_tok];
        let mut r = range.start;
        while r < range.end {
            let rr = MAX_TILE_ROWS.min(range.end - r);
            let o = &mut buf[..tb * rr];
            tile(&w[r * nb..(r + rr) * nb], rr, xs, o);
            out.write_tile(r, rr, t0, o);
            r += rr;
        }
        t0 += tb;
    }
}

/// Float weights `w` ([rows, n]) against f32 activations `x` ([nt, n]): tiles of up
/// to 4 rows x `tile_t` tokens, so each loaded weight and activation vector feeds
/// several multiply-adds.
fn float_chunk<W>(
    tile: FloatTileFn<W>,
    w: &[W],
    n: usize,
    x: &[f32],
    nt: usize,
    tile_t: usize,
    out: &mut RowChunkOut,
) {
    let mut buf = [0.0f32; MAX_TILE_TOKENS * MAX_TILE_ROWS];
    let range = out.rows();
    let mut t0 = 0;
    while t0 < nt {
        let tb = tile_t.min(nt - t0);
        let xs = &x[t0 * n..(t0 + tb) * n];
        let mut r = range.start;
        while r < range.end {
            let rr = MAX_TILE_ROWS.min(range.end - r);
            let o = &mut buf[..tb * rr];
            tile(&w[r * n..(r + rr) * n], rr, xs, o);
            out.write_tile(r, rr, t0, o);
            r += rr;
        }
        t0 += tb;
    }
}

/// Counters of the busy-machine fallback (see `stall` below), since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatmulStats {
    /// Parallel calls that waited far longer than usual for a descheduled worker.
    pub stalls: u64,
    /// Calls that ran on the calling thread alone because of a recent stall.
    pub serial_calls: u64,
}

/// The fallback's counters (e.g. for `qwen-bench -v`).
pub fn stats() -> MatmulStats {
    use std::sync::atomic::Ordering::Relaxed;
    MatmulStats {
        stalls: stall::STALLS.load(Relaxed),
        serial_calls: stall::SERIAL_CALLS.load(Relaxed),
    }
}

/// The weight bytes as blocks; `QMatrix::new` checked size and alignment.
fn cast<'a, T: bytemuck::Pod>(w: &QMatrix<'a>) -> &'a [T] {
    bytemuck::cast_slice(w.data)
}

/// Sharing the machine. A parallel call waits for its slowest chunk; when a busy
/// neighbour process gets a worker descheduled in the middle of a chunk, the call
/// waits a whole scheduler slice (milliseconds) with the other core idle. Each
/// parallel call is timed against the fastest recent call of the same shape; one
/// that takes more than 4x that plus 1 ms (a scheduler slice is a few ms; mere noise
/// on a loaded machine is less) counts as a stall, and the next `PENALTY` calls (64,
/// doubling on each further stall up to 1024, halving after
/// every 256 clean parallel calls) run on the calling thread alone, which keeps at
/// least one-thread speed. Results are identical either way (same chunks, same
/// kernels). Cost on a quiet machine: two clock reads and a few relaxed atomics per call.
/// `QWEN_SERIAL_FALLBACK=0` in the environment turns it off.
mod stall {
    use quant_formats::GgmlType;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
    use std::time::Duration;

    const SLOTS: usize = 256;
    const MIN_PENALTY: u32 = 64;
    const MAX_PENALTY: u32 = 1024;
    /// Fastest recent parallel call per shape, in ns (0 = none yet), in the slot
    /// `key % SLOTS`; OWNER holds the full key of the shape the slot times, so two
    /// shapes sharing a slot reset it instead of timing one against the other.
    static BEST_NS: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
    static OWNER: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
    static SERIAL_LEFT: AtomicU32 = AtomicU32::new(0);
    static PENALTY: AtomicU32 = AtomicU32::new(MIN_PENALTY);
    static CLEAN: AtomicU32 = AtomicU32::new(0);
    pub(super) static STALLS: AtomicU64 = AtomicU64::new(0);
    pub(super) static SERIAL_CALLS: AtomicU64 = AtomicU64::new(0);

    /// A full 64-bit key of the call's shape (never 0).
    pub(super) fn key(dtype: GgmlType, rows: usize, cols: usize, n_tok: usize) -> u64 {
        let mut h = dtype.tag() as u64 + 1;
        for v in [rows, cols, n_tok] {
            h = (h ^ v as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            h ^= h >> 29;
        }
        h | 1
    }

    /// Off when the environment says `QWEN_SERIAL_FALLBACK=0`.
    fn enabled() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::env::var("QWEN_SERIAL_FALLBACK").map_or(true, |v| v.trim() != "0"))
    }

    /// False while a stall's penalty lasts (and counts one call off it).
    pub(super) fn allow_parallel() -> bool {
        if !enabled() {
            return true;
        }
        let serial = SERIAL_LEFT
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if serial {
            SERIAL_CALLS.fetch_add(1, Relaxed);
        }
        !serial
    }

    /// A call of `ns` against the shape's fastest recent `best` (0 = none yet).
    pub(super) fn is_stall(best: u64, ns: u64) -> bool {
        best != 0 && ns > best.saturating_mul(4).saturating_add(1_000_000)
    }

    /// Follow the fastest time, drifting up slowly so a lasting change is learnt.
    pub(super) fn next_best(best: u64, ns: u64) -> u64 {
        if best == 0 || ns < best {
            ns
        } else {
            best + best / 64 + 1
        }
    }

    pub(super) fn record(key: u64, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let slot = (key % SLOTS as u64) as usize;
        if OWNER[slot].swap(key, Relaxed) != key {
            BEST_NS[slot].store(ns, Relaxed);
            return;
        }
        let best = BEST_NS[slot].load(Relaxed);
        if is_stall(best, ns) {
            STALLS.fetch_add(1, Relaxed);
            let p = PENALTY.load(Relaxed);
            SERIAL_LEFT.store(p, Relaxed);
            PENALTY.store((p * 2).min(MAX_PENALTY), Relaxed);
            CLEAN.store(0, Relaxed);
        } else {
            BEST_NS[slot].store(next_best(best, ns), Relaxed);
            if CLEAN.fetch_add(1, Relaxed) + 1 >= 256 {
                CLEAN.store(0, Relaxed);
                let p = PENALTY.load(Relaxed);
                PENALTY.store((p / 2).max(MIN_PENALTY), Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stall::{is_stall, key, next_best};
    use quant_formats::GgmlType;

    #[test]
    fn stall_rule() {
        // 80 us calls: a 3 ms wait is a stall, 800 us (noise) is not.
        assert!(!is_stall(0, 5_000_000), "no reference yet");
        assert!(!is_stall(80_000, 800_000));
        assert!(is_stall(80_000, 3_000_000));
        // Prefill-sized calls: 2x slower is not a stall, 5x is.
        assert!(!is_stall(20_000_000, 40_000_000));
        assert!(is_stall(20_000_000, 100_000_000));
        // The reference follows faster calls at once and slower ones slowly.
        assert_eq!(next_best(0, 70), 70);
        assert_eq!(next_best(100, 70), 70);
        assert_eq!(next_best(6400, 9000), 6501);
        assert_ne!(
            key(GgmlType::Q4_0, 896, 896, 1),
            key(GgmlType::Q4_0, 896, 896, 2)
        );
    }
}
