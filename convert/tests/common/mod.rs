//! Test helpers: tiny Hugging Face folders built in a temp dir (config.json,
//! safetensors written with the `safetensors` crate, tokenizer files), the
//! `qwen-convert` binary runner, and a checker that reads the output with
//! `quant_formats::gguf` and compares dequantized tensors with the source.
#![allow(dead_code)]

use quant_formats::gguf::Gguf;
use quant_formats::{reference, GgmlType};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

pub const BIN: &str = env!("CARGO_BIN_EXE_qwen-convert");

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "qwen-convert-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
    /// File names in the folder, sorted.
    pub fn list(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// xorshift64*: deterministic test data.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545F4914F6CDD1D);
        (x >> 40) as f32 / (1u64 << 24) as f32 // [0, 1)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * self.next_f32()).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Qwen,
    Qwen2,
    Qwen3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src {
    F32,
    F16,
    Bf16,
}

impl Src {
    pub fn st(self) -> safetensors::Dtype {
        match self {
            Src::F32 => safetensors::Dtype::F32,
            Src::F16 => safetensors::Dtype::F16,
            Src::Bf16 => safetensors::Dtype::BF16,
        }
    }
    pub fn encode(self, x: &[f32]) -> Vec<u8> {
        match self {
            Src::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Src::F16 => x
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            Src::Bf16 => x
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    }
    /// The value the file really holds.
    pub fn round(self, x: &[f32]) -> Vec<f32> {
        match self {
            Src::F32 => x.to_vec(),
            Src::F16 => x.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect(),
            Src::Bf16 => x
                .iter()
                .map(|v| half::bf16::from_f32(*v).to_f32())
                .collect(),
        }
    }
}

/// One source tensor: HF name, GGUF name, PyTorch shape, values as stored.
#[derive(Clone, Debug)]
pub struct SrcTensor {
    pub hf: String,
    pub gguf: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    /// Stored dtype override (e.g. I32 for the unsupported-dtype test).
    pub raw: Option<(safetensors::Dtype, Vec<u8>)>,
}

/// What to build.
#[derive(Clone, Debug)]
pub struct Spec {
    pub arch: Arch,
    pub src: Src,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_layer: usize,
    pub n_vocab: usize,
    pub tied: bool,
    /// Number of safetensors shards (1 = model.safetensors).
    pub shards: usize,
    /// Merges as [a, b] pairs instead of "a b" strings.
    pub pair_merges: bool,
    pub seed: u64,
}

impl Spec {
    pub fn new(arch: Arch) -> Spec {
        Spec {
            arch,
            src: Src::Bf16,
            n_embd: 64,
            n_head: 4,
            n_head_kv: if arch == Arch::Qwen { 4 } else { 2 },
            head_dim: if arch == Arch::Qwen3 { 32 } else { 16 },
            n_ff: 96,
            n_layer: 2,
            n_vocab: if arch == Arch::Qwen { 480 } else { 320 },
            tied: false,
            shards: 1,
            pair_merges: false,
            seed: 7,
        }
    }

    pub fn gguf_arch(&self) -> &'static str {
        match self.arch {
            Arch::Qwen => "qwen",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }

    pub fn config(&self) -> Value {
        match self.arch {
            Arch::Qwen => json!({
                "architectures": ["QWenLMHeadModel"],
                "model_type": "qwen",
                "hidden_size": self.n_embd,
                "num_attention_heads": self.n_head,
                "num_hidden_layers": self.n_layer,
                "kv_channels": self.head_dim,
                "intermediate_size": self.n_ff * 2,
                "rotary_emb_base": 10000.0,
                "rotary_pct": 1.0,
                "seq_length": 32,
                "max_position_embeddings": 64,
                "layer_norm_epsilon": 1e-6,
                "use_dynamic_ntk": true,
                "use_logn_attn": true,
                "vocab_size": self.n_vocab,
                "tie_word_embeddings": false,
                "torch_dtype": "bfloat16",
            }),
            Arch::Qwen2 => json!({
                "architectures": ["Qwen2ForCausalLM"],
                "model_type": "qwen2",
                "hidden_size": self.n_embd,
                "intermediate_size": self.n_ff,
                "num_attention_heads": self.n_head,
                "num_key_value_heads": self.n_head_kv,
                "num_hidden_layers": self.n_layer,
                "max_position_embeddings": 128,
                "rms_norm_eps": 1e-6,
                "rope_theta": 1000000.0,
                "tie_word_embeddings": self.tied,
                "use_sliding_window": false,
                "sliding_window": 4096,
                "max_window_layers": 2,
                "vocab_size": self.n_vocab,
                "bos_token_id": 300,
                "eos_token_id": 300,
                "torch_dtype": "bfloat16",
            }),
            // transformers 5 style: `dtype` and `rope_parameters`.
            Arch::Qwen3 => json!({
                "architectures": ["Qwen3ForCausalLM"],
                "model_type": "qwen3",
                "hidden_size": self.n_embd,
                "intermediate_size": self.n_ff,
                "num_attention_heads": self.n_head,
                "num_key_value_heads": self.n_head_kv,
                "head_dim": self.head_dim,
                "num_hidden_layers": self.n_layer,
                "max_position_embeddings": 256,
                "rms_norm_eps": 1e-6,
                "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
                "attention_bias": false,
                "tie_word_embeddings": self.tied,
                "vocab_size": self.n_vocab,
                "bos_token_id": 300,
                "eos_token_id": 302,
                "dtype": "bfloat16",
            }),
        }
    }

    /// Source tensors in a fixed order.
    pub fn tensors(&self) -> Vec<SrcTensor> {
        let mut rng = Rng::new(self.seed);
        let (e, v, ff) = (self.n_embd, self.n_vocab, self.n_ff);
        let q = self.n_head * self.head_dim;
        let kv = self.n_head_kv * self.head_dim;
        let mut out = Vec::new();
        let mut add = |hf: String, gguf: String, shape: Vec<usize>, norm: bool| {
            let n: usize = shape.iter().product();
            let data = if norm {
                rng.uniform(n, 0.5, 1.5)
            } else {
                rng.uniform(n, -0.1, 0.1)
            };
            out.push(SrcTensor {
                hf,
                gguf,
                shape,
                data: self.src.round(&data),
                raw: None,
            });
        };
        let qwen1 = self.arch == Arch::Qwen;
        let embd = if qwen1 {
            "transformer.wte.weight"
        } else {
            "model.embed_tokens.weight"
        };
        add(embd.into(), "token_embd.weight".into(), vec![v, e], false);
        for i in 0..self.n_layer {
            let b = |s: &str| format!("blk.{i}.{s}");
            if qwen1 {
                let h = |s: &str| format!("transformer.h.{i}.{s}");
                add(h("ln_1.weight"), b("attn_norm.weight"), vec![e], true);
                add(
                    h("attn.c_attn.weight"),
                    b("attn_qkv.weight"),
                    vec![3 * q, e],
                    false,
                );
                add(
                    h("attn.c_attn.bias"),
                    b("attn_qkv.bias"),
                    vec![3 * q],
                    false,
                );
                add(
                    h("attn.c_proj.weight"),
                    b("attn_output.weight"),
                    vec![e, q],
                    false,
                );
                add(h("ln_2.weight"), b("ffn_norm.weight"), vec![e], true);
                add(h("mlp.w1.weight"), b("ffn_up.weight"), vec![ff, e], false);
                add(h("mlp.w2.weight"), b("ffn_gate.weight"), vec![ff, e], false);
                add(
                    h("mlp.c_proj.weight"),
                    b("ffn_down.weight"),
                    vec![e, ff],
                    false,
                );
            } else {
                let h = |s: &str| format!("model.layers.{i}.{s}");
                add(
                    h("input_layernorm.weight"),
                    b("attn_norm.weight"),
                    vec![e],
                    true,
                );
                add(
                    h("self_attn.q_proj.weight"),
                    b("attn_q.weight"),
                    vec![q, e],
                    false,
                );
                add(
                    h("self_attn.k_proj.weight"),
                    b("attn_k.weight"),
                    vec![kv, e],
                    false,
                );
                add(
                    h("self_attn.v_proj.weight"),
                    b("attn_v.weight"),
                    vec![kv, e],
                    false,
                );
                if self.arch == Arch::Qwen2 {
                    add(h("self_attn.q_proj.bias"), b("attn_q.bias"), vec![q], false);
                    add(
                        h("self_attn.k_proj.bias"),
                        b("attn_k.bias"),
                        vec![kv],
                        false,
                    );
                    add(
                        h("self_attn.v_proj.bias"),
                        b("attn_v.bias"),
                        vec![kv],
                        false,
                    );
                } else {
                    add(
                        h("self_attn.q_norm.weight"),
                        b("attn_q_norm.weight"),
                        vec![self.head_dim],
                        true,
                    );
                    add(
                        h("self_attn.k_norm.weight"),
                        b("attn_k_norm.weight"),
                        vec![self.head_dim],
                        true,
                    );
                }
                add(
                    h("self_attn.o_proj.weight"),
                    b("attn_output.weight"),
                    vec![e, q],
                    false,
                );
                add(
                    h("post_attention_layernorm.weight"),
                    b("ffn_norm.weight"),
                    vec![e],
                    true,
                );
                add(
                    h("mlp.gate_proj.weight"),
                    b("ffn_gate.weight"),
                    vec![ff, e],
                    false,
                );
                add(
                    h("mlp.up_proj.weight"),
                    b("ffn_up.weight"),
                    vec![ff, e],
                    false,
                );
                add(
                    h("mlp.down_proj.weight"),
                    b("ffn_down.weight"),
                    vec![e, ff],
                    false,
                );
            }
        }
        let norm = if qwen1 {
            "transformer.ln_f.weight"
        } else {
            "model.norm.weight"
        };
        add(norm.into(), "output_norm.weight".into(), vec![e], true);
        if !self.tied {
            add(
                "lm_head.weight".into(),
                "output.weight".into(),
                vec![v, e],
                false,
            );
        }
        out
    }

    /// Write the whole folder; returns the tensors written.
    pub fn write(&self, dir: &Path) -> Vec<SrcTensor> {
        let t = self.tensors();
        self.write_with(dir, &t);
        t
    }

    pub fn write_with(&self, dir: &Path, tensors: &[SrcTensor]) {
        write_json(&dir.join("config.json"), &self.config());
        write_safetensors(dir, tensors, self.src, self.shards);
        match self.arch {
            Arch::Qwen => {
                std::fs::write(dir.join("qwen.tiktoken"), tiktoken_text()).unwrap();
                write_json(
                    &dir.join("generation_config.json"),
                    &json!({"chat_format": "chatml", "eos_token_id": 261, "pad_token_id": 261,
                            "do_sample": true, "top_k": 0, "top_p": 0.8, "repetition_penalty": 1.1}),
                );
            }
            Arch::Qwen2 | Arch::Qwen3 => {
                write_json(
                    &dir.join("tokenizer.json"),
                    &tokenizer_json(self.pair_merges),
                );
                write_json(
                    &dir.join("tokenizer_config.json"),
                    &tokenizer_config(self.arch),
                );
                write_json(
                    &dir.join("generation_config.json"),
                    &json!({"eos_token_id": [302, 300], "do_sample": true, "temperature": 0.7, "top_p": 0.8,
                            "top_k": 20, "repetition_penalty": 1.05}),
                );
            }
        }
    }
}

pub fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// Write tensors into `shards` files (round-robin), with an index when > 1.
pub fn write_safetensors(dir: &Path, tensors: &[SrcTensor], src: Src, shards: usize) {
    let encoded: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|t| match &t.raw {
            Some((dt, bytes)) => (t.hf.clone(), *dt, t.shape.clone(), bytes.clone()),
            None => (t.hf.clone(), src.st(), t.shape.clone(), src.encode(&t.data)),
        })
        .collect();
    if shards <= 1 {
        write_st_file(&dir.join("model.safetensors"), &encoded);
        return;
    }
    let mut weight_map = serde_json::Map::new();
    for s in 0..shards {
        let name = format!("model-{:05}-of-{:05}.safetensors", s + 1, shards);
        let part: Vec<_> = encoded
            .iter()
            .enumerate()
            .filter(|(i, _)| i % shards == s)
            .map(|(_, t)| t.clone())
            .collect();
        for t in &part {
            weight_map.insert(t.0.clone(), Value::String(name.clone()));
        }
        write_st_file(&dir.join(&name), &part);
    }
    write_json(
        &dir.join("model.safetensors.index.json"),
        &json!({"metadata": {"total_size": 0}, "weight_map": weight_map}),
    );
}

fn write_st_file(path: &Path, tensors: &[(String, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, dt, shape, bytes)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, &None, path).unwrap();
}

/// GPT-2 byte -> char table, written independently of the converter.
pub fn gpt2_bytes() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec!['\0'; 256];
    for (b, c) in bs.iter().zip(cs) {
        table[*b as usize] = char::from_u32(c).unwrap();
    }
    table
}

pub const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Byte-level BPE: 256 byte tokens, 3 merges (ids 256..258), added tokens
/// 300 <|endoftext|>, 301 <|im_start|>, 302 <|im_end|> (special), 303 <think> (not),
/// 304 <|fim_prefix|> (not special, but looks it: llama.cpp makes it CONTROL).
pub fn tokenizer_json(pair_merges: bool) -> Value {
    let table = gpt2_bytes();
    let mut vocab = serde_json::Map::new();
    for (b, c) in table.iter().enumerate() {
        vocab.insert(c.to_string(), json!(b));
    }
    vocab.insert("Ġt".into(), json!(256));
    vocab.insert("th".into(), json!(257));
    vocab.insert("the".into(), json!(258));
    let merges = if pair_merges {
        json!([["Ġ", "t"], ["t", "h"], ["th", "e"]])
    } else {
        json!(["Ġ t", "t h", "th e"])
    };
    let added = |id: u32, s: &str, special: bool| {
        json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": special})
    };
    json!({
        "version": "1.0",
        "added_tokens": [added(300, "<|endoftext|>", true), added(301, "<|im_start|>", true),
                         added(302, "<|im_end|>", true), added(303, "<think>", false),
                         added(304, "<|fim_prefix|>", false)],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "byte_fallback": false,
                  "vocab": vocab, "merges": merges},
    })
}

pub const TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}";

pub fn tokenizer_config(arch: Arch) -> Value {
    // Qwen3 uses the list-of-named-templates form to exercise "default".
    let tpl = if arch == Arch::Qwen3 {
        json!([{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": TEMPLATE}])
    } else {
        json!(TEMPLATE)
    };
    json!({
        "add_bos_token": false,
        "bos_token": null,
        "eos_token": {"content": "<|im_end|>", "special": true},
        "pad_token": "<|endoftext|>",
        "chat_template": tpl,
    })
}

/// Tiktoken file: 256 single bytes, then " t", "th", "the", " th", " the" (ranks 256..260).
pub fn tiktoken_ranks() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    for t in [&b" t"[..], b"th", b"the", b" th", b" the"] {
        v.push(t.to_vec());
    }
    v
}

pub fn b64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = c.len();
        let v = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= n {
                s.push(A[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

pub fn tiktoken_text() -> String {
    tiktoken_ranks()
        .iter()
        .enumerate()
        .map(|(r, t)| format!("{} {r}\n", b64(t)))
        .collect()
}

/// Run the converter.
pub fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

pub fn convert(input: &Path, output: &Path, ty: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "-i",
        input.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
        "-t",
        ty,
    ];
    args.extend_from_slice(extra);
    run(&args)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Success with empty stdout.
pub fn assert_ok(o: &Output) {
    assert!(o.status.success(), "conversion failed: {}", stderr(o));
    assert!(
        o.stdout.is_empty(),
        "stdout must stay silent, got {:?}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// Failure: non-zero exit, exactly one stderr line starting "error: ", containing every `needle`.
pub fn assert_one_line_error(o: &Output, needles: &[&str]) {
    assert!(!o.status.success(), "expected failure, got success");
    let e = stderr(o);
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 1, "stderr must be one line, got {e:?}");
    assert!(
        lines[0].starts_with("error: "),
        "stderr must start with 'error: ', got {e:?}"
    );
    for n in needles {
        assert!(
            lines[0].contains(n),
            "error {:?} should mention {n:?}",
            lines[0]
        );
    }
}

/// Relative RMSE budget of a type (measured: q4_0 0.085, q4_1 0.078, q5_0
/// 0.042, q5_1 0.038, q8_0 0.0054, bf16 0.0017 on uniform and normal data).
pub fn budget(t: GgmlType) -> f64 {
    match t {
        GgmlType::F32 => 0.0,
        GgmlType::F16 => 1e-3,
        GgmlType::Bf16 => 4e-3,
        GgmlType::Q8_0 => 0.01,
        GgmlType::Q5_0 | GgmlType::Q5_1 => 0.06,
        GgmlType::Q4_0 | GgmlType::Q4_1 => 0.12,
        other => panic!("no budget for {other}"),
    }
}

pub fn rel_rmse(x: &[f32], y: &[f32]) -> f64 {
    let (mut e, mut r) = (0f64, 0f64);
    for (a, b) in x.iter().zip(y) {
        e += ((a - b) as f64).powi(2);
        r += (*a as f64).powi(2);
    }
    if r == 0.0 {
        0.0
    } else {
        (e / r).sqrt()
    }
}

/// Check tensor names, dims (reversed), types and dequantized values.
/// `types` maps GGUF name -> expected type.
pub fn check_tensors(g: &Gguf<'_>, src: &[SrcTensor], types: &BTreeMap<String, GgmlType>) {
    let names: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).collect();
    let mut want: Vec<&str> = src.iter().map(|t| t.gguf.as_str()).collect();
    let mut got = names.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "tensor names");
    for s in src {
        let info = g.tensor(&s.gguf).unwrap();
        let dims: Vec<u64> = s.shape.iter().rev().map(|&d| d as u64).collect();
        assert_eq!(info.dims, dims, "{} dims", s.gguf);
        let t = types[&s.gguf];
        assert_eq!(info.dtype, t, "{} type", s.gguf);
        let mut y = vec![0f32; s.data.len()];
        reference::dequantize(info.dtype, g.tensor_data(info), &mut y).unwrap();
        let err = rel_rmse(&s.data, &y);
        assert!(
            err <= budget(t),
            "{} ({t}): relative RMSE {err} over budget {}",
            s.gguf,
            budget(t)
        );
    }
}

/// Expected types under the default policy.
pub fn policy(src: &[SrcTensor], base: GgmlType, tied: bool) -> BTreeMap<String, GgmlType> {
    let out_t = match base {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => GgmlType::Q8_0,
        t => t,
    };
    src.iter()
        .map(|s| {
            let row = s.shape.last().copied().unwrap_or(1);
            let t = if s.shape.len() == 1 {
                GgmlType::F32
            } else if row % base.block_size() != 0 {
                GgmlType::F16 // not a whole number of blocks
            } else if s.gguf == "output.weight" || (tied && s.gguf == "token_embd.weight") {
                out_t
            } else {
                base
            };
            (s.gguf.clone(), t)
        })
        .collect()
}
