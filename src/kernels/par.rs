//! Row-parallel driver: splits the rows of a `[n_tok, rows]` output into chunks
//! handed to rayon's current pool one by one (work stealing, no fixed shares), so
//! a thread that is descheduled by a busy neighbour holds up at most one chunk.

use rayon::prelude::*;
use std::marker::PhantomData;
use std::ops::Range;

/// Write access to the rows `r0..r1` of every token of `y` ([n_tok, rows]).
/// Only [`for_each_row_chunk`] makes these, with disjoint row ranges.
pub struct RowChunkOut<'a> {
    ptr: *mut f32,
    rows: usize,
    n_tok: usize,
    r0: usize,
    r1: usize,
    _y: PhantomData<&'a mut [f32]>,
}

// SAFETY: a `RowChunkOut` is the only writer of its row range of `y` (ranges are
// disjoint, see `for_each_row_chunk`), and `y` is mutably borrowed for `'a`.
unsafe impl Send for RowChunkOut<'_> {}

impl RowChunkOut<'_> {
    /// The rows this chunk owns.
    pub fn rows(&self) -> Range<usize> {
        self.r0..self.r1
    }

    /// `y[(t0 + i) * rows + r] = vals[i]` for every `i`. Panics (a bug) if `r` is not
    /// this chunk's or the tokens run past `n_tok`.
    #[inline]
    pub fn write(&mut self, r: usize, t0: usize, vals: &[f32]) {
        assert!(
            (self.r0..self.r1).contains(&r) && t0 + vals.len() <= self.n_tok,
            "row {r} tokens {t0}+{} outside chunk {}..{} x {}",
            vals.len(),
            self.r0,
            self.r1,
            self.n_tok
        );
        for (i, &v) in vals.iter().enumerate() {
            // SAFETY: r < rows and t0 + i < n_tok (checked above), so the index is
            // inside y (len n_tok * rows, checked in for_each_row_chunk); row r belongs
            // to this chunk only, so no other thread writes this element.
            unsafe { *self.ptr.add((t0 + i) * self.rows + r) = v };
        }
    }
}

impl RowChunkOut<'_> {
    /// A tile's results: `y[(t0 + t) * rows + r0 + r] = vals[t * n_rows + r]` for
    /// `vals`: [nt, n_rows]. Panics (a bug) if the rows `r0..r0 + n_rows` are not all
    /// this chunk's or the tokens run past `n_tok`.
    #[inline]
    pub fn write_tile(&mut self, r0: usize, n_rows: usize, t0: usize, vals: &[f32]) {
        let nt = vals.len() / n_rows.max(1);
        assert!(
            n_rows > 0
                && vals.len() == nt * n_rows
                && self.r0 <= r0
                && r0 + n_rows <= self.r1
                && t0 + nt <= self.n_tok,
            "rows {r0}+{n_rows} tokens {t0}+{nt} outside chunk {}..{} x {}",
            self.r0,
            self.r1,
            self.n_tok
        );
        for (t, v) in vals.chunks_exact(n_rows).enumerate() {
            // SAFETY: r0 + n_rows <= r1 <= rows and t0 + t < n_tok (checked above), so
            // the n_rows elements from (t0 + t) * rows + r0 are inside y (len n_tok *
            // rows, checked in for_each_row_chunk); those rows belong to this chunk
            // only, so no other thread writes them.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    v.as_ptr(),
                    self.ptr.add((t0 + t) * self.rows + r0),
                    n_rows,
                )
            };
        }
    }
}

/// Calls `f` once per chunk of `chunk` rows of `y` ([n_tok, rows]), in parallel on
/// rayon's current pool (or inline when `parallel` is false). Panics (a bug) if
/// `y.len() != n_tok * rows` or `chunk == 0`.
pub fn for_each_row_chunk<F>(
    y: &mut [f32],
    rows: usize,
    n_tok: usize,
    chunk: usize,
    parallel: bool,
    f: F,
) where
    F: Fn(RowChunkOut<'_>) + Sync,
{
    assert_eq!(
        y.len(),
        n_tok * rows,
        "output has {} values, want {n_tok} x {rows}",
        y.len()
    );
    assert!(chunk > 0, "row chunk must be > 0");
    let ptr = y.as_mut_ptr() as usize;
    let make = |c: usize| RowChunkOut {
        ptr: ptr as *mut f32,
        rows,
        n_tok,
        r0: c * chunk,
        r1: ((c + 1) * chunk).min(rows),
        _y: PhantomData,
    };
    let n_chunks = rows.div_ceil(chunk);
    if parallel && n_chunks > 1 {
        // One leaf per chunk: idle threads steal single chunks.
        (0..n_chunks)
            .into_par_iter()
            .with_max_len(1)
            .for_each(|c| f(make(c)));
    } else {
        for c in 0..n_chunks {
            f(make(c));
        }
    }
}
