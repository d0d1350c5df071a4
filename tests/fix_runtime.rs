//! Regressions from the session-3 contract review (runtime side): tensors the
//! forward pass does not apply are refused, an output path that is the model
//! file is refused, special files as the model give an error instead of a hang,
//! a failed turn of a piped chat does not end the chat, usage errors name the
//! argument, negative sampler numbers parse, and a GGUF without
//! `tokenizer.ggml.pre` tokenizes with a warning.

#[path = "forward_common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Output;

use common::*;
use quant_formats::gguf::{Gguf, GgufWriter, Value};
use quant_formats::GgmlType;

fn dir() -> PathBuf {
    scratch("fix_runtime")
}

/// Exit 1 and one `error: …` line (warnings aside) holding every needle.
fn assert_error(o: &Output, needles: &[&str]) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "exit code, stderr: {err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("warning: "))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks {n:?}: {err}");
    }
    lines[0].to_string()
}

/// `bytes` rewritten: metadata through `kv` (None drops a key), tensors as they
/// are, plus optionally one more f32 tensor (name, ggml dims) of all 5.0.
fn rewrite(
    bytes: &[u8],
    kv: impl Fn(&str, &Value) -> Option<Value>,
    extra: Option<(&str, &[u64])>,
) -> Vec<u8> {
    let g = Gguf::parse(bytes).expect("parse base");
    let mut w = GgufWriter::new();
    for (k, v) in g.kv() {
        if k.starts_with("general.alignment") {
            continue;
        }
        if let Some(v) = kv(k, v) {
            w.add(k, v);
        }
    }
    for t in &g.tensors {
        w.add_tensor(&t.name, &t.dims, t.dtype).expect("add_tensor");
    }
    if let Some((name, dims)) = extra {
        w.add_tensor(name, dims, GgmlType::F32).expect("add extra");
    }
    let mut s = w.start(Vec::new()).expect("start");
    for t in &g.tensors {
        s.write_tensor(&t.name, g.tensor_data(t)).expect("write");
    }
    if let Some((name, dims)) = extra {
        let n: u64 = dims.iter().product();
        let data: Vec<u8> = (0..n).flat_map(|_| 5f32.to_le_bytes()).collect();
        s.write_tensor(name, &data).expect("write extra");
    }
    s.finish().expect("finish")
}

/// `bytes` with one more f32 tensor `name` of ggml dims `dims`.
fn with_extra_tensor(bytes: &[u8], name: &str, dims: &[u64]) -> Vec<u8> {
    rewrite(bytes, |_, v| Some(v.clone()), Some((name, dims)))
}

fn load_err(bytes: &[u8]) -> Option<String> {
    let g = Gguf::parse(bytes).expect("parse");
    qwen::Model::load(&g).err().map(|e| e.to_string())
}

#[test]
fn tensors_the_runtime_does_not_apply_are_refused() {
    // Every architecture, tied and untied, loads as written.
    for arch in ["qwen", "qwen2", "qwen3", "llama"] {
        for tied in [false, true] {
            let mut t = Tiny::new(arch);
            t.tied = tied;
            assert_eq!(load_err(&t.build()), None, "{arch} tied={tied}");
        }
    }
    // (arch, extra tensor, ggml dims): each names something the forward pass
    // would silently skip.
    let cases: &[(&str, &str, &[u64])] = &[
        ("llama", "rope_freqs.weight", &[8]),
        ("qwen2", "rope_freqs.weight", &[8]),
        ("qwen2", "blk.0.ffn_down.bias", &[64]),
        ("qwen2", "blk.0.attn_q_norm.weight", &[16]),
        ("qwen2", "blk.2.attn_q.weight", &[64, 64]),
        ("qwen2", "output.bias", &[96]),
        ("qwen3", "blk.1.ffn_up.bias", &[96]),
        ("qwen", "blk.0.attn_q.weight", &[64, 64]),
    ];
    for &(arch, name, dims) in cases {
        let base = Tiny::new(arch).build();
        let bytes = with_extra_tensor(&base, name, dims);
        let err = load_err(&bytes).unwrap_or_else(|| panic!("{arch} + {name} loaded"));
        assert!(
            err.contains(&format!("'{name}'")) && err.contains("not used"),
            "{arch} + {name}: {err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
    // Through the binary: one line, exit 1.
    let d = dir();
    let p = d.join("extra_rope_freqs.gguf");
    std::fs::write(
        &p,
        with_extra_tensor(&Tiny::new("llama").build(), "rope_freqs.weight", &[8]),
    )
    .unwrap();
    let o = run(
        &qwen_run(),
        &[
            "-f",
            p.to_str().unwrap(),
            "--token-ids",
            "1,2",
            "--dump-logits",
            d.join("x.npy").to_str().unwrap(),
        ],
    );
    assert_error(&o, &["rope_freqs.weight", "not used"]);
}

#[test]
fn every_fixture_conversion_still_loads() {
    // The biases are optional for qwen2 (SmolLM2-style bias-free files) and
    // attn_output.bias is applied when present: those must stay accepted.
    let mut t = Tiny::new("qwen2");
    t.biases = false;
    assert_eq!(load_err(&t.build()), None);
    let base = Tiny::new("qwen2").build();
    let bytes = with_extra_tensor(&base, "blk.0.attn_output.bias", &[64]);
    assert_eq!(load_err(&bytes), None);
    // Our converter's files of a few types for each architecture.
    let d = dir();
    for fx in ["qwen1", "qwen2_gqa2", "qwen3_a"] {
        for ty in ["f32", "q4_0", "q8_0"] {
            let out = d.join(format!("{fx}.{ty}.gguf"));
            convert(&root().join("tests/fixtures/hf").join(fx), &out, ty);
            let bytes = std::fs::read(&out).unwrap();
            assert_eq!(load_err(&bytes), None, "{fx} {ty}");
        }
    }
    // The K-quant fixture (K types with llama.cpp's fallbacks).
    let out = d.join("kquants.q4_K.gguf");
    convert(
        &root().join("tests/fixtures/kquants/hf/qwen2_k256"),
        &out,
        "q4_K",
    );
    assert_eq!(
        load_err(&std::fs::read(&out).unwrap()),
        None,
        "kquants q4_K"
    );
}

fn md5ish(p: &std::path::Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

#[test]
fn output_onto_the_model_file_is_refused() {
    let d = dir().join("victim");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("layers")).unwrap();
    let model = Tiny::new("qwen2").write(&d, "victim");
    let before = md5ish(&model);
    let m = model.to_str().unwrap();
    // The same path, another spelling, a symlink to the model used as the
    // model, and a hard link as the output: all are the model's inode.
    let other_spelling = d.join(".").join("victim.gguf");
    let link = d.join("link.gguf");
    let hard = d.join("hard.gguf");
    #[cfg(unix)]
    {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&model, &link).unwrap();
    }
    std::fs::hard_link(&model, &hard).unwrap();
    let mut cases: Vec<(String, String)> = vec![
        (m.to_string(), m.to_string()),
        (m.to_string(), other_spelling.to_str().unwrap().to_string()),
        (m.to_string(), hard.to_str().unwrap().to_string()),
    ];
    if cfg!(unix) {
        cases.push((
            link.to_str().unwrap().to_string(),
            hard.to_str().unwrap().to_string(),
        ));
    }
    for (model_arg, out) in &cases {
        let o = run(
            &qwen_run(),
            &["-f", model_arg, "--token-ids", "1,2", "--dump-logits", out],
        );
        assert_error(&o, &["--dump-logits", "is the model file"]);
        assert_eq!(
            md5ish(&model),
            before,
            "model changed by -f {model_arg} --dump-logits {out}"
        );
    }
    // --dump-layers writing DIR/l_out-0.npy where that file is the model.
    let layer_model = d.join("layers").join("l_out-0.npy");
    std::fs::copy(&model, &layer_model).unwrap();
    let o = run(
        &qwen_run(),
        &[
            "-f",
            layer_model.to_str().unwrap(),
            "--token-ids",
            "1,2",
            "--dump-logits",
            d.join("x.npy").to_str().unwrap(),
            "--dump-layers",
            d.join("layers").to_str().unwrap(),
        ],
    );
    assert_error(&o, &["--dump-layers", "is the model file"]);
    assert_eq!(md5ish(&layer_model), before);
    // A different output still works.
    let o = run(
        &qwen_run(),
        &[
            "-f",
            m,
            "--token-ids",
            "1,2",
            "--dump-logits",
            d.join("x.npy").to_str().unwrap(),
        ],
    );
    ok(&o, "dump to another file");
}

#[cfg(unix)]
#[test]
fn special_files_as_the_model_are_refused_at_once() {
    use std::time::{Duration, Instant};
    let d = dir().join("special");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let fifo = d.join("fifo");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(st.success());
    let out = d.join("x.npy");
    for (path, kind) in [
        (fifo.to_str().unwrap(), "a FIFO"),
        ("/dev/null", "a character device"),
        (d.to_str().unwrap(), "a directory"),
    ] {
        // Spawned with a deadline: before the fix the FIFO blocked forever.
        let mut child = std::process::Command::new(qwen_run())
            .args([
                "-f",
                path,
                "--token-ids",
                "1",
                "--dump-logits",
                out.to_str().unwrap(),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("qwen-run -f {path} hangs");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let o = child.wait_with_output().unwrap();
        assert_error(&o, &[path, kind, "regular file"]);
    }
    // A symlink to a regular file is fine.
    let model = Tiny::new("qwen2").write(&d, "m");
    let link = d.join("link.gguf");
    std::os::unix::fs::symlink(&model, &link).unwrap();
    let o = run(
        &qwen_run(),
        &[
            "-f",
            link.to_str().unwrap(),
            "--token-ids",
            "1",
            "--dump-logits",
            out.to_str().unwrap(),
        ],
    );
    ok(&o, "model through a symlink");
}

/// Our converter's qwen2_gqa2 (tokenizer and chat template included), q8_0.
fn chat_model() -> PathBuf {
    let out = dir().join("chat.qwen2_gqa2.q8_0.gguf");
    convert(&root().join("tests/fixtures/hf/qwen2_gqa2"), &out, "q8_0");
    out
}

#[test]
fn piped_chat_goes_on_after_a_failed_turn() {
    let m = chat_model();
    let m = m.to_str().unwrap();
    let args = ["-f", m, "-i", "-n", "4", "--temp", "0", "-c", "64"];
    // A line far too long for 64 positions, a line that is not UTF-8, then
    // one that fits: the last one is still answered.
    let mut input = format!("{}\n", "hello world ".repeat(100)).into_bytes();
    input.extend_from_slice(b"bad \xff line\nshort\n");
    let o = run_stdin(&qwen_run(), &args, &input);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 3, "{err}");
    assert!(errors[0].contains("the context holds 64"), "{err}");
    assert!(errors[1].contains("line 2 is not valid UTF-8"), "{err}");
    assert!(errors[2].contains("2 of 3 chat inputs failed"), "{err}");
    assert_eq!(
        err.matches("[prompt: ").count(),
        1,
        "'short' unanswered: {err}"
    );
    assert!(!o.stdout.is_empty(), "no reply on stdout");
    assert!(!err.contains("panicked"), "{err}");
    // No failed turn: exit 0 at EOF.
    let o = run_stdin(&qwen_run(), &args, b"short\nagain\n");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(err.matches("[prompt: ").count(), 2, "{err}");
    assert!(!err.contains("error: "), "{err}");
}

#[test]
fn usage_errors_name_the_arguments() {
    let o = run(&qwen_run(), &[]);
    let line = assert_error(&o, &["required arguments", "--model <MODEL>", "see --help"]);
    assert!(!line.contains("provided: (see"), "{line}");
    let o = run(
        &qwen_run(),
        &["-f", "m.gguf", "--dump-layers", "d", "-p", "hi"],
    );
    assert_error(&o, &["required arguments", "--token-ids"]);
    // Two missing arguments are both named, on one line.
    let text = "error: the following required arguments were not provided:\n  --model <MODEL>\n  --token-ids <IDS>\n\nUsage: qwen-run [OPTIONS]\n\nFor more information, try '--help'.\n";
    assert_eq!(
        qwen::cli::usage_error_line(text),
        "the following required arguments were not provided: --model <MODEL>, --token-ids <IDS>"
    );
    // A tip after a blank line is not part of the message.
    let text = "error: unexpected argument '--x' found\n\n  tip: to pass '--x' as a value, use '-- --x'\n\nUsage: qwen-run\n";
    assert_eq!(
        qwen::cli::usage_error_line(text),
        "unexpected argument '--x' found"
    );
}

#[test]
fn negative_sampler_numbers_parse_as_in_llama_cpp() {
    let m = chat_model();
    let m = m.to_str().unwrap();
    let gen = |extra: &[&str]| {
        let mut args = vec!["-f", m, "--mode", "generate", "-p", "hi", "-n", "8"];
        args.extend_from_slice(extra);
        run(&qwen_run(), &args)
    };
    // Negative temperature is greedy (llama.cpp clamps it to 0): the same
    // text as --temp 0 whatever the seed.
    let greedy = gen(&["--temp", "0", "-s", "1"]);
    ok(&greedy, "--temp 0");
    for seed in ["2", "3"] {
        let neg = gen(&["--temp", "-1", "-s", seed]);
        ok(&neg, "--temp -1");
        assert_eq!(
            neg.stdout, greedy.stdout,
            "--temp -1 -s {seed} is not greedy"
        );
    }
    let neg = gen(&["--temp=-0.5"]);
    ok(&neg, "--temp=-0.5");
    assert_eq!(neg.stdout, greedy.stdout);
    // A negative repeat penalty parses, then fails the range check (llama.cpp:
    // "repeat-penalty must be finite and greater than 0").
    let o = gen(&["--repeat-penalty", "-1"]);
    assert_error(&o, &["repeat_penalty", "-1"]);
    let o = gen(&["--temp", "warm"]);
    assert_error(&o, &["--temp", "warm"]);
}

#[test]
fn missing_pre_tokenizer_falls_back_to_qwen2_with_a_warning() {
    use qwen::tokenizer::Tokenizer;
    let base = std::fs::read(chat_model()).unwrap();
    let no_pre = rewrite(
        &base,
        |k, v| (k != "tokenizer.ggml.pre").then(|| v.clone()),
        None,
    );
    let with = Tokenizer::from_gguf(&Gguf::parse(&base).unwrap()).unwrap();
    let without = Tokenizer::from_gguf(&Gguf::parse(&no_pre).unwrap()).unwrap();
    assert!(with.warnings().is_empty());
    assert_eq!(without.warnings().len(), 1);
    assert!(without.warnings()[0].contains("tokenizer.ggml.pre is missing"));
    for text in [
        "Hello world, it's 2024!",
        "  spaces\n\n\tand tabs  ",
        "数字 12345 and 'll 've",
    ] {
        assert_eq!(with.encode(text), without.encode(text), "{text:?}");
    }
    // Another architecture keeps the missing-key error (no guess for it).
    let llama_no_pre = rewrite(
        &no_pre,
        |k, v| match k {
            "general.architecture" => Some(Value::from("llama")),
            _ => Some(v.clone()),
        },
        None,
    );
    let err = Tokenizer::from_gguf(&Gguf::parse(&llama_no_pre).unwrap()).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.pre"), "{err}");
    // Through qwen-run: the ids, one warning line, exit 0.
    let p = dir().join("no_pre.gguf");
    std::fs::write(&p, &no_pre).unwrap();
    let o = run_stdin(
        &qwen_run(),
        &["-f", p.to_str().unwrap(), "--tokenize"],
        b"Hello world",
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let ids: Vec<u32> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ids, with.encode("Hello world"));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("warning: tokenizer.ggml.pre is missing"),
        "{err}"
    );
}
