//! GGUF writer -> reader round trips: every value type, every tensor type.

use quant_formats::gguf::{Gguf, GgufError, GgufWriter, Value, ValueType};
use quant_formats::reference::quantize;
use quant_formats::GgmlType;

fn all_values() -> Vec<(String, Value)> {
    vec![
        ("t.u8".into(), Value::U8(200)),
        ("t.i8".into(), Value::I8(-100)),
        ("t.u16".into(), Value::U16(60000)),
        ("t.i16".into(), Value::I16(-30000)),
        ("t.u32".into(), Value::U32(4_000_000_000)),
        ("t.i32".into(), Value::I32(-2_000_000_000)),
        ("t.f32".into(), Value::F32(-1.5e-6)),
        ("t.bool.true".into(), Value::Bool(true)),
        ("t.bool.false".into(), Value::Bool(false)),
        ("t.str".into(), Value::from("héllo, 世界")),
        ("t.str.empty".into(), Value::from("")),
        ("t.u64".into(), Value::U64(u64::MAX)),
        ("t.i64".into(), Value::I64(i64::MIN)),
        ("t.f64".into(), Value::F64(std::f64::consts::PI)),
        ("t.arr.u8".into(), Value::from(vec![1u8, 2, 255])),
        ("t.arr.i8".into(), Value::from(vec![-1i8, 0, 127])),
        ("t.arr.u16".into(), Value::from(vec![7u16])),
        ("t.arr.i16".into(), Value::from(vec![-7i16, 7])),
        ("t.arr.u32".into(), Value::from(vec![151643u32, 151645])),
        ("t.arr.i32".into(), Value::from(vec![1i32, 3, 4, -1])),
        ("t.arr.f32".into(), Value::from(vec![0.5f32, -0.25])),
        ("t.arr.bool".into(), Value::from(vec![true, false])),
        ("t.arr.u64".into(), Value::from(vec![u64::MAX, 0])),
        ("t.arr.i64".into(), Value::from(vec![i64::MIN, 1])),
        ("t.arr.f64".into(), Value::from(vec![1e300f64])),
        (
            "t.arr.str".into(),
            Value::from(vec!["Ġthe", "", "<|im_end|>"]),
        ),
        ("t.arr.empty".into(), Value::Array(ValueType::U32, vec![])),
        (
            "t.arr.nested".into(),
            Value::Array(
                ValueType::Array,
                vec![
                    Value::from(vec![1u32, 2]),
                    Value::Array(ValueType::U32, vec![]),
                ],
            ),
        ),
    ]
}

fn write(
    kv: &[(String, Value)],
    tensors: &[(&str, Vec<u64>, GgmlType, Vec<u8>)],
) -> Result<Vec<u8>, GgufError> {
    let mut w = GgufWriter::new();
    for (k, v) in kv {
        w.add(k.as_str(), v.clone());
    }
    for (name, dims, t, _) in tensors {
        w.add_tensor(name, dims, *t)?;
    }
    let mut s = w.start(Vec::new())?;
    for (name, _, _, bytes) in tensors {
        s.write_tensor(name, bytes)?;
    }
    s.finish()
}

#[test]
fn every_value_type_round_trips() {
    let kv = all_values();
    let bytes = write(&kv, &[]).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert!(g.tensors.is_empty());
    let read: Vec<(String, Value)> = g.kv().map(|(k, v)| (k.to_string(), v.clone())).collect();
    assert_eq!(read, kv);
    assert!(g.warnings.is_empty());
}

#[test]
fn typed_getters() {
    let bytes = write(&all_values(), &[]).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.get_str("t.str").unwrap(), Some("héllo, 世界"));
    assert_eq!(g.get_str("absent").unwrap(), None);
    assert_eq!(g.get_u32("t.u32").unwrap(), Some(4_000_000_000));
    assert_eq!(g.get_u32("t.u8").unwrap(), Some(200));
    assert_eq!(g.get_i32("t.i16").unwrap(), Some(-30000));
    assert_eq!(g.get_u64("t.u64").unwrap(), Some(u64::MAX));
    assert_eq!(g.get_f32("t.f32").unwrap(), Some(-1.5e-6));
    assert_eq!(g.get_bool("t.bool.true").unwrap(), Some(true));
    assert_eq!(
        g.get_str_array("t.arr.str").unwrap(),
        Some(vec!["Ġthe", "", "<|im_end|>"])
    );
    assert_eq!(
        g.get_u32_array("t.arr.u32").unwrap(),
        Some(vec![151643, 151645])
    );
    assert_eq!(g.get_u32_array("t.arr.u8").unwrap(), Some(vec![1, 2, 255]));
    assert_eq!(
        g.get_i32_array("t.arr.i32").unwrap(),
        Some(vec![1, 3, 4, -1])
    );
    assert_eq!(
        g.get_f32_array("t.arr.f32").unwrap(),
        Some(vec![0.5, -0.25])
    );
    assert_eq!(g.get_u32_array("t.arr.empty").unwrap(), Some(vec![]));

    let e = g.get_u32("t.str").unwrap_err();
    assert_eq!(e.to_string(), "key 't.str' is str, expected u32");
    let e = g.get_u32("t.i8").unwrap_err();
    assert_eq!(e.to_string(), "key 't.i8': value -100 does not fit in u32");
    let e = g.get_i32("t.u32").unwrap_err();
    assert_eq!(
        e.to_string(),
        "key 't.u32': value 4000000000 does not fit in i32"
    );
    let e = g.get_f32("t.f64").unwrap_err();
    assert_eq!(e.to_string(), "key 't.f64' is f64, expected f32");
    let e = g.get_str_array("t.arr.u32").unwrap_err();
    assert_eq!(
        e.to_string(),
        "key 't.arr.u32' is arr[u32], expected arr[str]"
    );
    let e = g.get_u32_array("t.arr.i32").unwrap_err();
    assert_eq!(
        e.to_string(),
        "key 't.arr.i32': value -1 does not fit in u32"
    );
    let e = g.get_bool("t.u8").unwrap_err();
    assert_eq!(e.to_string(), "key 't.u8' is u8, expected bool");
}

#[test]
fn every_tensor_type_round_trips() {
    let types = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Bf16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];
    let x: Vec<f32> = (0..512 * 3)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut tensors = Vec::new();
    let names: Vec<String> = types
        .iter()
        .map(|t| format!("blk.0.{}.weight", t.name()))
        .collect();
    for (t, name) in types.iter().zip(&names) {
        let bytes = quantize(*t, &x).unwrap();
        tensors.push((name.as_str(), vec![512, 3], *t, bytes));
    }
    // plus a 1-D f32, a 0-dim scalar, a 4-D tensor, and an empty one
    tensors.push(("norm", vec![5], GgmlType::F32, vec![1u8; 20]));
    tensors.push(("scalar", vec![], GgmlType::F32, vec![2u8; 4]));
    tensors.push(("four_d", vec![2, 3, 4, 5], GgmlType::F16, vec![3u8; 240]));
    tensors.push(("empty", vec![32, 0], GgmlType::Q8_0, vec![]));
    let kv = vec![("general.architecture".to_string(), Value::from("qwen2"))];
    let bytes = write(&kv, &tensors).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.tensors.len(), tensors.len());
    assert_eq!(g.data_offset % 32, 0);
    for (info, (name, dims, t, data)) in g.tensors.iter().zip(&tensors) {
        assert_eq!(&info.name, name);
        assert_eq!(&info.dims, dims);
        assert_eq!(info.dtype, *t);
        assert_eq!(info.offset % 32, 0);
        assert_eq!(info.n_bytes, data.len() as u64);
        assert_eq!(g.tensor_data(info), &data[..], "{name}");
        assert_eq!(g.tensor(name), Some(info));
        assert_eq!(((g.data_offset + info.offset) as usize) % 32, 0);
    }
    // the file ends padded after the last tensor, like ggml and gguf-py
    assert_eq!(bytes.len() % 32, 0);
    let s = g.summary();
    assert!(s.contains("blk.0.q4_K.weight"), "{s}");
    assert!(s.starts_with("GGUF v3"), "{s}");
}

#[test]
fn custom_alignment_is_used() {
    let kv = vec![("general.alignment".to_string(), Value::U32(64))];
    let tensors = vec![
        ("a", vec![3], GgmlType::F32, vec![0u8; 12]),
        ("b", vec![3], GgmlType::F32, vec![1u8; 12]),
    ];
    let bytes = write(&kv, &tensors).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.alignment, 64);
    assert_eq!(g.data_offset % 64, 0);
    assert_eq!(g.tensors[1].offset, 64);
    assert_eq!(g.tensor_bytes("b"), Some(&[1u8; 12][..]));
}

#[test]
fn writer_errors() {
    // order and size of streamed tensors
    let mut w = GgufWriter::new();
    w.add_tensor("a", &[32], GgmlType::Q8_0).unwrap();
    w.add_tensor("b", &[4], GgmlType::F32).unwrap();
    let mut s = w.start(Vec::new()).unwrap();
    let e = s.write_tensor("b", &[0; 16]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "expected tensor 'a' next (declared order), got 'b'"
    );
    let e = s.write_tensor("a", &[0; 33]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "tensor 'a' was declared as 34 bytes, got 33 bytes"
    );
    s.write_tensor("a", &[0; 34]).unwrap();
    assert_eq!(s.next_tensor().map(|t| t.name.as_str()), Some("b"));
    let e = s.finish().unwrap_err();
    assert_eq!(e.to_string(), "1 declared tensor(s) were never written: b");

    let mut w = GgufWriter::new();
    w.add_tensor("a", &[4], GgmlType::F32).unwrap();
    let mut s = w.start(Vec::new()).unwrap();
    s.write_tensor("a", &[0; 16]).unwrap();
    let e = s.write_tensor("c", &[0; 16]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "all 1 declared tensors were already written; got an extra tensor 'c'"
    );

    // chunked writes
    let mut w = GgufWriter::new();
    w.add_tensor("a", &[32, 3], GgmlType::Q8_0).unwrap();
    w.add_tensor("z", &[32, 0], GgmlType::Q8_0).unwrap();
    w.add_tensor("b", &[2], GgmlType::F32).unwrap();
    let mut s = w.start(Vec::new()).unwrap();
    s.write_tensor_chunk("a", &[1; 34]).unwrap();
    s.write_tensor_chunk("a", &[2; 34]).unwrap();
    let e = s.write_tensor("a", &[3; 34]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "tensor 'a' is incomplete: 68 of 102 bytes written"
    );
    let e = s.write_tensor_chunk("a", &[3; 35]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "tensor 'a' was declared as 102 bytes, got 103 bytes"
    );
    s.write_tensor_chunk("a", &[3; 34]).unwrap();
    s.write_tensor_chunk("z", &[]).unwrap();
    s.write_tensor_chunk("b", &[4; 4]).unwrap();
    let e = s.finish().unwrap_err();
    assert_eq!(
        e.to_string(),
        "tensor 'b' is incomplete: 4 of 8 bytes written"
    );
    let mut w = GgufWriter::new();
    w.add_tensor("a", &[32, 3], GgmlType::Q8_0).unwrap();
    let mut s = w.start(Vec::new()).unwrap();
    for part in [1u8, 2, 3] {
        s.write_tensor_chunk("a", &[part; 34]).unwrap();
    }
    let f = s.finish().unwrap();
    let g = Gguf::parse(&f).unwrap();
    let expected: Vec<u8> = [1u8, 2, 3].iter().flat_map(|&p| [p; 34]).collect();
    assert_eq!(g.tensor_bytes("a"), Some(&expected[..]));

    // declarations
    let mut w = GgufWriter::new();
    let e = w.add_tensor("x", &[33, 2], GgmlType::Q4_0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "tensor 'x' of type q4_0: row length 33 is not a multiple of the block size 32"
    );
    let e = w
        .add_tensor("x", &[1, 1, 1, 1, 1], GgmlType::F32)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "tensor 'x' has 5 dimensions, ggml's limit is 4"
    );
    let e = w
        .add_tensor("x", &[1 << 32, 1 << 32], GgmlType::F32)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "tensor 'x' with dims [4294967296, 4294967296] has more than 2^63-1 elements or bytes"
    );
    let long = "x".repeat(64);
    let e = w.add_tensor(&long, &[1], GgmlType::F32).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("tensor #0 '{long}': name is 64 bytes, ggml's limit is 63 bytes")
    );
    w.add_tensor("x", &[1], GgmlType::F32).unwrap();
    let e = w.add_tensor("x", &[1], GgmlType::F32).unwrap_err();
    assert_eq!(e.to_string(), "tensor 'x' was already declared");

    // metadata, checked at start()
    let check = |kv: Vec<(&str, Value)>, msg: &str| {
        let mut w = GgufWriter::new();
        for (k, v) in kv {
            w.add(k, v);
        }
        let e = w.start(Vec::new()).unwrap_err();
        assert_eq!(e.to_string(), msg);
    };
    check(
        vec![("a", Value::U8(1)), ("a", Value::U8(2))],
        "duplicate metadata key 'a'",
    );
    check(vec![("", Value::U8(1))], "metadata key #0 is empty");
    check(
        vec![(
            "m",
            Value::Array(ValueType::U32, vec![Value::U32(1), Value::I32(2)]),
        )],
        "key 'm': array element 1 is i32, but the array holds u32",
    );
    check(
        vec![("general.alignment", Value::U32(48))],
        "general.alignment 48 is not a power of two in 1..=1048576",
    );
    check(
        vec![("general.alignment", Value::U64(32))],
        "general.alignment must be a u32, found u64 32",
    );
}
