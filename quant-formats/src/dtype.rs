//! The on-disk ggml type tag and its geometry. This is the one `match` on tags.

use std::fmt;

/// ggml type tags (`enum ggml_type` in ggml.h). Only tags whose block geometry
/// we know are listed; any other tag is rejected by [`GgmlType::from_tag`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    Iq4Nl,
    Iq4Xs,
    I8,
    I16,
    I32,
    I64,
    F64,
    Bf16,
}

/// Error for a tag that is not a known ggml type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown ggml type tag {0}")]
pub struct UnknownType(pub u32);

impl GgmlType {
    /// Every type we know, in tag order.
    pub const ALL: [GgmlType; 22] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q8_1,
        Self::Q2K,
        Self::Q3K,
        Self::Q4K,
        Self::Q5K,
        Self::Q6K,
        Self::Q8K,
        Self::Iq4Nl,
        Self::Iq4Xs,
        Self::I8,
        Self::I16,
        Self::I32,
        Self::I64,
        Self::F64,
        Self::Bf16,
    ];

    /// (tag, name, elements per block, bytes per block)
    const fn info(self) -> (u32, &'static str, usize, usize) {
        match self {
            Self::F32 => (0, "f32", 1, 4),
            Self::F16 => (1, "f16", 1, 2),
            Self::Q4_0 => (2, "q4_0", 32, 18),
            Self::Q4_1 => (3, "q4_1", 32, 20),
            Self::Q5_0 => (6, "q5_0", 32, 22),
            Self::Q5_1 => (7, "q5_1", 32, 24),
            Self::Q8_0 => (8, "q8_0", 32, 34),
            Self::Q8_1 => (9, "q8_1", 32, 36),
            Self::Q2K => (10, "q2_K", 256, 84),
            Self::Q3K => (11, "q3_K", 256, 110),
            Self::Q4K => (12, "q4_K", 256, 144),
            Self::Q5K => (13, "q5_K", 256, 176),
            Self::Q6K => (14, "q6_K", 256, 210),
            Self::Q8K => (15, "q8_K", 256, 292),
            Self::Iq4Nl => (20, "iq4_nl", 32, 18),
            Self::Iq4Xs => (23, "iq4_xs", 256, 136),
            Self::I8 => (24, "i8", 1, 1),
            Self::I16 => (25, "i16", 1, 2),
            Self::I32 => (26, "i32", 1, 4),
            Self::I64 => (27, "i64", 1, 8),
            Self::F64 => (28, "f64", 1, 8),
            Self::Bf16 => (30, "bf16", 1, 2),
        }
    }

    pub fn from_tag(tag: u32) -> Result<Self, UnknownType> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.tag() == tag)
            .ok_or(UnknownType(tag))
    }

    /// Parse a lower-case ggml type name ("q4_0", "bf16", "q6_K" or "q6_k").
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    pub const fn tag(self) -> u32 {
        self.info().0
    }
    pub const fn name(self) -> &'static str {
        self.info().1
    }
    /// Elements per block.
    pub const fn block_size(self) -> usize {
        self.info().2
    }
    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        self.info().3
    }

    /// Bytes of a row of `n` elements, or `None` when `n` is not a multiple of
    /// the block size or the byte count overflows.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if n % bs != 0 {
            return None;
        }
        (n / bs).checked_mul(self.type_size() as u64)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_are_unique() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_tag(t.tag()), Ok(t));
            assert_eq!(GgmlType::from_name(t.name()), Some(t));
        }
        assert_eq!(GgmlType::from_tag(4), Err(UnknownType(4)));
        assert_eq!(GgmlType::from_tag(u32::MAX), Err(UnknownType(u32::MAX)));
    }

    #[test]
    fn row_bytes() {
        assert_eq!(GgmlType::Q4_0.row_bytes(64), Some(36));
        assert_eq!(GgmlType::Q4_0.row_bytes(33), None);
        assert_eq!(GgmlType::F32.row_bytes(u64::MAX), None);
    }
}
