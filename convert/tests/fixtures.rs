//! Convert every committed tiny checkpoint under tests/fixtures/hf (made by
//! scripts/make_fixtures.py with transformers) and compare the output with the
//! safetensors source, using a name table written independently of arch.rs.

mod common;

use common::*;
use quant_formats::gguf::Gguf;
use quant_formats::GgmlType;
use std::path::{Path, PathBuf};

fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    v.sort();
    v
}

/// HF -> GGUF tensor name, by string rules (llama.cpp's tensor_mapping).
fn gguf_name(hf: &str) -> String {
    for (a, b) in [
        ("transformer.wte.weight", "token_embd.weight"),
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("transformer.ln_f.weight", "output_norm.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ] {
        if hf == a {
            return b.to_string();
        }
    }
    let rest = hf
        .strip_prefix("transformer.h.")
        .or_else(|| hf.strip_prefix("model.layers."))
        .unwrap_or_else(|| panic!("unmapped {hf}"));
    let (layer, rest) = rest.split_once('.').unwrap();
    let (base, suffix) = rest.rsplit_once('.').unwrap();
    let mapped = match base {
        "ln_1" | "input_layernorm" => "attn_norm",
        "attn.c_attn" => "attn_qkv",
        "attn.c_proj" | "self_attn.o_proj" => "attn_output",
        "ln_2" | "post_attention_layernorm" => "ffn_norm",
        "mlp.w1" | "mlp.up_proj" => "ffn_up",
        "mlp.w2" | "mlp.gate_proj" => "ffn_gate",
        "mlp.c_proj" | "mlp.down_proj" => "ffn_down",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        other => panic!("unmapped {other} in {hf}"),
    };
    format!("blk.{layer}.{mapped}.{suffix}")
}

fn read_source(dir: &Path) -> Vec<SrcTensor> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("safetensors") {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            let d = view.data();
            let data: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => d
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::F16 => d
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                safetensors::Dtype::BF16 => d
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                other => panic!("{name}: {other:?}"),
            };
            out.push(SrcTensor {
                gguf: gguf_name(&name),
                hf: name,
                shape: view.shape().to_vec(),
                data,
                raw: None,
            });
        }
    }
    out
}

#[test]
fn converts_every_committed_fixture() {
    let dirs = fixtures();
    assert!(
        dirs.len() >= 3,
        "expected the committed fixtures under tests/fixtures/hf"
    );
    for dir in dirs {
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let arch = match cfg["architectures"][0].as_str().unwrap() {
            "QWenLMHeadModel" => "qwen",
            "Qwen2ForCausalLM" => "qwen2",
            "Qwen3ForCausalLM" => "qwen3",
            other => panic!("{other}"),
        };
        let mut src = read_source(&dir);
        let has_head = src.iter().any(|t| t.hf == "lm_head.weight");
        let tied = !has_head || cfg["tie_word_embeddings"].as_bool() == Some(true);
        if tied {
            src.retain(|t| t.hf != "lm_head.weight");
        }
        let out_dir = TempDir::new("fixture");
        for ty in ["f32", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"] {
            let out = out_dir.join("m.qbin");
            assert_ok(&convert(&dir, &out, ty, &[]));
            let bytes = std::fs::read(&out).unwrap();
            let g = Gguf::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            assert_eq!(
                g.get_str("general.architecture").unwrap(),
                Some(arch),
                "{}",
                dir.display()
            );
            let vocab = cfg["vocab_size"].as_u64().unwrap() as usize;
            assert_eq!(
                g.get_str_array("tokenizer.ggml.tokens")
                    .unwrap()
                    .unwrap()
                    .len(),
                vocab
            );
            assert!(g.get_str("tokenizer.chat_template").unwrap().is_some());
            let base = GgmlType::from_name(ty).unwrap();
            check_tensors(&g, &src, &policy(&src, base, tied));
        }
        eprintln!("ok {}", dir.display());
    }
}
