//! The tokenizer through a real converted file: a tiny fixture model (tests/fixtures/hf/) given
//! the real Qwen3 / Qwen-1 tokenizer and an embedding of 151936 rows, converted by qwen-convert,
//! read back with `Tokenizer::from_gguf`, must reproduce the reference goldens.

mod tokenizer_vocab;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use quant_formats::gguf::Gguf;
use quant_formats::GgmlType;
use qwen::tokenizer::{Normalization, Tokenizer};
use qwen_convert::convert::{convert, Options, Silent};
use qwen_convert::plan::TypePolicy;
use tokenizer_vocab as tv;

/// A scratch folder removed at drop.
struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("qwen-rs-tok-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the fixture's safetensors to `dst`, growing the embedding and output matrices named in
/// `vocab_tensors` to `n_rows` rows (old rows kept, new rows a small repeating pattern).
fn widen_safetensors(src: &Path, dst: &Path, vocab_tensors: &[&str], n_rows: usize) {
    let bytes = std::fs::read(src).expect("read safetensors");
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    let data = &bytes[8 + n..];
    let mut out_header = serde_json::Map::new();
    let mut out_data: Vec<u8> = Vec::new();
    for (name, info) in &header {
        if name == "__metadata__" {
            out_header.insert(name.clone(), info.clone());
            continue;
        }
        let off = info["data_offsets"].as_array().unwrap();
        let (a, b) = (
            off[0].as_u64().unwrap() as usize,
            off[1].as_u64().unwrap() as usize,
        );
        let mut t = data[a..b].to_vec();
        let mut shape: Vec<u64> = info["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        if vocab_tensors.contains(&name.as_str()) {
            let row = t.len() / shape[0] as usize;
            let old = t.len();
            t.resize(n_rows * row, 0);
            for (i, byte) in t.iter_mut().enumerate().skip(old) {
                // Little-endian f16/bf16 with high byte 0x3c: small finite values.
                *byte = if i % 2 == 1 {
                    0x3c
                } else {
                    (i / 2 % 251) as u8
                };
            }
            shape[0] = n_rows as u64;
        }
        let start = out_data.len();
        out_data.extend_from_slice(&t);
        out_header.insert(
            name.clone(),
            serde_json::json!({"dtype": info["dtype"], "shape": shape, "data_offsets": [start, out_data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&out_header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut f = (h.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(&h);
    f.extend_from_slice(&out_data);
    std::fs::write(dst, f).expect("write safetensors");
}

/// Edits a JSON file in place.
fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read json")).expect("json");
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).expect("write json");
}

fn copy_fixture(name: &str, dst: &Path) {
    let src = tv::root().join("tests/fixtures/hf").join(name);
    for e in std::fs::read_dir(&src).expect("fixture dir") {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).expect("copy fixture file");
    }
}

fn convert_and_load(dir: &Path, out: &Path) -> Tokenizer {
    let opts = Options {
        input: dir.to_path_buf(),
        output: out.to_path_buf(),
        policy: TypePolicy::new(GgmlType::F16, None),
        measure_error: false,
    };
    convert(&opts, &mut Silent, &AtomicBool::new(false)).expect("qwen-convert");
    let bytes = std::fs::read(out).expect("read converted file");
    let g = Gguf::parse(&bytes).expect("parse converted file");
    Tokenizer::from_gguf(&g).expect("Tokenizer::from_gguf")
}

fn check_corpus(t: &Tokenizer, golden: &str) {
    let texts: Vec<String> = tv::read_jsonl("data/tokenizer/corpus.jsonl")
        .iter()
        .map(|v| v["text"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<Vec<u32>> = tv::read_jsonl(&format!("data/tokenizer/{golden}"))
        .iter()
        .map(|v| tv::ids_of(&v["ids"]))
        .collect();
    let bad: Vec<String> = texts
        .iter()
        .zip(&want)
        .filter(|(s, w)| &t.encode(s) != *w)
        .map(|(s, _)| format!("{s:?}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{golden}: {} of {} differ: {}",
        bad.len(),
        texts.len(),
        bad.join(", ")
    );
}

#[test]
fn qwen3_file_matches_hf_goldens() {
    let tmp = TempDir::new("qwen3");
    let dir = tmp.0.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    copy_fixture("qwen3_a", &dir);
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tv::asset(&format!("qwen3/{f}")), dir.join(f)).unwrap();
    }
    edit_json(&dir.join("config.json"), |c| {
        c["vocab_size"] = tv::N_ROWS.into();
        c["bos_token_id"] = 151_643.into();
        c["eos_token_id"] = 151_645.into();
    });
    widen_safetensors(
        &tv::root().join("tests/fixtures/hf/qwen3_a/model.safetensors"),
        &dir.join("model.safetensors"),
        &["model.embed_tokens.weight", "lm_head.weight"],
        tv::N_ROWS,
    );
    let t = convert_and_load(&dir, &tmp.0.join("qwen3.qbin"));
    assert_eq!(t.n_tokens(), tv::N_ROWS);
    assert!(t.ranks_are_ids());
    assert_eq!(t.normalization(), Normalization::Nfc);
    assert!(t.eos_ids().contains(&151_645), "{:?}", t.eos_ids());
    check_corpus(&t, "golden_qwen3.jsonl");
    let cases = tv::read_jsonl("peer/llama-cpp-tokenizer-qwen2.jsonl");
    for c in &cases {
        assert_eq!(
            t.encode(c["text"].as_str().unwrap()),
            tv::ids_of(&c["ids_hf"]),
            "{c}"
        );
    }
}

#[test]
fn qwen1_file_matches_tiktoken_goldens() {
    let tmp = TempDir::new("qwen1");
    let dir = tmp.0.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    copy_fixture("qwen1", &dir);
    std::fs::copy(tv::asset("qwen.tiktoken"), dir.join("qwen.tiktoken")).unwrap();
    edit_json(&dir.join("config.json"), |c| {
        c["vocab_size"] = tv::N_ROWS.into()
    });
    edit_json(&dir.join("generation_config.json"), |c| {
        c["eos_token_id"] = 151_643.into();
        c["pad_token_id"] = 151_643.into();
    });
    widen_safetensors(
        &tv::root().join("tests/fixtures/hf/qwen1/model.safetensors"),
        &dir.join("model.safetensors"),
        &["transformer.wte.weight", "lm_head.weight"],
        tv::N_ROWS,
    );
    let t = convert_and_load(&dir, &tmp.0.join("qwen1.qbin"));
    assert_eq!(t.n_tokens(), tv::N_ROWS);
    assert!(t.ranks_are_ids());
    assert_eq!(t.normalization(), Normalization::NfcBeforeSpecials);
    assert_eq!(t.token_to_id("<|extra_204|>"), Some(151_850));
    check_corpus(&t, "golden_qwen1.jsonl");
}

#[test]
fn smollm2_file_matches_hf_goldens() {
    // A file from elsewhere: llama arch, tokenizer.ggml.pre = "smollm", ids are not BPE ranks.
    let bytes = std::fs::read(tv::asset("SmolLM2-135M-Instruct.Q4_1.gguf")).expect("read SmolLM2");
    let g = Gguf::parse(&bytes).expect("parse SmolLM2");
    let t = Tokenizer::from_gguf(&g).expect("Tokenizer::from_gguf");
    assert_eq!(t.n_tokens(), 49_152);
    assert!(!t.ranks_are_ids());
    assert_eq!(t.normalization(), Normalization::None);
    assert_eq!(t.eos_ids(), &[2]);
    check_corpus(&t, "golden_smollm2.jsonl");
}
