//! Hostile and broken GGUF headers: each must give an error whose text names
//! the value and the limit, and nothing may panic (truncation at every offset,
//! seeded random bit flips).

use quant_formats::gguf::{Gguf, GgufError, GgufWriter, Value, ValueType};
use quant_formats::GgmlType;

/// A raw little-endian byte builder for hand-made headers.
#[derive(Clone, Default)]
struct B(Vec<u8>);

impl B {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        B(b"GGUF".to_vec()).u32(version).u64(n_tensors).u64(n_kv)
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend(b);
        self
    }
    fn str(self, s: &[u8]) -> Self {
        self.u64(s.len() as u64).bytes(s)
    }
    fn key(self, k: &str, tag: u32) -> Self {
        self.str(k.as_bytes()).u32(tag)
    }
    fn tensor(self, name: &str, dims: &[u64], tag: u32, offset: u64) -> Self {
        let mut b = self.str(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            b = b.u64(d);
        }
        b.u32(tag).u64(offset)
    }
    fn pad(self, align: usize) -> Self {
        let n = (align - self.0.len() % align) % align;
        self.zeros(n)
    }
    fn zeros(mut self, n: usize) -> Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

fn err(bytes: &[u8]) -> String {
    match Gguf::parse(bytes) {
        Ok(_) => panic!("expected an error for {} bytes", bytes.len()),
        Err(e) => e.to_string(),
    }
}

const F32: u32 = 0;
const Q4_0: u32 = 2;

#[test]
fn header_errors() {
    assert_eq!(
        err(b""),
        "file truncated: magic at offset 0 needs 4 bytes, file has 0 left"
    );
    assert_eq!(
        err(b"GGU"),
        "file truncated: magic at offset 0 needs 4 bytes, file has 3 left"
    );
    assert_eq!(
        err(b"GGML\x03\0\0\0"),
        "not a GGUF file: magic bytes [47, 47, 4d, 4c] (GGML), expected \"GGUF\""
    );
    assert_eq!(
        err(b"GGUF\x03\0"),
        "file truncated: version at offset 4 needs 4 bytes, file has 2 left"
    );
    assert_eq!(
        err(&B::header(1, 0, 0).0),
        "GGUF version 1 is not supported (only versions 2 and 3); re-convert the model with a current tool"
    );
    assert_eq!(
        err(&B::header(0x0300_0000, 0, 0).0),
        "GGUF version 0x3000000 looks byte-swapped: big-endian GGUF files are not supported"
    );
    assert_eq!(
        err(&B::header(4, 0, 0).0),
        "unsupported GGUF version 4 (this reader knows versions 2 and 3)"
    );
    assert_eq!(
        err(&B::header(0, 0, 0).0),
        "unsupported GGUF version 0 (this reader knows versions 2 and 3)"
    );
    assert_eq!(
        err(&B(b"GGUF".to_vec()).u32(3).u64(0).0),
        "file truncated: metadata count at offset 16 needs 8 bytes, file has 0 left"
    );
    // a v2 header with nothing in it is fine
    let v2 = B::header(2, 0, 0);
    let g = Gguf::parse(&v2.0).unwrap();
    assert_eq!(g.version, 2);
}

#[test]
fn huge_counts() {
    assert_eq!(
        err(&B::header(3, u64::MAX, 0).zeros(100).0),
        "header declares 18446744073709551615 tensors, but the 100 bytes after it can hold at most 4"
    );
    assert_eq!(
        err(&B::header(3, 0, 1 << 62).zeros(140).0),
        "header declares 4611686018427387904 metadata entries, but the 140 bytes after it can hold at most 10"
    );
    // the tensor count is checked again after the metadata consumed its bytes
    let b = B::header(3, 2, 1).key("a", 8).str(&[b'x'; 30]);
    assert_eq!(
        err(&b.0),
        "header declares 2 tensors, but the 0 bytes after it can hold at most 0"
    );
}

#[test]
fn string_lengths() {
    // key length near 2^64
    let b = B::header(3, 0, 1).u64(u64::MAX - 3).zeros(20);
    assert_eq!(
        err(&b.0),
        "metadata key #0: string length 18446744073709551612 exceeds the limit of 65535 bytes"
    );
    // value length above the 1 GiB cap
    let b = B::header(3, 0, 1)
        .key("general.name", 8)
        .u64(1 << 40)
        .zeros(20);
    assert_eq!(
        err(&b.0),
        "value of key 'general.name': string length 1099511627776 exceeds the limit of 1073741824 bytes"
    );
    // under the cap but past the end of the file
    let b = B::header(3, 0, 1)
        .key("general.name", 8)
        .u64(1000)
        .bytes(b"qwen");
    assert_eq!(
        err(&b.0),
        "file truncated: value of key 'general.name' at offset 56 needs 1000 bytes, file has 4 left"
    );
    // the length itself cut short
    let b = B::header(3, 0, 1).key("general.name", 8).bytes(&[1, 0, 0]);
    assert_eq!(
        err(&b.0),
        "file truncated: length of value of key 'general.name' at offset 48 needs 8 bytes, file has 3 left"
    );
}

#[test]
fn key_errors() {
    let b = B::header(3, 0, 1).str(b"gen\xff").u32(4).u32(1);
    assert_eq!(
        err(&b.0),
        "metadata key #0: string is not valid UTF-8 (invalid utf-8 sequence of 1 bytes from index 3)"
    );
    let b = B::header(3, 0, 1).str(b"").u32(4).u32(1).zeros(4);
    assert_eq!(err(&b.0), "metadata key #0 is empty");
    let b = B::header(3, 0, 2).key("a.b", 4).u32(1).key("a.b", 4).u32(2);
    assert_eq!(err(&b.0), "duplicate metadata key 'a.b'");
    let b = B::header(3, 0, 1).key("a.b", 13).u32(1).zeros(8);
    assert_eq!(
        err(&b.0),
        "key 'a.b': unknown value type tag 13 (known: 0..=12)"
    );
    let b = B::header(3, 0, 1).key("a.b", 7).u8(2);
    assert_eq!(
        err(&b.0),
        "key 'a.b': bool byte 0x02 at offset 39 is neither 0 nor 1"
    );
    // a scalar string that is not UTF-8 is an error
    let b = B::header(3, 0, 1).key("general.name", 8).str(b"\xc3\x28");
    assert_eq!(
        err(&b.0),
        "value of key 'general.name': string is not valid UTF-8 (invalid utf-8 sequence of 1 bytes from index 0)"
    );
}

#[test]
fn array_errors() {
    let b = B::header(3, 0, 1).key("arr", 9).u32(99).u64(1).zeros(8);
    assert_eq!(
        err(&b.0),
        "key 'arr': unknown value type tag 99 (known: 0..=12)"
    );
    let b = B::header(3, 0, 1)
        .key("arr", 9)
        .u32(4)
        .u64(1 << 40)
        .zeros(8);
    assert_eq!(
        err(&b.0),
        "key 'arr': array of 1099511627776 elements exceeds the limit of 16777216"
    );
    let b = B::header(3, 0, 1).key("arr", 9).u32(4).u64(1000).zeros(40);
    assert_eq!(
        err(&b.0),
        "file truncated: array of 1000 u32 for key 'arr' at offset 51 needs 4000 bytes, file has 40 left"
    );
    // strings: each needs at least its 8-byte length
    let b = B::header(3, 0, 1).key("tok", 9).u32(8).u64(10).zeros(40);
    assert_eq!(
        err(&b.0),
        "file truncated: array of 10 str for key 'tok' at offset 51 needs 80 bytes, file has 40 left"
    );
    // arrays nested 5 deep
    let mut b = B::header(3, 0, 1).key("deep", 9);
    for _ in 0..4 {
        b = b.u32(9).u64(1);
    }
    b = b.u32(4).u64(1).u32(7).zeros(60);
    assert_eq!(
        err(&b.0),
        "key 'deep': arrays nested 5 deep exceed the limit of 4"
    );
    // invalid UTF-8 inside an array of strings is accepted lossily, with a warning
    let b = B::header(3, 0, 1)
        .key("tokenizer.ggml.tokens", 9)
        .u32(8)
        .u64(2)
        .str(b"ok")
        .str(b"\xff\xfe");
    let g = Gguf::parse(&b.0).unwrap();
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap(),
        Some(vec!["ok", "\u{fffd}\u{fffd}"])
    );
    assert_eq!(
        g.warnings,
        vec!["key 'tokenizer.ggml.tokens': a string at offset 87 is not valid UTF-8; invalid bytes were replaced by U+FFFD"]
    );
}

#[test]
fn alignment_errors() {
    let b = B::header(3, 0, 1).key("general.alignment", 10).u64(32);
    assert_eq!(err(&b.0), "general.alignment must be a u32, found u64 32");
    for bad in [0u32, 48, 1 << 21] {
        let b = B::header(3, 0, 1).key("general.alignment", 4).u32(bad);
        assert_eq!(
            err(&b.0),
            format!("general.alignment {bad} is not a power of two in 1..=1048576")
        );
    }
}

#[test]
fn tensor_info_errors() {
    let long = "t".repeat(64);
    let b = B::header(3, 1, 0)
        .tensor(&long, &[4], F32, 0)
        .pad(32)
        .zeros(16);
    assert_eq!(
        err(&b.0),
        format!("tensor #0 '{long}': name is 64 bytes, ggml's limit is 63 bytes")
    );

    let b = B::header(3, 2, 0)
        .tensor("a", &[4], F32, 0)
        .tensor("a", &[4], F32, 32)
        .pad(32)
        .zeros(64);
    assert_eq!(err(&b.0), "duplicate tensor name 'a'");

    let b = B::header(3, 1, 0)
        .tensor("a", &[1, 1, 1, 1, 1], F32, 0)
        .pad(32)
        .zeros(4);
    assert_eq!(err(&b.0), "tensor 'a' has 5 dimensions, ggml's limit is 4");

    let b = B::header(3, 1, 0)
        .tensor("a", &[1 << 32, 1 << 32], F32, 0)
        .pad(32);
    assert_eq!(
        err(&b.0),
        "tensor 'a' with dims [4294967296, 4294967296] has more than 2^63-1 elements or bytes"
    );
    let b = B::header(3, 1, 0).tensor("a", &[u64::MAX], F32, 0).pad(32);
    assert_eq!(
        err(&b.0),
        "tensor 'a' with dims [18446744073709551615] has more than 2^63-1 elements or bytes"
    );
    // elements fit in i64 but bytes do not
    let b = B::header(3, 1, 0).tensor("a", &[1 << 62], F32, 0).pad(32);
    assert_eq!(
        err(&b.0),
        "tensor 'a' with dims [4611686018427387904] has more than 2^63-1 elements or bytes"
    );

    for tag in [4u32, 1000] {
        let b = B::header(3, 1, 0)
            .tensor("a", &[4], tag, 0)
            .pad(32)
            .zeros(16);
        assert_eq!(
            err(&b.0),
            format!("tensor 'a': unknown ggml type tag {tag}")
        );
    }
    let b = B::header(3, 1, 0)
        .tensor("a", &[33, 2], Q4_0, 0)
        .pad(32)
        .zeros(64);
    assert_eq!(
        err(&b.0),
        "tensor 'a' of type q4_0: row length 33 is not a multiple of the block size 32"
    );
    let b = B::header(3, 1, 0)
        .str(b"a\xff")
        .u32(1)
        .u64(4)
        .u32(F32)
        .u64(0)
        .pad(32)
        .zeros(16);
    assert_eq!(
        err(&b.0),
        "name of tensor #0: string is not valid UTF-8 (invalid utf-8 sequence of 1 bytes from index 1)"
    );
}

#[test]
fn data_placement_errors() {
    // the brief's example message
    let b = B::header(3, 1, 0)
        .tensor("blk.3.ffn_up", &[1024, 1152], F32, 0)
        .pad(32);
    let start = b.len();
    let b = b.zeros(12000);
    assert_eq!(
        err(&b.0),
        format!("tensor blk.3.ffn_up needs 4718592 bytes at offset {start}, file has 12000 left")
    );
    // offset past the end
    let b = B::header(3, 1, 0)
        .tensor("a", &[4], F32, 1 << 20)
        .pad(32)
        .zeros(64);
    let start = b.len() - 64;
    assert_eq!(
        err(&b.0),
        format!(
            "tensor a needs 16 bytes at offset {}, file has 0 left",
            start + (1 << 20)
        )
    );
    // offset so large that data_offset + offset overflows
    let b = B::header(3, 1, 0)
        .tensor("a", &[4], F32, u64::MAX - 31)
        .pad(32)
        .zeros(64);
    assert_eq!(
        err(&b.0),
        "tensor a needs 16 bytes at offset 18446744073709551615, file has 0 left"
    );
    // misaligned
    let b = B::header(3, 1, 0)
        .tensor("a", &[4], F32, 7)
        .pad(32)
        .zeros(64);
    assert_eq!(
        err(&b.0),
        "tensor 'a': offset 7 is not a multiple of the alignment 32"
    );
    // overlapping
    let b = B::header(3, 2, 0)
        .tensor("a", &[16], F32, 0)
        .tensor("b", &[4], F32, 32)
        .pad(32)
        .zeros(64);
    assert_eq!(
        err(&b.0),
        "tensors 'a' (data bytes 0..64) and 'b' (from byte 32) overlap"
    );
    // the file ends before the padded start of the data section
    let b = B::header(3, 1, 0).tensor("a", &[0], F32, 0);
    assert_eq!(b.len(), 57);
    assert_eq!(
        err(&b.0),
        "data section starts at offset 64 (after padding to 32), past the end of the 57-byte file"
    );
    // zero-size tensors are fine anywhere aligned, and out-of-order offsets too
    let b = B::header(3, 3, 0)
        .tensor("b", &[8], F32, 32)
        .tensor("a", &[8], F32, 0)
        .tensor("e", &[8, 0], F32, 0)
        .pad(32)
        .zeros(64);
    let g = Gguf::parse(&b.0).unwrap();
    assert_eq!(g.tensor_data(g.tensor("e").unwrap()), &[] as &[u8]);
}

/// A small valid file with metadata of several kinds and three tensors.
fn small_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add("general.architecture", "qwen2");
    w.add("general.alignment", 32u32);
    w.add("qwen2.block_count", 2u32);
    w.add("qwen2.rope.freq_base", 1e6f32);
    w.add("tokenizer.ggml.tokens", vec!["a", "b", "<|im_end|>"]);
    w.add("tokenizer.ggml.token_type", vec![1i32, 1, 3]);
    w.add(
        "nested",
        Value::Array(ValueType::Array, vec![Value::from(vec![1u8])]),
    );
    w.add("flag", true);
    w.add_tensor("token_embd.weight", &[32, 3], GgmlType::Q8_0)
        .unwrap();
    w.add_tensor("output_norm.weight", &[5], GgmlType::F32)
        .unwrap();
    w.add_tensor("blk.0.attn_q.weight", &[32, 2], GgmlType::Q4_0)
        .unwrap();
    let mut s = w.start(Vec::new()).unwrap();
    s.write_tensor("token_embd.weight", &[1; 102]).unwrap();
    s.write_tensor("output_norm.weight", &[2; 20]).unwrap();
    s.write_tensor("blk.0.attn_q.weight", &[3; 36]).unwrap();
    s.finish().unwrap()
}

/// Exercise everything a caller might do with a parsed file.
fn use_all(g: &Gguf<'_>) -> usize {
    let mut n = g.summary().len();
    for (k, v) in g.kv() {
        n += format!("{v}").len() + format!("{v:?}").len();
        let _ = g.get_str(k);
        let _ = g.get_u32(k);
        let _ = g.get_i32(k);
        let _ = g.get_f32(k);
        let _ = g.get_bool(k);
        let _ = g.get_str_array(k);
        let _ = g.get_u32_array(k);
        let _ = g.get_i32_array(k);
        let _ = g.get_f32_array(k);
    }
    for t in &g.tensors {
        let d = g.tensor_data(t);
        assert_eq!(d.len() as u64, t.n_bytes, "{}", t.name);
        n += d.len();
    }
    n
}

#[test]
fn truncation_at_every_offset() {
    let f = small_file();
    let g = Gguf::parse(&f).unwrap();
    assert!(use_all(&g) > 0);
    let data_end = g
        .tensors
        .iter()
        .map(|t| g.data_offset + t.offset + t.n_bytes)
        .max()
        .unwrap() as usize;
    for cut in 0..f.len() {
        let r = std::panic::catch_unwind(|| Gguf::parse(&f[..cut]).map(|g| use_all(&g)));
        match r {
            Err(_) => panic!("parse panicked on a {cut}-byte prefix"),
            Ok(Ok(_)) => assert!(
                cut >= data_end,
                "a {cut}-byte prefix parsed (data ends at {data_end})"
            ),
            Ok(Err(e)) => {
                assert!(cut < data_end, "{cut}-byte prefix failed: {e}");
                let msg = e.to_string();
                assert!(
                    msg.starts_with("file truncated")
                        || msg.starts_with("header declares")
                        || msg.starts_with("tensor ")
                        || msg.starts_with("data section starts"),
                    "{cut}: {msg}"
                );
            }
        }
    }
    // a cut inside the last tensor's data names the tensor
    let e = Gguf::parse(&f[..data_end - 1]).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "tensor blk.0.attn_q.weight needs 36 bytes at offset {}, file has 35 left",
            data_end - 36
        )
    );
    assert!(matches!(e, GgufError::OutOfBounds { .. }));
}

/// xorshift64*: a tiny seeded PRNG, so the test needs no extra dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_bit_flips_and_cuts_never_panic() {
    let f = small_file();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut ok, mut bad) = (0, 0);
    for iter in 0..20_000 {
        let mut b = f.clone();
        // 1..4 mutations: flip a bit, set a byte to 0x00/0xff, or write a
        // random u64 (lengths and counts are u64s)
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(b.len());
            match rng.below(4) {
                0 => b[i] ^= 1 << rng.below(8),
                1 => b[i] = 0xff,
                2 => b[i] = 0,
                _ => {
                    let v = rng.next().to_le_bytes();
                    let end = (i + 8).min(b.len());
                    b[i..end].copy_from_slice(&v[..end - i]);
                }
            }
        }
        if rng.below(4) == 0 {
            b.truncate(rng.below(b.len() + 1));
        }
        match std::panic::catch_unwind(|| Gguf::parse(&b).map(|g| use_all(&g))) {
            Err(_) => panic!("iteration {iter}: parse panicked on {b:02x?}"),
            Ok(Ok(_)) => ok += 1,
            Ok(Err(_)) => bad += 1,
        }
    }
    eprintln!("random mutations: {ok} parsed, {bad} rejected");
    assert!(bad > 1000 && ok > 100, "{ok} parsed, {bad} rejected");
}

#[test]
fn random_garbage_after_magic_never_panics() {
    let mut rng = Rng(42);
    for iter in 0..5_000 {
        let n = rng.below(200);
        let mut b = B::header(3, rng.below(4) as u64, rng.below(4) as u64).0;
        b.extend((0..n).map(|_| rng.next() as u8));
        if std::panic::catch_unwind(|| Gguf::parse(&b).map(|g| use_all(&g))).is_err() {
            panic!("iteration {iter}: parse panicked on {b:02x?}");
        }
    }
}
