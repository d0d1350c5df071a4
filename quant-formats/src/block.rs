//! ggml block types, bit-identical to `ggml/src/ggml-common.h`.
//!
//! Every block is `#[repr(C)]`, holds only byte-sized fields or `f16` (align 2),
//! and is `bytemuck::Pod`, so a tensor's bytes (2-aligned inside a GGUF data
//! section, which is 32-aligned) can be viewed as `&[Block…]` without `unsafe`
//! via `bytemuck::try_cast_slice`.

use bytemuck::{Pod, Zeroable};
use half::f16;
use std::mem::size_of;

/// Elements per block for the legacy quant types (q4_0 … q8_1).
pub const QK: usize = 32;

/// q4_0: `x = (q - 8) * d`, q in 0..16. Element j (< 16) is the low nibble of
/// `qs[j]`, element j + 16 the high nibble.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ4_0>() == 18);

/// q4_1: `x = q * d + m`, q in 0..16, same nibble order as q4_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ4_1>() == 20);

/// q5_0: `x = (q - 16) * d`, q in 0..32. Low 4 bits as in q4_0; bit 4 of
/// element j is bit j of the little-endian u32 `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ5_0>() == 22);

/// q5_1: `x = q * d + m`, q in 0..32, bit layout as q5_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ5_1>() == 24);

/// q8_0: `x = q * d`, q in -127..=127.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34);

impl Default for BlockQ8_0 {
    fn default() -> Self {
        Self {
            d: f16::ZERO,
            qs: [0; QK],
        }
    }
}

/// q8_1: like q8_0 plus `s = d * sum(qs)`, used as the activation type for
/// q4_1 / q5_1 weights (the sum carries the `m` term).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK],
}
const _: () = assert!(size_of::<BlockQ8_1>() == 36);

impl Default for BlockQ8_1 {
    fn default() -> Self {
        Self {
            d: f16::ZERO,
            s: f16::ZERO,
            qs: [0; QK],
        }
    }
}

/// Elements per super-block for the K-quant types (q2_K … q8_K).
pub const QK_K: usize = 256;
/// Bytes of packed 6-bit scales and mins in q4_K / q5_K (and 6+2-bit scales in q3_K).
pub const K_SCALE_SIZE: usize = 12;

/// Implements `Default` as all-zero bytes (arrays longer than 32 have no
/// derived `Default`).
macro_rules! zeroed_default {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                Zeroable::zeroed()
            }
        }
    )*};
}

/// q2_K: 16 sub-blocks of 16; `x = d * (scales[i] & 15) * q - dmin * (scales[i] >> 4)`,
/// q in 0..4 (2 bits). `qs[32*h + l]` holds elements `128*h + l + 32*s` at bit `2*s`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}
const _: () = assert!(size_of::<BlockQ2K>() == 84);

/// q3_K: 16 sub-blocks of 16; `x = d * (scale6 - 32) * (q - 4)`, q in 0..8: low two
/// bits in `qs` (q2_K order), third bit in `hmask`; 6-bit scales packed in 12 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; K_SCALE_SIZE],
    pub d: f16,
}
const _: () = assert!(size_of::<BlockQ3K>() == 110);

/// q4_K: 8 sub-blocks of 32; `x = d * sc * q - dmin * m`, q in 0..16, (sc, m) 6-bit
/// each, packed in `scales` (see `get_scale_min_k4` in ggml-quants.c).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ4K>() == 144);

/// q5_K: as q4_K with a fifth bit per element in `qh`, q in 0..32.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ5K>() == 176);

/// q6_K: 16 sub-blocks of 16; `x = d * scales[i] * (q - 32)`, q in 0..64: low 4 bits
/// in `ql`, high 2 bits in `qh`; scales are signed 8-bit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}
const _: () = assert!(size_of::<BlockQ6K>() == 210);

/// q8_K: the activation type for K-quant dot products (never stored in files).
/// `d` is an f32 (so this block is 4-aligned), `bsums[i]` = sum of `qs[16*i..16*i+16]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}
const _: () = assert!(size_of::<BlockQ8K>() == 292);

zeroed_default!(BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K);
