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
