//! A decoding step (one token, last logits only) allocates nothing: all
//! buffers are made by State::new. Checked with a counting global allocator
//! that counts every thread, inside a one-thread rayon pool: with two or more
//! workers rayon's own work-stealing deques occasionally grow (measured: 12 of
//! 100 runs saw 2 allocations), which is the scheduler's bookkeeping, not ours.

#[path = "forward_common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use quant_formats::gguf::Gguf;

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decode_step_allocates_nothing() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    for arch in ["qwen", "qwen2", "qwen3", "llama"] {
        let mut t = common::Tiny::new(arch);
        if arch == "qwen" {
            t.n_kv = t.n_head;
        }
        let bytes = t.build();
        let mut buf = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..bytes.len()].copy_from_slice(&bytes);
        let g = Gguf::parse(&bytemuck::cast_slice::<u64, u8>(&buf)[..bytes.len()]).unwrap();
        let m = qwen::Model::load(&g).unwrap();
        for kv in [qwen::model::KvType::F32, qwen::model::KvType::F16] {
            let mut st = m.new_state_kv(64, 8, kv, kv);
            // Every thread's allocations count, so everything runs inside one
            // pool whose worker is up before counting starts (a lazily started
            // global pool allocates its deques while its threads spin up).
            pool.install(|| {
                m.forward(&mut st, &[1, 2, 3, 4, 5], 0, false).unwrap();
                m.forward(&mut st, &[6], 5, false).unwrap();
                COUNTING.store(true, Ordering::SeqCst);
                for pos in 6..30 {
                    m.forward(&mut st, &[pos as u32], pos, false).unwrap();
                }
                COUNTING.store(false, Ordering::SeqCst);
            });
            let n = ALLOCS.swap(0, Ordering::SeqCst);
            assert_eq!(
                n, 0,
                "{arch} (KV {kv}): 24 decode steps made {n} heap allocations"
            );
        }
    }
}
