//! GGUF reader: `Gguf::parse` on arbitrary bytes, then everything a loader does
//! with a file that parsed: every typed getter on every key, every tensor's
//! bytes (and a bounded dequantization of them), the runtime's config, weights,
//! tokenizer and NaN scan. Nothing may panic, and a parsed file must keep the
//! reader's promises (tensor slices inside the file, sizes as declared).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quant_formats::gguf::Gguf;
use quant_formats::reference;

/// Elements dequantized per tensor at most (keeps one input fast).
const MAX_DEQUANT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::parse(data) else {
        return;
    };
    let _ = g.summary();
    assert!(g.alignment.is_power_of_two());
    assert!(g.data_offset % g.alignment == 0);

    for (key, value) in g.kv() {
        assert!(g.get(key).is_some(), "key {key:?} listed but not found");
        let _ = (value.type_name(), value.as_i128(), value.as_str());
        let _ = value.as_array().map(<[_]>::len);
        let _ = g.get_str(key);
        let _ = g.get_bool(key);
        let _ = g.get_f32(key);
        let _ = g.get_u32(key);
        let _ = g.get_u64(key);
        let _ = g.get_i32(key);
        let _ = g.get_str_array(key);
        let _ = g.get_f32_array(key);
        let _ = g.get_u32_array(key);
        let _ = g.get_i32_array(key);
    }

    for t in &g.tensors {
        let bytes = g.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.n_bytes, "tensor {}", t.name);
        assert_eq!(g.tensor_bytes(&t.name).map(<[u8]>::len), Some(bytes.len()));
        let _ = (t.n_elements(), t.row_len());
        // Whole blocks only, at most MAX_DEQUANT elements.
        let (bs, ts) = (t.dtype.block_size(), t.dtype.type_size());
        let n_blocks = (bytes.len() / ts).min(MAX_DEQUANT / bs);
        let mut out = vec![0f32; n_blocks * bs];
        let _ = reference::dequantize(t.dtype, &bytes[..n_blocks * ts], &mut out);
    }

    // What qwen-run does with a file that parsed.
    let _ = qwen::Config::from_gguf(&g);
    let _ = qwen::Model::load(&g);
    if let Ok(tok) = qwen::tokenizer::Tokenizer::from_gguf(&g) {
        if let Ok(tpl) = qwen::chat::ChatTemplate::from_gguf(&g, &tok) {
            let mut msgs = Vec::new();
            if let Ok(Some(sys)) = tpl.initial_system(None) {
                msgs.push(sys);
            }
            msgs.push(qwen::chat::Message::user("hi"));
            let _ = tpl.render(&msgs, true);
        }
    }
    // Known bug, reported: scan_non_finite allocates a row of dims[0] floats
    // even for a tensor with zero elements ([2^40, 0] aborts on allocation;
    // regression in tests/hostile_cli.rs zero_sized_dims_with_huge_rows). Skip
    // those files here so the fuzzer keeps exploring; drop the guard once fixed.
    let huge_empty_row = g
        .tensors
        .iter()
        .any(|t| t.n_elements() == 0 && t.row_len() > 1 << 24);
    if !huge_empty_row {
        let _ = qwen::weights::scan_non_finite(&g);
    }
});
