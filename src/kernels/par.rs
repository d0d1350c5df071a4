//! Row-parallel driver: splits the rows of `[n_tok, rows]` outputs into chunks
//! handed to rayon's current pool one by one (work stealing, no fixed shares), so
//! a thread that is descheduled by a busy neighbour holds up at most one chunk.
//! Several outputs (one per matrix of a fused call) share one dispatch.

use rayon::prelude::*;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Write access to the rows `r0..r1` of the tokens `t0..t0 + n_tok` of one output
/// `y` ([all tokens, rows]); token indices passed to its methods count from `t0`.
/// Only [`for_each_row_chunk`] / [`for_each_row_chunk_multi`] make these, with
/// disjoint row ranges.
pub struct RowChunkOut<'a> {
    /// Points at `y[t0 * rows]`.
    ptr: *mut f32,
    rows: usize,
    n_tok: usize,
    r0: usize,
    r1: usize,
    _y: PhantomData<&'a mut [f32]>,
}

// SAFETY: a `RowChunkOut` is the only writer of its row range of `y` (ranges are
// disjoint, see `for_each_row_chunk_multi`), and `y` is mutably borrowed for `'a`.
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
            // inside the tokens of y this chunk covers (checked in
            // for_each_row_chunk_multi); row r belongs to this chunk only, so no other
            // thread writes this element.
            unsafe { *self.ptr.add((t0 + i) * self.rows + r) = v };
        }
    }

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
            // the n_rows elements from (t0 + t) * rows + r0 are inside the tokens of y
            // this chunk covers (checked in for_each_row_chunk_multi); those rows
            // belong to this chunk only, so no other thread writes them.
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
    for_each_row_chunk_multi(
        &mut [y],
        &[rows],
        n_tok,
        0..n_tok,
        &[chunk],
        parallel,
        |_, o| f(o),
    )
}

/// Most outputs one [`for_each_row_chunk_multi`] call takes.
pub const MAX_OUTPUTS: usize = 4;

/// Calls `f(i, out)` once per chunk of `chunks[i]` rows of each output `ys[i]`
/// ([n_tok, rows[i]]), restricted to the tokens `tokens`, all in ONE parallel
/// dispatch on rayon's current pool (or inline when `parallel` is false); chunks
/// are handed out output by output, in row order. Panics (a bug) if the lengths do
/// not match, a chunk is 0, `tokens` runs past `n_tok` or there are more than
/// [`MAX_OUTPUTS`] outputs.
pub fn for_each_row_chunk_multi<F>(
    ys: &mut [&mut [f32]],
    rows: &[usize],
    n_tok: usize,
    tokens: Range<usize>,
    chunks: &[usize],
    parallel: bool,
    f: F,
) where
    F: Fn(usize, RowChunkOut<'_>) + Sync,
{
    let n = ys.len();
    assert!(
        n <= MAX_OUTPUTS && rows.len() == n && chunks.len() == n,
        "{n} outputs, {} row counts, {} chunk sizes (max {MAX_OUTPUTS})",
        rows.len(),
        chunks.len()
    );
    assert!(
        tokens.start <= tokens.end && tokens.end <= n_tok,
        "tokens {tokens:?} outside 0..{n_tok}"
    );
    // Per output: its base pointer at token `tokens.start` (as an address, so the
    // closure is Sync) and the first global chunk index of each output.
    let mut base = [0usize; MAX_OUTPUTS];
    let mut first = [0usize; MAX_OUTPUTS + 1];
    for i in 0..n {
        assert_eq!(
            ys[i].len(),
            n_tok * rows[i],
            "output {i} has {} values, want {n_tok} x {}",
            ys[i].len(),
            rows[i]
        );
        assert!(chunks[i] > 0, "row chunk must be > 0");
        base[i] = ys[i][tokens.start * rows[i]..].as_mut_ptr() as usize;
        first[i + 1] = first[i] + rows[i].div_ceil(chunks[i]);
    }
    let nt = tokens.len();
    let total = first[n];
    let run = |c: usize| {
        let i = (0..n).rfind(|&i| first[i] <= c).unwrap_or(0);
        let k = c - first[i];
        f(
            i,
            RowChunkOut {
                ptr: base[i] as *mut f32,
                rows: rows[i],
                n_tok: nt,
                r0: k * chunks[i],
                r1: ((k + 1) * chunks[i]).min(rows[i]),
                _y: PhantomData,
            },
        )
    };
    if parallel && total > 1 {
        // One leaf per chunk: idle threads steal single chunks.
        (0..total).into_par_iter().with_max_len(1).for_each(run);
    } else {
        (0..total).for_each(run);
    }
}

/// Starts rayon's global pool with `threads` threads (`None`: one per CPU) and runs
/// `f` on one of its workers, returning what `f` returns.
///
/// Decode makes ~120 parallel calls per token. Called from a thread outside the pool,
/// each one hands its job to the pool and sleeps on a condition variable until the
/// job is done: two wake-ups per call and three threads on the cores. From inside
/// the pool, the calling worker runs chunks itself and its peer steals the rest
/// (measured on 0.5B q4_0, `-t 2`: tg 63.7–65.4 t/s against 60.8–62.3 from outside,
/// alternating runs). Workers get the main thread's 8 MiB stack.
pub fn run_on_pool<R: Send>(
    threads: Option<usize>,
    f: impl FnOnce() -> R + Send,
) -> Result<R, String> {
    let mut b = rayon::ThreadPoolBuilder::new().stack_size(8 << 20);
    if let Some(t) = threads {
        b = b.num_threads(t);
    }
    b.build_global().map_err(|e| match threads {
        Some(t) => format!("cannot start {t} threads: {e}"),
        None => format!("cannot start the worker threads: {e}"),
    })?;
    Ok(rayon::scope(|_| f()))
}

/// A polling peer that finds itself descheduled for longer than this (another
/// process wants its core) stops polling.
const PREEMPTED: Duration = Duration::from_micros(200);

/// How long after such a preemption forward passes run without a polling peer.
const BACK_OFF: Duration = Duration::from_millis(250);

/// Nanoseconds since [`epoch`] before which [`with_polling_peer`] does not poll.
static QUIET_AFTER_NS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn since_epoch_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Sets the flag when dropped, so a panicking `f` still releases the peer.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `f` on the calling pool worker while one other worker of the pool polls
/// for the parallel jobs `f` makes instead of going to sleep between them.
///
/// A decode step makes ~100 parallel calls a few microseconds apart. Between two
/// calls rayon's idle worker yields to the OS, then sleeps; the next call's wake-up
/// reached it 11 us late on average here (a KVM guest: a halted vCPU is woken by an
/// IPI through the host), and the calling thread ran that part of the call alone.
/// A polling peer joins within ~1 us (0.5B q4_0, 2 threads: tg 66-68 -> 72 t/s on
/// 2 MiB pages, 58-62 -> 62-66 on the file mapping). Polling only lasts while `f`
/// runs, and a peer that gets descheduled for more than [`PREEMPTED`] (a busy
/// neighbour on its core) stops and keeps every pass of the next [`BACK_OFF`]
/// without one: a polling thread on a shared core takes time from the caller (tg
/// with a busy-loop neighbour fell from 52% to 34% of quiet speed without this).
/// Results are the same either way: polling changes who runs a chunk, not how.
pub fn with_polling_peer<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let quiet = since_epoch_ns() >= QUIET_AFTER_NS.load(Ordering::Relaxed);
    if !quiet || rayon::current_num_threads() < 2 || rayon::current_thread_index().is_none() {
        return f();
    }
    let stop = AtomicBool::new(false);
    let caller = rayon::current_thread_index();
    let (r, ()) = rayon::join(
        || {
            let _stop = Stop(&stop);
            f()
        },
        || poll(&stop, caller),
    );
    r
}

/// Runs the pool's pending jobs until `stop` (see [`with_polling_peer`]); returns at
/// once on the caller's own thread (it must not poll for itself) and when preempted.
fn poll(stop: &AtomicBool, caller: Option<usize>) {
    if rayon::current_thread_index() == caller {
        return;
    }
    let mut last = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let ran = rayon::yield_now() == Some(rayon::Yield::Executed);
        let now = Instant::now();
        if !ran && now.duration_since(last) > PREEMPTED {
            let until = since_epoch_ns().saturating_add(BACK_OFF.as_nanos() as u64);
            QUIET_AFTER_NS.fetch_max(until, Ordering::Relaxed);
            return;
        }
        last = now;
        if !ran {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool")
    }

    /// f runs on the caller's thread and its parallel work completes; outside a pool
    /// (no peer to ask) f simply runs.
    #[test]
    fn polling_peer_runs_f_and_its_jobs() {
        let p = pool();
        let (sum, same_thread) = p.install(|| {
            let me = rayon::current_thread_index();
            with_polling_peer(|| {
                let s: usize = (0..100_000usize).into_par_iter().with_max_len(64).sum();
                (s, rayon::current_thread_index() == me)
            })
        });
        assert_eq!(sum, 100_000 * 99_999 / 2);
        assert!(same_thread);
        assert_eq!(with_polling_peer(|| 7), 7);
        for _ in 0..200 {
            assert_eq!(p.install(|| with_polling_peer(|| 1 + 1)), 2);
        }
    }

    /// A panic in f reaches the caller, and the peer stops polling (the pool still
    /// takes work afterwards instead of hanging on a thread that never returns).
    #[test]
    fn polling_peer_stops_when_f_panics() {
        let p = pool();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            p.install(|| with_polling_peer(|| panic!("boom")))
        }));
        assert!(r.is_err());
        let s: u64 = p.install(|| with_polling_peer(|| (0..1000u64).into_par_iter().sum()));
        assert_eq!(s, 999 * 1000 / 2);
    }
}
