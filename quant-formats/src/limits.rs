//! What a qwen-rs file may say: the caps the runtime puts on the counts it reads
//! (`Config::from_gguf` in the runtime crate: products of them cannot overflow, and
//! a hostile header cannot make it allocate terabytes) and the ranges of the
//! sampling settings (`SamplerParams::validate`). The converter refuses the same
//! values up front instead of writing a file `qwen-run` will not load or sample
//! from; one definition serves both.

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
