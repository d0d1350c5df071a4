//! Writes the seed corpora under fuzz/seeds/<target>/ (committed; rerun after a
//! format change): `cargo run --manifest-path fuzz/Cargo.toml --example make_seeds`.
//! Every seed is small (< 20 KB) so libFuzzer mutates it quickly.

use std::path::{Path, PathBuf};

use quant_formats::gguf::{GgufWriter, Value, ValueType};
use quant_formats::{reference, GgmlType};
use qwen::tokenizer::byte_level;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = root().join("seeds").join(target);
    std::fs::create_dir_all(&dir).expect("create seed folder");
    std::fs::write(dir.join(name), bytes).expect("write seed");
    println!("seeds/{target}/{name}: {} bytes", bytes.len());
}

/// Deterministic values in [-0.5, 0.5).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// A GGUF file: metadata plus (name, dims in ggml order, type) tensors.
fn gguf(kv: &[(String, Value)], tensors: &[(String, Vec<u64>, GgmlType)]) -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in kv {
        w.add(k.clone(), v.clone());
    }
    let mut datas = Vec::new();
    for (i, (name, dims, ty)) in tensors.iter().enumerate() {
        w.add_tensor(name, dims, *ty).expect("add_tensor");
        let n: u64 = dims.iter().product();
        let x = values(n as usize, i as u64 + 1);
        datas.push(reference::quantize(*ty, &x).expect("quantize"));
    }
    let mut s = w.start(Vec::new()).expect("start");
    for ((name, _, _), bytes) in tensors.iter().zip(&datas) {
        s.write_tensor(name, bytes).expect("write_tensor");
    }
    s.finish().expect("finish")
}

fn tokenizer_kv() -> Vec<(String, Value)> {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_level::encode(&[b])).collect();
    let merges = ["h e", "l l", "he ll", "hell o"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    let mut types = vec![1i32; tokens.len()];
    for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(s.to_string());
        types.push(3);
    }
    let eos = tokens.len() as u32 - 1;
    vec![
        ("tokenizer.ggml.model".into(), Value::from("gpt2")),
        ("tokenizer.ggml.pre".into(), Value::from("qwen2")),
        ("tokenizer.ggml.tokens".into(), Value::from(tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::from(merges.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        ),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("qwen_rs.tokenizer.normalizer".into(), Value::from("NFC")),
        (
            "qwen_rs.generation.eos_token_ids".into(),
            Value::from(vec![eos]),
        ),
        (
            "tokenizer.chat_template".into(),
            Value::from(
                "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
                 {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
            ),
        ),
    ]
}

/// A one-layer model of `arch` with n_embd 32, 2 heads of 16, 1 kv head, n_ff 32.
fn model(arch: &str, n_vocab: u64, wtype: GgmlType, with_tokenizer: bool) -> Vec<u8> {
    let (e, hd, ff) = (32u64, 16u64, 32u64);
    let (q, kv) = (2 * hd, hd);
    let k = |s: &str| format!("{arch}.{s}");
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::from(arch)),
        ("general.name".into(), Value::from("seed")),
        ("general.alignment".into(), Value::U32(32)),
        (k("context_length"), Value::U32(64)),
        (k("embedding_length"), Value::U32(e as u32)),
        (k("block_count"), Value::U32(1)),
        (k("feed_forward_length"), Value::U32(ff as u32)),
        (k("attention.head_count"), Value::U32(2)),
        (
            k("attention.head_count_kv"),
            Value::U32(if arch == "qwen" { 2 } else { 1 }),
        ),
        (k("rope.freq_base"), Value::F32(10000.0)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        (k("rope.dimension_count"), Value::U32(hd as u32)),
    ];
    if arch == "qwen3" {
        meta.push((k("attention.key_length"), Value::U32(hd as u32)));
        meta.push((k("attention.value_length"), Value::U32(hd as u32)));
    }
    if arch == "qwen" {
        meta.push(("qwen_rs.qwen.use_dynamic_ntk".into(), Value::Bool(true)));
        meta.push(("qwen_rs.qwen.use_logn_attn".into(), Value::Bool(true)));
        meta.push(("qwen_rs.qwen.seq_length".into(), Value::U32(16)));
    }
    if with_tokenizer {
        meta.extend(tokenizer_kv());
    }
    let f32t = GgmlType::F32;
    let mut t: Vec<(String, Vec<u64>, GgmlType)> =
        vec![("token_embd.weight".into(), vec![e, n_vocab], GgmlType::Q8_0)];
    let b = |s: &str| format!("blk.0.{s}");
    t.push((b("attn_norm.weight"), vec![e], f32t));
    if arch == "qwen" {
        t.push((b("attn_qkv.weight"), vec![e, 3 * q], wtype));
        t.push((b("attn_qkv.bias"), vec![3 * q], f32t));
    } else {
        t.push((b("attn_q.weight"), vec![e, q], wtype));
        t.push((b("attn_k.weight"), vec![e, kv], wtype));
        t.push((b("attn_v.weight"), vec![e, kv], wtype));
        if arch == "qwen2" {
            t.push((b("attn_q.bias"), vec![q], f32t));
            t.push((b("attn_k.bias"), vec![kv], f32t));
            t.push((b("attn_v.bias"), vec![kv], f32t));
        }
        if arch == "qwen3" {
            t.push((b("attn_q_norm.weight"), vec![hd], f32t));
            t.push((b("attn_k_norm.weight"), vec![hd], f32t));
        }
    }
    t.push((b("attn_output.weight"), vec![q, e], wtype));
    t.push((b("ffn_norm.weight"), vec![e], f32t));
    t.push((b("ffn_gate.weight"), vec![e, ff], wtype));
    t.push((b("ffn_up.weight"), vec![e, ff], wtype));
    t.push((b("ffn_down.weight"), vec![ff, e], wtype));
    t.push(("output_norm.weight".into(), vec![e], f32t));
    gguf(&meta, &t)
}

fn gguf_seeds() {
    write(
        "gguf",
        "model_qwen2_q8_0.gguf",
        &model("qwen2", 8, GgmlType::Q8_0, false),
    );
    write(
        "gguf",
        "model_qwen3_q4_0.gguf",
        &model("qwen3", 8, GgmlType::Q4_0, false),
    );
    write(
        "gguf",
        "model_qwen_q4_1.gguf",
        &model("qwen", 8, GgmlType::Q4_1, false),
    );
    write(
        "gguf",
        "model_qwen2_tok.gguf",
        &model("qwen2", 4, GgmlType::Q4_0, true),
    );
    write("gguf", "tokenizer_only.gguf", &gguf(&tokenizer_kv(), &[]));

    // One tensor of every type we read, smallest legal size.
    let types = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Bf16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
    ];
    let t: Vec<_> = types
        .iter()
        .map(|&ty| (format!("t.{}", ty.name()), vec![32u64, 2], ty))
        .collect();
    write("gguf", "every_type.gguf", &gguf(&[], &t));

    // Every metadata value type, nested arrays, a 3-D and a 0-element tensor.
    let kv: Vec<(String, Value)> = vec![
        ("a.u8".into(), Value::U8(7)),
        ("a.i8".into(), Value::I8(-7)),
        ("a.u16".into(), Value::U16(700)),
        ("a.i16".into(), Value::I16(-700)),
        ("a.u32".into(), Value::U32(70000)),
        ("a.i32".into(), Value::I32(-70000)),
        ("a.f32".into(), Value::F32(0.5)),
        ("a.bool".into(), Value::Bool(true)),
        ("a.str".into(), Value::from("héllo")),
        ("a.u64".into(), Value::U64(1 << 40)),
        ("a.i64".into(), Value::I64(-(1 << 40))),
        ("a.f64".into(), Value::F64(0.25)),
        ("a.arr_f32".into(), Value::from(vec![1.0f32, 2.0])),
        (
            "a.nested".into(),
            Value::Array(
                ValueType::Array,
                vec![Value::from(vec![1u32, 2]), Value::from(vec![3u32])],
            ),
        ),
        ("a.empty".into(), Value::Array(ValueType::String, vec![])),
    ];
    let t = vec![
        ("cube".to_string(), vec![32u64, 2, 2], GgmlType::F16),
        ("empty".to_string(), vec![32u64, 0], GgmlType::F32),
    ];
    write("gguf", "every_value.gguf", &gguf(&kv, &t));
}

/// A safetensors file of F16 tensors (name, PyTorch shape), packed in name order.
fn safetensors(tensors: &[(String, Vec<usize>)]) -> Vec<u8> {
    let mut sorted: Vec<&(String, Vec<usize>)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut data = Vec::new();
    for (i, (name, shape)) in sorted.iter().enumerate() {
        let n: usize = shape.iter().product();
        let start = data.len();
        for x in values(n, i as u64 + 11) {
            data.extend_from_slice(&half::f16::from_f32(x * 0.1).to_le_bytes());
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&header).expect("json");
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    out
}

/// HF tensors of a one-layer Qwen2/Qwen3 with hidden 8, 2 heads of 4, 1 kv head, ffn 8.
fn hf_tensors(arch: &str, vocab: usize) -> Vec<(String, Vec<usize>)> {
    let l = |s: &str| format!("model.layers.0.{s}");
    let mut t = vec![
        ("model.embed_tokens.weight".to_string(), vec![vocab, 8]),
        ("model.norm.weight".to_string(), vec![8]),
        (l("input_layernorm.weight"), vec![8]),
        (l("post_attention_layernorm.weight"), vec![8]),
        (l("self_attn.q_proj.weight"), vec![8, 8]),
        (l("self_attn.k_proj.weight"), vec![4, 8]),
        (l("self_attn.v_proj.weight"), vec![4, 8]),
        (l("self_attn.o_proj.weight"), vec![8, 8]),
        (l("mlp.gate_proj.weight"), vec![8, 8]),
        (l("mlp.up_proj.weight"), vec![8, 8]),
        (l("mlp.down_proj.weight"), vec![8, 8]),
    ];
    if arch == "qwen2" {
        t.push((l("self_attn.q_proj.bias"), vec![8]));
        t.push((l("self_attn.k_proj.bias"), vec![4]));
        t.push((l("self_attn.v_proj.bias"), vec![4]));
    } else {
        t.push((l("self_attn.q_norm.weight"), vec![4]));
        t.push((l("self_attn.k_norm.weight"), vec![4]));
    }
    t
}

fn config(arch: &str, vocab: usize) -> Vec<u8> {
    let class = if arch == "qwen2" {
        "Qwen2ForCausalLM"
    } else {
        "Qwen3ForCausalLM"
    };
    serde_json::to_vec_pretty(&serde_json::json!({
        "architectures": [class],
        "model_type": arch,
        "hidden_size": 8,
        "intermediate_size": 8,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 4,
        "num_hidden_layers": 1,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": true,
        "vocab_size": vocab,
        "torch_dtype": "float16"
    }))
    .expect("json")
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&b"@@FILE@@"[..])
}

fn safetensors_seeds() {
    let fixtures = root().join("../tests/fixtures/hf");
    let tok_json = std::fs::read(fixtures.join("qwen2_gqa2/tokenizer.json"))
        .expect("tests/fixtures/hf/qwen2_gqa2/tokenizer.json");
    for arch in ["qwen2", "qwen3"] {
        let st = safetensors(&hf_tensors(arch, 16));
        write(
            "safetensors",
            &format!("{arch}_single.bin"),
            &join(&[&config(arch, 16), &st]),
        );
    }
    // With the fixture tokenizer (312 tokens): vocab 320.
    let st = safetensors(&hf_tensors("qwen2", 320));
    write(
        "safetensors",
        "qwen2_tokenizer.bin",
        &join(&[&config("qwen2", 320), &st, b"", b"", &tok_json]),
    );
    // Sharded: the embedding in shard 2, the rest in shard 1.
    let all = hf_tensors("qwen2", 16);
    let (s2, s1): (Vec<_>, Vec<_>) = all.into_iter().partition(|(n, _)| n.contains("embed"));
    let mut map = serde_json::Map::new();
    for (n, _) in &s1 {
        map.insert(n.clone(), "model-00001-of-00002.safetensors".into());
    }
    for (n, _) in &s2 {
        map.insert(n.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index =
        serde_json::to_vec(&serde_json::json!({"metadata": {}, "weight_map": map})).expect("json");
    write(
        "safetensors",
        "qwen2_sharded.bin",
        &join(&[
            &config("qwen2", 16),
            &safetensors(&s1),
            &index,
            &safetensors(&s2),
        ]),
    );
    // Qwen-1: fused c_attn, w1/w2, the fixture's qwen.tiktoken (304 ranks + specials, vocab 544).
    let tiktoken = std::fs::read(fixtures.join("qwen1/qwen.tiktoken"))
        .expect("tests/fixtures/hf/qwen1/qwen.tiktoken");
    let h = |s: &str| format!("transformer.h.0.{s}");
    let t = vec![
        ("transformer.wte.weight".to_string(), vec![544, 8]),
        ("transformer.ln_f.weight".to_string(), vec![8]),
        (h("ln_1.weight"), vec![8]),
        (h("ln_2.weight"), vec![8]),
        (h("attn.c_attn.weight"), vec![24, 8]),
        (h("attn.c_attn.bias"), vec![24]),
        (h("attn.c_proj.weight"), vec![8, 8]),
        (h("mlp.w1.weight"), vec![8, 8]),
        (h("mlp.w2.weight"), vec![8, 8]),
        (h("mlp.c_proj.weight"), vec![8, 8]),
    ];
    let cfg = serde_json::to_vec_pretty(&serde_json::json!({
        "architectures": ["QWenLMHeadModel"],
        "model_type": "qwen",
        "hidden_size": 8,
        "intermediate_size": 16,
        "kv_channels": 4,
        "num_attention_heads": 2,
        "num_hidden_layers": 1,
        "layer_norm_epsilon": 1e-6,
        "rotary_emb_base": 10000.0,
        "rotary_pct": 1.0,
        "seq_length": 16,
        "max_position_embeddings": 64,
        "use_dynamic_ntk": true,
        "use_logn_attn": true,
        "vocab_size": 544
    }))
    .expect("json");
    write(
        "safetensors",
        "qwen1_tiktoken.bin",
        &join(&[&cfg, &safetensors(&t), b"", b"", &tiktoken]),
    );
}

fn tokenizer_seeds() {
    let seed = |flags: u8, vocab: &[u8], text: &str| {
        let mut v = vec![flags];
        v.extend_from_slice(vocab);
        v.push(0xff);
        v.extend_from_slice(text.as_bytes());
        v
    };
    let vocab = b"he\nll\nhell\nhello\n=h e\n=l l\n=he ll\n=hell o\n!<|endoftext|>\n!<|im_start|>\n!<|im_end|>\n?";
    let text =
        "hello hell <|im_start|>user\nHi 123 caf\u{e9} cafe\u{301}<|im_end|>\n\u{1F600}  \t\r\n x";
    write("tokenizer", "merges_qwen2.bin", &seed(0x08, vocab, text));
    write(
        "tokenizer",
        "merges_smollm_nfc.bin",
        &seed(0x0b, vocab, text),
    );
    write("tokenizer", "ranks_nfc_first.bin", &seed(0x04, vocab, text));
    write("tokenizer", "no_bytes.bin", &seed(0x10, b"a\nb", "ab"));
    let mut fx = vec![0x80];
    fx.extend_from_slice(
        "Hello world, the cat <|im_start|>x<|im_end|> \u{4f60}\u{597d} 42".as_bytes(),
    );
    write("tokenizer", "fixture_qwen2.bin", &fx);
    fx[0] = 0x81;
    write("tokenizer", "fixture_smollm.bin", &fx);
}

/// Each model seed must get through the whole reader (so mutations start deep).
fn verify() {
    use quant_formats::gguf::Gguf;
    for e in std::fs::read_dir(root().join("seeds/gguf")).expect("seeds/gguf") {
        let p = e.expect("entry").path();
        let bytes = std::fs::read(&p).expect("read seed");
        let g = Gguf::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("model_") {
            qwen::Model::load(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        if name.contains("tok") {
            qwen::tokenizer::Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    let dir = std::env::temp_dir().join(format!("qwen-make-seeds-{}", std::process::id()));
    for e in std::fs::read_dir(root().join("seeds/safetensors")).expect("seeds/safetensors") {
        let p = e.expect("entry").path();
        let bytes = std::fs::read(&p).expect("read seed");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let parts: Vec<&[u8]> = bytes.split_str_marker();
        let sharded = parts.get(2).is_some_and(|x| !x.is_empty());
        std::fs::write(dir.join("config.json"), parts[0]).expect("write");
        if sharded {
            std::fs::write(dir.join("model.safetensors.index.json"), parts[2]).expect("write");
            std::fs::write(dir.join("model-00001-of-00002.safetensors"), parts[1]).expect("write");
            std::fs::write(dir.join("model-00002-of-00002.safetensors"), parts[3]).expect("write");
        } else {
            std::fs::write(dir.join("model.safetensors"), parts[1]).expect("write");
        }
        let name = p.display();
        let cfg = qwen_convert::hf::Config::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        let hp = qwen_convert::arch::Hparams::from_config(&cfg)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let ck = qwen_convert::hf::Checkpoint::open(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        qwen_convert::arch::tensor_specs(&hp, &ck).unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Some(tok) = parts.get(4) {
            std::fs::write(dir.join("tokenizer.json"), tok).expect("write");
            std::fs::write(dir.join("qwen.tiktoken"), tok).expect("write");
            qwen_convert::tokenizer::Vocab::load(&dir, &hp, &cfg)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        println!("{name}: reads through");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Splits a safetensors-target input at its `@@FILE@@` markers.
trait SplitMarker {
    fn split_str_marker(&self) -> Vec<&[u8]>;
}

impl SplitMarker for Vec<u8> {
    fn split_str_marker(&self) -> Vec<&[u8]> {
        let m = b"@@FILE@@";
        let mut parts = Vec::new();
        let mut rest = &self[..];
        while let Some(k) = rest.windows(m.len()).position(|w| w == m) {
            parts.push(&rest[..k]);
            rest = &rest[k + m.len()..];
        }
        parts.push(rest);
        parts
    }
}

fn main() {
    gguf_seeds();
    safetensors_seeds();
    tokenizer_seeds();
    verify();
}
