//! qwen-convert end to end: tiny HF folders built here, converted through the
//! binary, read back with quant_formats::gguf.

mod common;

use common::*;
use quant_formats::gguf::Gguf;
use quant_formats::GgmlType;
use std::collections::BTreeMap;

const TYPES: [&str; 8] = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"];

fn ftype(t: &str) -> u32 {
    match t {
        "f32" => 0,
        "f16" => 1,
        "q4_0" => 2,
        "q4_1" => 3,
        "q8_0" => 7,
        "q5_0" => 8,
        "q5_1" => 9,
        "bf16" => 32,
        _ => unreachable!(),
    }
}

/// Hyperparameter keys common to every arch.
fn check_hparams(g: &Gguf<'_>, spec: &Spec) {
    let a = spec.gguf_arch();
    let u = |k: &str| {
        g.get_u32(&format!("{a}.{k}"))
            .unwrap()
            .unwrap_or_else(|| panic!("{a}.{k} missing"))
    };
    assert_eq!(g.get_str("general.architecture").unwrap(), Some(a));
    assert_eq!(g.get_u32("general.alignment").unwrap(), Some(32));
    assert_eq!(g.get_u32("general.quantization_version").unwrap(), Some(2));
    assert_eq!(g.version, 3);
    assert_eq!(u("embedding_length") as usize, spec.n_embd);
    assert_eq!(u("block_count") as usize, spec.n_layer);
    assert_eq!(u("attention.head_count") as usize, spec.n_head);
    assert_eq!(u("attention.head_count_kv") as usize, spec.n_head_kv);
    let ff = u("feed_forward_length") as usize;
    match spec.arch {
        // llama.cpp convention: Qwen-1 stores config's intermediate_size (2x).
        Arch::Qwen => {
            assert_eq!(ff, 2 * spec.n_ff);
            assert_eq!(u("context_length"), 64);
            assert_eq!(u("rope.dimension_count") as usize, spec.head_dim);
            assert_eq!(g.get_f32("qwen.rope.freq_base").unwrap(), Some(10000.0));
            assert_eq!(
                g.get_f32("qwen.attention.layer_norm_rms_epsilon").unwrap(),
                Some(1e-6)
            );
            assert_eq!(
                g.get_bool("qwen_rs.qwen.use_dynamic_ntk").unwrap(),
                Some(true)
            );
            assert_eq!(
                g.get_bool("qwen_rs.qwen.use_logn_attn").unwrap(),
                Some(true)
            );
            assert_eq!(g.get_u32("qwen_rs.qwen.seq_length").unwrap(), Some(32));
        }
        Arch::Qwen2 => {
            assert_eq!(ff, spec.n_ff);
            assert_eq!(u("context_length"), 128);
            assert_eq!(g.get_f32("qwen2.rope.freq_base").unwrap(), Some(1e6));
            assert!(g.get("qwen_rs.qwen.use_dynamic_ntk").is_none());
        }
        Arch::Qwen3 => {
            assert_eq!(ff, spec.n_ff);
            assert_eq!(u("context_length"), 256);
            assert_eq!(u("attention.key_length") as usize, spec.head_dim);
            assert_eq!(u("attention.value_length") as usize, spec.head_dim);
            assert_eq!(u("rope.dimension_count") as usize, spec.head_dim);
            assert_eq!(g.get_f32("qwen3.rope.freq_base").unwrap(), Some(1e6));
        }
    }
}

fn convert_and_check(spec: &Spec, ty: &str) {
    let dir = TempDir::new("model");
    let out_dir = TempDir::new("out");
    let src = spec.write(dir.path());
    let out = out_dir.join("m.qbin");
    let o = convert(dir.path(), &out, ty, &[]);
    assert_ok(&o);
    assert_eq!(
        out_dir.list(),
        vec!["m.qbin".to_string()],
        "only the output file is left"
    );
    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    check_hparams(&g, spec);
    assert_eq!(
        g.get_u32("general.file_type").unwrap(),
        Some(ftype(ty)),
        "{ty}"
    );
    let base = GgmlType::from_name(ty).unwrap();
    let tied = spec.tied;
    check_tensors(&g, &src, &policy(&src, base, tied));
}

#[test]
fn every_arch_every_type() {
    for arch in [Arch::Qwen, Arch::Qwen2, Arch::Qwen3] {
        for ty in TYPES {
            convert_and_check(&Spec::new(arch), ty);
        }
    }
}

#[test]
fn every_source_dtype() {
    for src in [Src::F32, Src::F16, Src::Bf16] {
        for arch in [Arch::Qwen, Arch::Qwen2, Arch::Qwen3] {
            let mut s = Spec::new(arch);
            s.src = src;
            // f32 output of any source is exact; q8_0 within budget.
            convert_and_check(&s, "f32");
            convert_and_check(&s, "q8_0");
        }
    }
}

#[test]
fn sharded_input() {
    for arch in [Arch::Qwen2, Arch::Qwen3] {
        let mut s = Spec::new(arch);
        s.shards = 3;
        convert_and_check(&s, "q4_0");
    }
}

#[test]
fn tied_embeddings_use_token_embd_at_q8_0() {
    for arch in [Arch::Qwen2, Arch::Qwen3] {
        let mut s = Spec::new(arch);
        s.tied = true;
        convert_and_check(&s, "q4_0");
        convert_and_check(&s, "q5_1");
    }
}

#[test]
fn tied_flag_with_lm_head_copy_drops_output() {
    // tie_word_embeddings = true but the file still carries lm_head: it is the
    // embedding, so no output tensor is written.
    let dir = TempDir::new("model");
    let out_dir = TempDir::new("out");
    let mut s = Spec::new(Arch::Qwen2);
    s.tied = true;
    let mut src = s.tensors();
    let embd = src[0].clone();
    src.push(SrcTensor {
        hf: "lm_head.weight".into(),
        gguf: "output.weight".into(),
        ..embd
    });
    s.write_with(dir.path(), &src);
    let out = out_dir.join("m.qbin");
    assert_ok(&convert(dir.path(), &out, "q4_0", &[]));
    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    assert!(g.tensor("output.weight").is_none());
    assert_eq!(g.tensor("token_embd.weight").unwrap().dtype, GgmlType::Q8_0);
}

#[test]
fn output_type_override() {
    let dir = TempDir::new("model");
    let out_dir = TempDir::new("out");
    let s = Spec::new(Arch::Qwen2);
    let src = s.write(dir.path());
    let out = out_dir.join("m.qbin");
    assert_ok(&convert(
        dir.path(),
        &out,
        "q4_0",
        &["--output-type", "q4_0"],
    ));
    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let mut types = policy(&src, GgmlType::Q4_0, false);
    types.insert("output.weight".into(), GgmlType::Q4_0);
    check_tensors(&g, &src, &types);
    // and upward: f16 output for a q8_0 file
    assert_ok(&convert(
        dir.path(),
        &out,
        "q8_0",
        &["--output-type", "f16"],
    ));
    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.tensor("output.weight").unwrap().dtype, GgmlType::F16);
    assert_eq!(
        g.tensor("blk.0.attn_q.weight").unwrap().dtype,
        GgmlType::Q8_0
    );
}

#[test]
fn odd_row_length_falls_back_to_f16() {
    // hidden 40: every [*, 40] matrix has rows that are not whole q4_0 blocks.
    let mut s = Spec::new(Arch::Qwen2);
    s.n_embd = 40;
    s.n_head = 5;
    s.n_head_kv = 5;
    s.head_dim = 8;
    s.n_ff = 64;
    let dir = TempDir::new("model");
    let out_dir = TempDir::new("out");
    let src = s.write(dir.path());
    let out = out_dir.join("m.qbin");
    assert_ok(&convert(dir.path(), &out, "q4_0", &[]));
    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let types: BTreeMap<String, GgmlType> = src
        .iter()
        .map(|t| {
            let ty = if t.shape.len() == 1 {
                GgmlType::F32
            } else if t.shape[1] % 32 != 0 {
                GgmlType::F16
            } else {
                GgmlType::Q4_0 // ffn_down: rows of 64
            };
            (t.gguf.clone(), ty)
        })
        .collect();
    assert_eq!(types["blk.0.ffn_down.weight"], GgmlType::Q4_0);
    check_tensors(&g, &src, &types);
}

#[test]
fn qwen2_tokenizer_keys() {
    for pair_merges in [false, true] {
        let dir = TempDir::new("model");
        let out_dir = TempDir::new("out");
        let mut s = Spec::new(Arch::Qwen2);
        s.pair_merges = pair_merges;
        s.write(dir.path());
        let out = out_dir.join("m.qbin");
        assert_ok(&convert(dir.path(), &out, "q8_0", &[]));
        let bytes = std::fs::read(&out).unwrap();
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), Some("gpt2"));
        assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), Some("qwen2"));
        let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap();
        let types = g
            .get_i32_array("tokenizer.ggml.token_type")
            .unwrap()
            .unwrap();
        assert_eq!(tokens.len(), 320);
        assert_eq!(types.len(), 320);
        let table = gpt2_bytes();
        assert_eq!(tokens[b' ' as usize], table[b' ' as usize].to_string());
        assert_eq!(tokens[256], "Ġt");
        assert_eq!((tokens[300], types[300]), ("<|endoftext|>", 3));
        assert_eq!((tokens[302], types[302]), ("<|im_end|>", 3));
        assert_eq!((tokens[303], types[303]), ("<think>", 4));
        assert_eq!((tokens[304], types[304]), ("<|fim_prefix|>", 3));
        assert_eq!((tokens[259], types[259]), ("[PAD259]", 5));
        assert_eq!((tokens[319], types[319]), ("[PAD319]", 5));
        assert_eq!(types[65], 1);
        let merges = g.get_str_array("tokenizer.ggml.merges").unwrap().unwrap();
        assert_eq!(merges, vec!["Ġ t", "t h", "th e"]);
        // eos from tokenizer_config (<|im_end|>), bos from config.json, pad by name.
        assert_eq!(g.get_u32("tokenizer.ggml.eos_token_id").unwrap(), Some(302));
        assert_eq!(g.get_u32("tokenizer.ggml.bos_token_id").unwrap(), Some(300));
        assert_eq!(
            g.get_u32("tokenizer.ggml.padding_token_id").unwrap(),
            Some(300)
        );
        assert_eq!(
            g.get_bool("tokenizer.ggml.add_bos_token").unwrap(),
            Some(false)
        );
        assert_eq!(
            g.get_str("tokenizer.chat_template").unwrap(),
            Some(TEMPLATE)
        );
        assert_eq!(
            g.get_str("qwen_rs.tokenizer.normalizer").unwrap(),
            Some("NFC")
        );
        assert_eq!(
            g.get_u32_array("qwen_rs.generation.eos_token_ids").unwrap(),
            Some(vec![302, 300])
        );
        assert_eq!(
            g.get_f32("qwen_rs.generation.temperature").unwrap(),
            Some(0.7)
        );
        assert_eq!(g.get_f32("qwen_rs.generation.top_p").unwrap(), Some(0.8));
        assert_eq!(g.get_u32("qwen_rs.generation.top_k").unwrap(), Some(20));
        assert_eq!(
            g.get_f32("qwen_rs.generation.repetition_penalty").unwrap(),
            Some(1.05)
        );
    }
}

#[test]
fn generation_config_without_do_sample_means_greedy() {
    // transformers' GenerationConfig samples only with do_sample = true; a base model's
    // config (do_sample false or absent) generates greedily whatever its temperature says.
    let dir = TempDir::new("model");
    let out_dir = TempDir::new("out");
    Spec::new(Arch::Qwen2).write(dir.path());
    let out = out_dir.join("m.qbin");
    for do_sample in [None, Some(false)] {
        let mut gen = serde_json::json!({"eos_token_id": 302, "temperature": 0.7, "top_p": 0.8,
            "top_k": 20, "repetition_penalty": 1.05});
        if let Some(d) = do_sample {
            gen["do_sample"] = serde_json::json!(d);
        }
        write_json(&dir.join("generation_config.json"), &gen);
        assert_ok(&convert(dir.path(), &out, "q8_0", &[]));
        let bytes = std::fs::read(&out).unwrap();
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(
            g.get_f32("qwen_rs.generation.temperature").unwrap(),
            Some(0.0)
        );
        assert_eq!(g.get_f32("qwen_rs.generation.top_p").unwrap(), None);
        assert_eq!(g.get_u32("qwen_rs.generation.top_k").unwrap(), None);
        // transformers applies the penalty in greedy search too
        assert_eq!(
            g.get_f32("qwen_rs.generation.repetition_penalty").unwrap(),
            Some(1.05)
        );
    }
    // no generation_config.json at all: nothing is said, the runtime's defaults apply
    std::fs::remove_file(dir.join("generation_config.json")).unwrap();
    assert_ok(&convert(dir.path(), &out, "q8_0", &[]));
    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.get_f32("qwen_rs.generation.temperature").unwrap(), None);
}

#[test]
fn qwen3_named_chat_template_picks_default() {
    let dir = TempDir::new("model");
    let out_dir = TempDir::new("out");
    Spec::new(Arch::Qwen3).write(dir.path());
    let out = out_dir.join("m.qbin");
    assert_ok(&convert(dir.path(), &out, "q4_0", &[]));
    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(
        g.get_str("tokenizer.chat_template").unwrap(),
        Some(TEMPLATE)
    );
}

#[test]
fn qwen1_tiktoken_vocab_and_reconstructed_merges() {
    let dir = TempDir::new("model");
    let out_dir = TempDir::new("out");
    Spec::new(Arch::Qwen).write(dir.path());
    let out = out_dir.join("m.qbin");
    assert_ok(&convert(dir.path(), &out, "q4_0", &[]));
    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap();
    let types = g
        .get_i32_array("tokenizer.ggml.token_type")
        .unwrap()
        .unwrap();
    assert_eq!(tokens.len(), 480);
    let table = gpt2_bytes();
    for b in 0..256 {
        assert_eq!(tokens[b], table[b].to_string());
        assert_eq!(types[b], 1);
    }
    assert_eq!(&tokens[256..261], &["Ġt", "th", "the", "Ġth", "Ġthe"]);
    let merges = g.get_str_array("tokenizer.ggml.merges").unwrap().unwrap();
    assert_eq!(merges, vec!["Ġ t", "t h", "th e", "Ġt h", "Ġth e"]);
    assert_eq!((tokens[261], types[261]), ("<|endoftext|>", 3));
    assert_eq!((tokens[262], types[262]), ("<|im_start|>", 3));
    assert_eq!((tokens[263], types[263]), ("<|im_end|>", 3));
    assert_eq!((tokens[264], types[264]), ("<|extra_0|>", 3));
    assert_eq!((tokens[468], types[468]), ("<|extra_204|>", 3));
    assert_eq!((tokens[469], types[469]), ("[PAD469]", 5));
    assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), Some("qwen2"));
    assert_eq!(g.get_u32("tokenizer.ggml.eos_token_id").unwrap(), Some(261));
    assert_eq!(g.get_u32("tokenizer.ggml.bos_token_id").unwrap(), Some(261));
    let tpl = g.get_str("tokenizer.chat_template").unwrap().unwrap();
    assert!(tpl.contains("<|im_start|>") && tpl.contains("add_generation_prompt"));
    assert_eq!(
        g.get_str("qwen_rs.tokenizer.normalizer").unwrap(),
        Some("NFC")
    );
    // generation eos + <|im_end|> + <|im_start|> (Qwen-1 chat stop words)
    assert_eq!(
        g.get_u32_array("qwen_rs.generation.eos_token_ids").unwrap(),
        Some(vec![261, 263, 262])
    );
    assert_eq!(g.get_u32("qwen_rs.generation.top_k").unwrap(), Some(0));
    assert_eq!(g.get_f32("qwen_rs.generation.top_p").unwrap(), Some(0.8));
}

#[test]
fn verbose_prints_one_line_per_tensor_to_stderr() {
    let dir = TempDir::new("model");
    let out_dir = TempDir::new("out");
    let src = Spec::new(Arch::Qwen2).write(dir.path());
    let out = out_dir.join("m.qbin");
    let o = convert(dir.path(), &out, "q4_0", &["-v"]);
    assert_ok(&o);
    let e = stderr(&o);
    for t in &src {
        let line = e
            .lines()
            .find(|l| l.starts_with(&format!("{} ", t.gguf)))
            .unwrap_or_else(|| panic!("no line for {}", t.gguf));
        assert!(line.contains("rmse"), "{line}");
    }
    let l = e
        .lines()
        .find(|l| l.starts_with("blk.0.attn_q.weight "))
        .unwrap();
    assert!(l.contains("[64, 64]") && l.contains("q4_0"), "{l}");
}

#[test]
fn help_lists_everything() {
    let o = run(&["--help"]);
    assert!(o.status.success());
    let h = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "-i",
        "-o",
        "-t",
        "--output-type",
        "-v",
        "q4_0",
        "q4_1",
        "q5_0",
        "q5_1",
        "q8_0",
        "bf16",
        "f16",
        "f32",
    ] {
        assert!(h.contains(needle), "--help should mention {needle}");
    }
}

#[test]
fn bad_type_is_one_line_error() {
    let o = run(&["-i", ".", "-o", "x.qbin", "-t", "q2_K"]);
    assert_one_line_error(&o, &["q2_K"]);
}

#[test]
fn overwrites_existing_output_atomically() {
    let dir = TempDir::new("model");
    let out_dir = TempDir::new("out");
    Spec::new(Arch::Qwen2).write(dir.path());
    let out = out_dir.join("m.qbin");
    std::fs::write(&out, b"old").unwrap();
    assert_ok(&convert(dir.path(), &out, "q8_0", &[]));
    let bytes = std::fs::read(&out).unwrap();
    assert!(Gguf::parse(&bytes).is_ok());
    assert_eq!(out_dir.list(), vec!["m.qbin".to_string()]);
}

#[test]
fn sliding_window_fields_become_extras_only_when_enabled() {
    let dir = TempDir::new("model");
    let out_dir = TempDir::new("out");
    let s = Spec::new(Arch::Qwen2);
    s.write(dir.path());
    let out = out_dir.join("m.qbin");
    assert_ok(&convert(dir.path(), &out, "q8_0", &[]));
    let bytes = std::fs::read(&out).unwrap();
    assert!(Gguf::parse(&bytes)
        .unwrap()
        .get("qwen_rs.attention.sliding_window")
        .is_none());
    let mut cfg = s.config();
    cfg["use_sliding_window"] = serde_json::json!(true);
    write_json(&dir.join("config.json"), &cfg);
    assert_ok(&convert(dir.path(), &out, "q8_0", &[]));
    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(
        g.get_u32("qwen_rs.attention.sliding_window").unwrap(),
        Some(4096)
    );
    assert_eq!(
        g.get_u32("qwen_rs.attention.max_window_layers").unwrap(),
        Some(2)
    );
}

#[test]
fn qwen1_extras_past_vocab_are_dropped() {
    // 261 ranks + 3 named specials + 16 of the 205 extras fit in 280 ids.
    let dir = TempDir::new("model");
    let out_dir = TempDir::new("out");
    let mut s = Spec::new(Arch::Qwen);
    s.n_vocab = 280;
    s.write(dir.path());
    let out = out_dir.join("m.qbin");
    assert_ok(&convert(dir.path(), &out, "q8_0", &[]));
    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap();
    assert_eq!(tokens.len(), 280);
    assert_eq!(tokens[279], "<|extra_15|>");
}

/// do_sample true with keys left out: the file carries transformers' defaults
/// (GenerationConfig: temperature 1.0, top_k 50, top_p 1.0, no min_p), so the
/// runtime does not use llama.cpp's 0.8 / 40 / 0.95 / min_p 0.05 (review 3, defect 4).
#[test]
fn sampling_defaults_follow_transformers() {
    let dir = TempDir::new("model");
    let out_dir = TempDir::new("out");
    let out = out_dir.join("m.gguf");
    let read = |gen: serde_json::Value| {
        write_json(&dir.join("generation_config.json"), &gen);
        assert_ok(&convert(dir.path(), &out, "q8_0", &[]));
        let bytes = std::fs::read(&out).unwrap();
        let g = Gguf::parse(&bytes).unwrap();
        (
            g.get_f32("qwen_rs.generation.temperature").unwrap(),
            g.get_u32("qwen_rs.generation.top_k").unwrap(),
            g.get_f32("qwen_rs.generation.top_p").unwrap(),
            g.get_f32("general.sampling.min_p").unwrap(),
        )
    };
    Spec::new(Arch::Qwen2).write(dir.path());
    let gen = serde_json::json!({"eos_token_id": 302, "do_sample": true});
    assert_eq!(read(gen), (Some(1.0), Some(50), Some(1.0), Some(0.0)));
    // Qwen-7B-Chat's file: top_k 0 (off) and top_p 0.8 kept, temperature 1.0 added.
    let gen = serde_json::json!({"eos_token_id": 302, "do_sample": true, "top_k": 0, "top_p": 0.8,
        "repetition_penalty": 1.1});
    assert_eq!(read(gen), (Some(1.0), Some(0), Some(0.8), Some(0.0)));
    // explicit values win, min_p included; null means "not set" as in transformers
    let gen = serde_json::json!({"eos_token_id": 302, "do_sample": true, "temperature": 0.6,
        "top_k": 20, "top_p": 0.95, "min_p": 0.1});
    assert_eq!(read(gen), (Some(0.6), Some(20), Some(0.95), Some(0.1)));
    let gen = serde_json::json!({"eos_token_id": 302, "do_sample": true, "temperature": null});
    assert_eq!(read(gen), (Some(1.0), Some(50), Some(1.0), Some(0.0)));
    // greedy: temperature 0, nothing else about sampling
    let gen = serde_json::json!({"eos_token_id": 302, "do_sample": false, "min_p": 0.1});
    assert_eq!(read(gen), (Some(0.0), None, None, None));
}
