//! What the qwen-rs runtime accepts, so that the converter refuses a value up
//! front instead of writing a file `qwen-run` will not load or sample from.
//!
//! This crate does not depend on the runtime, so the numbers are copies:
//! - the counts are `MAX_*` in `src/config.rs` (`Config::from_gguf`), which also
//!   requires `layer_norm_rms_epsilon` in (0, 1) and `rope.freq_base` > 1;
//! - the sampling ranges are the literals of `SamplerParams::validate` in
//!   `src/sampler.rs`.
//!
//! `tests/fix_convert_limits.rs` (root crate) holds them against the runtime.

pub const MAX_LAYERS: usize = 1024;
pub const MAX_HEADS: usize = 1024;
pub const MAX_HEAD_DIM: usize = 1024;
pub const MAX_EMBD: usize = 1 << 16;
pub const MAX_FF: usize = 1 << 18;
pub const MAX_VOCAB: usize = 1 << 22;
pub const MAX_CTX: usize = 1 << 24;

/// A closed or half-open range of a sampling setting, as the runtime checks it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub lo: f32,
    pub hi: f32,
    /// `lo` itself is refused.
    pub lo_open: bool,
}

impl Range {
    pub fn contains(&self, v: f32) -> bool {
        v.is_finite()
            && (if self.lo_open {
                v > self.lo
            } else {
                v >= self.lo
            })
            && v <= self.hi
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open = if self.lo_open { "(" } else { "[" };
        write!(f, "{open}{}, {}]", self.lo, self.hi)
    }
}

/// 0 = greedy.
pub const TEMPERATURE: Range = Range {
    lo: 0.0,
    hi: 100.0,
    lo_open: false,
};
pub const TOP_P: Range = Range {
    lo: 0.0,
    hi: 1.0,
    lo_open: false,
};
pub const MIN_P: Range = Range {
    lo: 0.0,
    hi: 1.0,
    lo_open: false,
};
pub const REPETITION_PENALTY: Range = Range {
    lo: 0.0,
    hi: 100.0,
    lo_open: true,
};
