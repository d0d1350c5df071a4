//! Every failure: non-zero exit, one stderr line "error: ..." naming the file
//! and the value, and nothing left in the output folder.

mod common;

use common::*;
use serde_json::json;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// Convert `dir` into an empty folder; expect a one-line error mentioning
/// every needle and an empty output folder afterwards.
fn expect_error(dir: &Path, needles: &[&str]) {
    let out_dir = TempDir::new("out");
    let o = convert(dir, &out_dir.join("m.qbin"), "q4_0", &[]);
    assert_one_line_error(&o, needles);
    assert!(
        out_dir.list().is_empty(),
        "output folder must be empty, has {:?}",
        out_dir.list()
    );
}

#[test]
fn missing_config() {
    let dir = TempDir::new("model");
    Spec::new(Arch::Qwen2).write(dir.path());
    std::fs::remove_file(dir.join("config.json")).unwrap();
    expect_error(dir.path(), &["config.json"]);
}

#[test]
fn input_folder_missing() {
    let dir = TempDir::new("model");
    expect_error(&dir.join("nope"), &["nope", "not a folder"]);
}

#[test]
fn unknown_architecture() {
    let dir = TempDir::new("model");
    let s = Spec::new(Arch::Qwen2);
    s.write(dir.path());
    let mut cfg = s.config();
    cfg["architectures"] = json!(["LlamaForCausalLM"]);
    write_json(&dir.join("config.json"), &cfg);
    expect_error(dir.path(), &["config.json", "LlamaForCausalLM"]);
}

#[test]
fn config_key_missing_or_wrong_type() {
    let dir = TempDir::new("model");
    let s = Spec::new(Arch::Qwen3);
    s.write(dir.path());
    let mut cfg = s.config();
    cfg.as_object_mut().unwrap().remove("num_hidden_layers");
    write_json(&dir.join("config.json"), &cfg);
    expect_error(dir.path(), &["config.json", "num_hidden_layers"]);
    cfg["num_hidden_layers"] = json!("two");
    write_json(&dir.join("config.json"), &cfg);
    expect_error(dir.path(), &["config.json", "num_hidden_layers", "\"two\""]);
}

#[test]
fn missing_shard() {
    let dir = TempDir::new("model");
    let mut s = Spec::new(Arch::Qwen2);
    s.shards = 2;
    s.write(dir.path());
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    expect_error(dir.path(), &["model-00002-of-00002.safetensors"]);
}

#[test]
fn no_weights_at_all() {
    let dir = TempDir::new("model");
    Spec::new(Arch::Qwen2).write(dir.path());
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    expect_error(dir.path(), &["model.safetensors"]);
}

#[test]
fn missing_tensor() {
    let dir = TempDir::new("model");
    let s = Spec::new(Arch::Qwen2);
    let src: Vec<SrcTensor> = s
        .tensors()
        .into_iter()
        .filter(|t| t.hf != "model.layers.1.mlp.up_proj.weight")
        .collect();
    s.write_with(dir.path(), &src);
    expect_error(
        dir.path(),
        &["model.layers.1.mlp.up_proj.weight", "missing"],
    );
}

#[test]
fn shape_mismatch() {
    let dir = TempDir::new("model");
    let s = Spec::new(Arch::Qwen3);
    let mut src = s.tensors();
    let t = src
        .iter_mut()
        .find(|t| t.hf == "model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    t.shape = vec![32, 64]; // config implies [2 * 32, 64]
    t.data.truncate(32 * 64);
    s.write_with(dir.path(), &src);
    expect_error(
        dir.path(),
        &["model.safetensors", "k_proj", "[32, 64]", "[64, 64]"],
    );
}

#[test]
fn unexpected_tensor() {
    let dir = TempDir::new("model");
    let s = Spec::new(Arch::Qwen2);
    let mut src = s.tensors();
    let mut extra = src[1].clone();
    extra.hf = "model.layers.0.self_attn.o_proj.bias".into();
    src.push(extra);
    s.write_with(dir.path(), &src);
    expect_error(dir.path(), &["o_proj.bias", "unexpected"]);
}

#[test]
fn unsupported_dtype() {
    let dir = TempDir::new("model");
    let s = Spec::new(Arch::Qwen2);
    let mut src = s.tensors();
    let t = src
        .iter_mut()
        .find(|t| t.hf == "model.norm.weight")
        .unwrap();
    t.raw = Some((safetensors::Dtype::I32, vec![0u8; 4 * 64]));
    s.write_with(dir.path(), &src);
    expect_error(
        dir.path(),
        &["model.safetensors", "model.norm.weight", "I32"],
    );
}

#[test]
fn lying_header_offsets_past_end() {
    let dir = TempDir::new("model");
    Spec::new(Arch::Qwen2).write(dir.path());
    // Cut the file short: the last tensor's data_offsets now point past the end.
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    expect_error(dir.path(), &["model.safetensors", "past the data section"]);
}

#[test]
fn lying_header_size_disagrees_with_shape() {
    let dir = TempDir::new("model");
    Spec::new(Arch::Qwen2).write(dir.path());
    // Rewrite the header: claim one tensor is [4096] while its offsets hold 64 values.
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let mut h: serde_json::Value = serde_json::from_str(header).unwrap();
    h["model.norm.weight"]["shape"] = json!([4096]);
    let mut new_header = serde_json::to_string(&h).unwrap();
    while new_header.len() < n {
        new_header.push(' ');
    }
    assert_eq!(
        new_header.len(),
        n,
        "test needs a header of the same length"
    );
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(new_header.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&p, out).unwrap();
    expect_error(
        dir.path(),
        &["model.safetensors", "model.norm.weight", "4096"],
    );
}

#[test]
fn header_length_past_end() {
    let dir = TempDir::new("model");
    Spec::new(Arch::Qwen2).write(dir.path());
    let p = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&p, bytes).unwrap();
    expect_error(dir.path(), &["model.safetensors", "header length"]);
}

#[test]
fn nan_weights() {
    let dir = TempDir::new("model");
    let s = Spec::new(Arch::Qwen2);
    let mut src = s.tensors();
    // The last tensor, so the temp file exists and holds data when we fail.
    let last = src.last_mut().unwrap();
    assert_eq!(last.hf, "lm_head.weight");
    last.data[1000] = f32::NAN;
    s.write_with(dir.path(), &src);
    expect_error(dir.path(), &["lm_head.weight", "NaN", "1000"]);
    // and infinity in f32 source
    let mut s = Spec::new(Arch::Qwen3);
    s.src = Src::F32;
    let mut src = s.tensors();
    src[3].data[5] = f32::INFINITY;
    let name = src[3].hf.clone();
    s.write_with(dir.path(), &src);
    expect_error(dir.path(), &[name.as_str(), "inf"]);
}

#[test]
fn unwritable_output() {
    let dir = TempDir::new("model");
    Spec::new(Arch::Qwen2).write(dir.path());
    let out_dir = TempDir::new("out");
    // parent of the output is a regular file (fails even for root)
    let file = out_dir.join("file");
    std::fs::write(&file, b"x").unwrap();
    let o = convert(dir.path(), &file.join("m.qbin"), "q4_0", &[]);
    assert_one_line_error(&o, &["file"]);
    // parent folder does not exist
    let o = convert(dir.path(), &out_dir.join("no/such/dir/m.qbin"), "q4_0", &[]);
    assert_one_line_error(&o, &["no/such/dir"]);
    // output is a folder
    let o = convert(dir.path(), out_dir.path(), "q4_0", &[]);
    assert_one_line_error(&o, &["folder"]);
    assert_eq!(out_dir.list(), vec!["file".to_string()]);
}

#[test]
fn tokenizer_problems() {
    let s = Spec::new(Arch::Qwen2);
    // unknown pre-tokenizer
    let dir = TempDir::new("model");
    s.write(dir.path());
    let mut tj = tokenizer_json(false);
    tj["pre_tokenizer"] = json!({"type": "Metaspace", "replacement": "▁"});
    write_json(&dir.join("tokenizer.json"), &tj);
    expect_error(dir.path(), &["tokenizer.json", "Metaspace"]);
    // token id past vocab_size
    let mut tj = tokenizer_json(false);
    tj["model"]["vocab"]["zzz"] = json!(5000);
    write_json(&dir.join("tokenizer.json"), &tj);
    expect_error(dir.path(), &["tokenizer.json", "5000", "320"]);
    // eos names a token that does not exist
    write_json(&dir.join("tokenizer.json"), &tokenizer_json(false));
    let mut tc = tokenizer_config(Arch::Qwen2);
    tc["eos_token"] = json!("<|nope|>");
    write_json(&dir.join("tokenizer_config.json"), &tc);
    expect_error(dir.path(), &["tokenizer_config.json", "<|nope|>"]);
    // missing tokenizer.json
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    expect_error(dir.path(), &["tokenizer.json"]);
}

#[test]
fn qwen1_tiktoken_problems() {
    let s = Spec::new(Arch::Qwen);
    let dir = TempDir::new("model");
    s.write(dir.path());
    std::fs::write(dir.join("qwen.tiktoken"), "IQ== 0\n!!!! 1\n").unwrap();
    expect_error(dir.path(), &["qwen.tiktoken", ":2", "!!!!"]);
    // a token that cannot be built from two lower-ranked tokens
    let mut text = tiktoken_text();
    text.push_str(&format!("{} 261\n", b64(b"xyz")));
    std::fs::write(dir.join("qwen.tiktoken"), text).unwrap();
    expect_error(dir.path(), &["qwen.tiktoken", "261"]);
    std::fs::remove_file(dir.join("qwen.tiktoken")).unwrap();
    expect_error(dir.path(), &["qwen.tiktoken"]);
}

#[test]
fn ctrl_c_removes_temp_file() {
    interrupt_removes_temp_file("-INT");
}

#[test]
fn sigterm_and_sighup_remove_temp_file() {
    interrupt_removes_temp_file("-TERM");
    interrupt_removes_temp_file("-HUP");
}

fn interrupt_removes_temp_file(signal: &str) {
    // One big embedding (2^18 x 256 bf16, 128 MiB) so the conversion runs long
    // enough (~0.5 s with -v in release) to be interrupted after the temp file appears.
    let mut s = Spec::new(Arch::Qwen2);
    s.n_vocab = 1 << 18;
    s.n_embd = 256;
    s.n_head = 4;
    s.n_head_kv = 4;
    s.head_dim = 64;
    s.n_layer = 1;
    s.n_ff = 256;
    s.tied = true;
    s.src = Src::Bf16;
    let dir = TempDir::new("model");
    s.write(dir.path());
    // the tokenizer needs vocab ids below n_vocab: ours are < 320, fine
    let out_dir = TempDir::new("out");
    let out = out_dir.join("m.qbin");
    let child = std::process::Command::new(BIN)
        .args([
            "-i",
            dir.path().to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "-t",
            "q4_0",
            "-v",
        ])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let tmp = out_dir.join(&format!(".m.qbin.tmp-{}", child.id()));
    let t0 = std::time::Instant::now();
    while !tmp.exists() && t0.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(tmp.exists(), "temporary file never appeared");
    let st = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "stderr: {}", stderr(&o));
    let e = stderr(&o);
    let last = e.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: ") && last.contains("interrupted"),
        "{e}"
    );
    assert!(
        out_dir.list().is_empty(),
        "left behind: {:?}",
        out_dir.list()
    );
}

#[test]
fn rope_scaling_is_rejected_not_dropped() {
    let dir = TempDir::new("model");
    let s = Spec::new(Arch::Qwen2);
    s.write(dir.path());
    let mut cfg = s.config();
    cfg["rope_scaling"] =
        json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768});
    write_json(&dir.join("config.json"), &cfg);
    expect_error(dir.path(), &["config.json", "yarn"]);
}

#[test]
fn sliding_window_that_applies_is_rejected_not_ignored() {
    let dir = TempDir::new("model");
    let s = Spec::new(Arch::Qwen2);
    s.write(dir.path());
    let mut cfg = s.config();
    cfg["use_sliding_window"] = json!(true);
    cfg["sliding_window"] = json!(4);
    cfg["max_window_layers"] = json!(0);
    write_json(&dir.join("config.json"), &cfg);
    expect_error(
        dir.path(),
        &["config.json", "sliding", "sliding_window = 4"],
    );
    // explicit layer_types count too
    cfg["max_window_layers"] = json!(99);
    cfg["layer_types"] = json!(["full_attention", "sliding_attention"]);
    write_json(&dir.join("config.json"), &cfg);
    expect_error(dir.path(), &["config.json", "sliding", "layer_types"]);
}

#[test]
fn qwen1_specials_must_fit_vocab() {
    // 261 ranks + 3 named specials need vocab_size >= 264.
    let mut s = Spec::new(Arch::Qwen);
    s.n_vocab = 263;
    let dir = TempDir::new("model");
    s.write(dir.path());
    expect_error(dir.path(), &["qwen.tiktoken", "<|im_end|>", "263"]);
}

#[test]
fn output_must_be_a_regular_file_or_missing() {
    let dir = TempDir::new("model");
    Spec::new(Arch::Qwen2).write(dir.path());
    let out_dir = TempDir::new("out");
    // a symlink to a file: the rename would replace the link, not write through it
    let target = out_dir.join("target.qbin");
    std::fs::write(&target, b"keep").unwrap();
    let link = out_dir.join("link.qbin");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let o = convert(dir.path(), &link, "q4_0", &[]);
    assert_one_line_error(&o, &["link.qbin", "not a regular file"]);
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    // a FIFO (as /dev/null is a device): refused, left as it is
    let fifo = out_dir.join("fifo");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    let o = convert(dir.path(), &fifo, "q4_0", &[]);
    assert_one_line_error(&o, &["fifo", "not a regular file"]);
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    // an existing regular file is replaced
    let old = out_dir.join("old.qbin");
    std::fs::write(&old, b"old").unwrap();
    assert_ok(&convert(dir.path(), &old, "q8_0", &[]));
    assert!(std::fs::read(&old).unwrap().starts_with(b"GGUF"));
}

#[test]
fn output_must_not_be_an_input_file() {
    let mut s = Spec::new(Arch::Qwen2);
    s.shards = 2;
    let dir = TempDir::new("model");
    s.write(dir.path());
    for name in [
        "model-00001-of-00002.safetensors",
        "config.json",
        "tokenizer.json",
        "model.safetensors.index.json",
    ] {
        let p = dir.join(name);
        let before = std::fs::read(&p).unwrap();
        let o = convert(dir.path(), &p, "q4_0", &[]);
        assert_one_line_error(&o, &[name, "input file"]);
        assert_eq!(std::fs::read(&p).unwrap(), before, "{name} changed");
    }
    // a new file inside the model folder is fine
    assert_ok(&convert(dir.path(), &dir.join("model.qbin"), "q8_0", &[]));
}

/// A finite weight too large for the chosen type's f16 block scale (or for bf16)
/// used to be written as Inf/NaN with exit 0 (review 3, defect 1). Every type -t
/// offers, the q6_K -> q8_0 fallback and the K types are refused with the tensor,
/// the value, the type and the advice; a value just inside the range converts.
#[test]
fn block_scale_overflow_is_refused() {
    // (-t, n_embd, value, type named, advice)
    let cases: [(&str, usize, f32, &str, &str); 10] = [
        ("q4_0", 64, 6e5, "q4_0", "-t bf16 or -t f32"),
        ("q4_1", 64, -2e6, "q4_1", "-t bf16 or -t f32"),
        ("q5_0", 64, 2e6, "q5_0", "-t bf16 or -t f32"),
        ("q5_1", 64, 3e6, "q5_1", "-t bf16 or -t f32"),
        ("q8_0", 64, 1e7, "q8_0", "-t bf16 or -t f32"),
        ("q6_K", 64, 1e9, "q8_0", "-t bf16 or -t f32"), // rows of 64: q8_0 fallback
        ("q4_K", 256, 1e9, "q4_K", "-t bf16 or -t f32"),
        ("q5_K", 256, 1e9, "q5_K", "-t bf16 or -t f32"),
        ("q6_K", 256, 1e20, "q6_K", "-t bf16 or -t f32"),
        ("bf16", 64, 3.4e38, "bf16", "-t f32"),
    ];
    for (ty, n_embd, value, named, advice) in cases {
        let dir = TempDir::new("model");
        let mut s = Spec::new(Arch::Qwen2);
        s.src = Src::F32;
        s.n_embd = n_embd;
        s.head_dim = n_embd / s.n_head;
        s.n_ff = n_embd;
        let mut src = s.tensors();
        let up = src
            .iter_mut()
            .find(|t| t.hf == "model.layers.1.mlp.up_proj.weight")
            .unwrap();
        up.data[n_embd + 3] = value;
        s.write_with(dir.path(), &src);
        let out_dir = TempDir::new("out");
        let o = convert(dir.path(), &out_dir.join("m.gguf"), ty, &[]);
        let shown = format!("value {value} at element {}", n_embd + 3);
        let what = match named {
            "bf16" => "overflows bf16".to_string(),
            t => format!("overflows the f16 block scale of {t}"),
        };
        let up = "model.layers.1.mlp.up_proj.weight";
        assert_one_line_error(&o, &[up, &shown, &what, advice]);
        assert!(out_dir.list().is_empty(), "{ty}: {:?} left", out_dir.list());
    }
    // Just inside: q8_0 holds 127 * 65504 = 8.3e6.
    let dir = TempDir::new("model");
    let mut s = Spec::new(Arch::Qwen2);
    s.src = Src::F32;
    let mut src = s.tensors();
    src[2].data[0] = 8.2e6;
    s.write_with(dir.path(), &src);
    let out_dir = TempDir::new("out");
    assert_ok(&convert(dir.path(), &out_dir.join("m.gguf"), "q8_0", &[]));
}

/// Values the runtime refuses at load or when sampling are refused by the
/// converter, naming the key (review 3, defect 3): before, rms_norm_eps 2 or
/// top_p 2 converted with exit 0 and qwen-run failed on the file.
#[test]
fn values_the_runtime_refuses_are_refused() {
    let over_ctx = (1u64 << 24) + 1;
    // config.json edits: (arch, key, value, needles)
    let config_cases = [
        (
            Arch::Qwen2,
            "rms_norm_eps",
            json!(2),
            vec!["rms_norm_eps", "= 2", "(0, 1)"],
        ),
        (
            Arch::Qwen3,
            "rms_norm_eps",
            json!(1.0),
            vec!["rms_norm_eps", "= 1"],
        ),
        (
            Arch::Qwen,
            "layer_norm_epsilon",
            json!(1.5),
            vec!["layer_norm_epsilon", "1.5"],
        ),
        (
            Arch::Qwen2,
            "max_position_embeddings",
            json!(over_ctx),
            vec!["max_position_embeddings", "16777217", "16777216"],
        ),
        (
            Arch::Qwen,
            "seq_length",
            json!(over_ctx),
            vec!["`seq_length`", "16777217"],
        ),
        (
            Arch::Qwen2,
            "rope_theta",
            json!(1.0),
            vec!["rope_theta", "above 1"],
        ),
        (
            Arch::Qwen2,
            "num_hidden_layers",
            json!(1025),
            vec!["num_hidden_layers", "1025", "1024"],
        ),
        (
            Arch::Qwen2,
            "hidden_act",
            json!("gelu"),
            vec!["hidden_act", "\"gelu\"", "silu"],
        ),
        (
            Arch::Qwen3,
            "hidden_act",
            json!("relu"),
            vec!["hidden_act", "\"relu\""],
        ),
    ];
    for (arch, key, value, needles) in config_cases {
        let dir = TempDir::new("model");
        let s = Spec::new(arch);
        s.write(dir.path());
        let mut cfg = s.config();
        cfg[key] = value;
        write_json(&dir.join("config.json"), &cfg);
        let mut n = vec!["config.json"];
        n.extend(needles);
        expect_error(dir.path(), &n);
    }
    // generation_config.json: (content, needles)
    let base = json!({"eos_token_id": 302, "do_sample": true, "temperature": 0.7});
    let with = |k: &str, v: serde_json::Value| {
        let mut g = base.clone();
        g[k] = v;
        g
    };
    let gen_cases = [
        (with("top_p", json!(2.0)), vec!["`top_p` = 2", "[0, 1]"]),
        (with("top_p", json!(-0.1)), vec!["`top_p` = -0.1"]),
        (
            with("temperature", json!(101)),
            vec!["`temperature` = 101", "[0, 100]"],
        ),
        (with("temperature", json!(-1)), vec!["`temperature` = -1"]),
        (
            with("repetition_penalty", json!(0)),
            vec!["`repetition_penalty` = 0", "(0, 100]"],
        ),
        (
            with("repetition_penalty", json!(101)),
            vec!["`repetition_penalty` = 101"],
        ),
        (with("min_p", json!(1.5)), vec!["`min_p` = 1.5"]),
        (json!([1, 2]), vec!["expected a JSON object", "array"]),
        (json!("greedy"), vec!["expected a JSON object"]),
    ];
    for (gen, needles) in gen_cases {
        let dir = TempDir::new("model");
        Spec::new(Arch::Qwen2).write(dir.path());
        write_json(&dir.join("generation_config.json"), &gen);
        let mut n = vec!["generation_config.json"];
        n.extend(needles);
        expect_error(dir.path(), &n);
    }
    // Qwen-1's QWenMLP hard-codes F.silu and never reads a hidden_act key.
    let dir = TempDir::new("model");
    let s = Spec::new(Arch::Qwen);
    s.write(dir.path());
    let mut cfg = s.config();
    cfg["hidden_act"] = json!("gelu");
    write_json(&dir.join("config.json"), &cfg);
    let out_dir = TempDir::new("out");
    assert_ok(&convert(dir.path(), &out_dir.join("m.gguf"), "q8_0", &[]));
}
