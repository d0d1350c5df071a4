// Hashes of the bytes that ggml's own C reference quantizers (quantize_row_*_ref
// in ggml-quants.c, ggml-org/ggml d99724f2b141fed9e1a9f402213506c081433465, built
// for x86-64 without -ffast-math/-mfma) produced for the inputs of tests/golden.rs
// (a throwaway driver, not kept here: no ggml code or build recipe is committed).

/// (type, seed (0 = special input), n values, hash of the quantized bytes)
pub const GGML_REF: &[(&str, u32, usize, u64)] = &[
    ("q4_0", 1, 2048, 0xf53750a9791f24ec),
    ("q4_0", 12345, 4096, 0xa328d7baee58ae45),
    ("q4_0", 0, 768, 0xeb23d6f83cbb098b),
    ("q4_1", 1, 2048, 0x7acce09d83d41fe9),
    ("q4_1", 12345, 4096, 0x77a7af3c9ec578c8),
    ("q4_1", 0, 768, 0x2218fc549ab4082e),
    ("q5_0", 1, 2048, 0x6cefda903bb5324d),
    ("q5_0", 12345, 4096, 0xbccc479f6b21debf),
    ("q5_0", 0, 768, 0x67bf88c2d353ac5f),
    ("q5_1", 1, 2048, 0x60b7ff238de4de46),
    ("q5_1", 12345, 4096, 0xb541824bdcd88ed9),
    ("q5_1", 0, 768, 0x2e91dccf5c933432),
    ("q8_0", 1, 2048, 0x0d2ed4f603fcc63d),
    ("q8_0", 12345, 4096, 0x1a8a13e57ae56d8b),
    ("q8_0", 0, 768, 0xdbac6e8d30eee15c),
    ("q8_1", 1, 2048, 0x22e785a4a15a0dbe),
    ("q8_1", 12345, 4096, 0x34acd679b7be8bfd),
    ("q8_1", 0, 768, 0x3e75d6af8d72a4ea),
    ("q2_K", 1, 2048, 0x523e187baf87b077),
    ("q2_K", 12345, 4096, 0x866ceb1b2a763e0b),
    ("q2_K", 0, 768, 0x2520e33cb6166432),
    ("q3_K", 1, 2048, 0xc69ad3a67f56ee08),
    ("q3_K", 12345, 4096, 0xe0bd54e42944caad),
    ("q3_K", 0, 768, 0xcea35da61cba3f81),
    ("q4_K", 1, 2048, 0x887d4a5bdcaf2209),
    ("q4_K", 12345, 4096, 0x96c5848d9d4cf583),
    ("q4_K", 0, 768, 0xda8f1a51a9f46a62),
    ("q5_K", 1, 2048, 0xdc12a42cf39b50c0),
    ("q5_K", 12345, 4096, 0x77c6892266201931),
    ("q5_K", 0, 768, 0x3045091573458962),
    ("q6_K", 1, 2048, 0xf526618c8f0e3240),
    ("q6_K", 12345, 4096, 0xf2481331b7723338),
    ("q6_K", 0, 768, 0x3a1440edc65dd3b5),
    ("q8_K", 1, 2048, 0xe5f3a280429bbc0a),
    ("q8_K", 12345, 4096, 0xdaa2d95e669dc5c3),
    ("q8_K", 0, 768, 0xe59fe3a9fad828e3),
];
