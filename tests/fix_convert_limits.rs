//! The sampling a converted file gives `qwen-run` against transformers', and the
//! runtime naming the key of a file's out-of-range default (review 3, defects 3
//! and 4). The limits themselves are shared (`quant_formats::limits`).

use quant_formats::gguf::{Gguf, GgufWriter, Value};
use quant_formats::GgmlType;
use qwen::sampler::{GenerationDefaults, SamplerParams, WHOLE_CONTEXT};
use qwen_convert::convert::{convert, Options, Silent};
use qwen_convert::plan::TypePolicy;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("qwen-rs-fixconv-{tag}-{}", std::process::id()));
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

/// Convert a committed fixture; returns the output path.
fn convert_fixture(fixture: &str, tmp: &Path) -> PathBuf {
    let out = tmp.join(format!("{fixture}.gguf"));
    let opts = Options {
        input: Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hf")
            .join(fixture),
        output: out.clone(),
        policy: TypePolicy::new(GgmlType::Q8_0, None),
        measure_error: false,
    };
    convert(&opts, &mut Silent, &AtomicBool::new(false)).expect("convert");
    out
}

/// Convert a committed fixture and return the sampler settings qwen-run starts from.
fn file_sampler(fixture: &str, tmp: &Path) -> SamplerParams {
    let bytes = std::fs::read(convert_fixture(fixture, tmp)).expect("read output");
    let g = Gguf::parse(&bytes).expect("parse");
    SamplerParams::with_file_defaults(&GenerationDefaults::from_gguf(&g).expect("defaults"))
}

/// transformers fills a do_sample config's missing keys with temperature 1.0, top_k 50,
/// top_p 1.0 and no min_p (`GenerationConfig._get_default_generation_params`); the runtime
/// must start from those, not from llama.cpp's 0.8 / 40 / 0.95 / min_p 0.05.
#[test]
fn converted_files_sample_like_transformers() {
    let tmp = TempDir::new("gen");
    // Qwen-7B-Chat style: do_sample, top_k 0, top_p 0.8, repetition_penalty 1.1, no temperature.
    let p = file_sampler("qwen1", &tmp.0);
    assert_eq!(
        (p.temperature, p.top_k, p.top_p, p.min_p),
        (1.0, 0, 0.8, 0.0),
        "qwen1"
    );
    assert_eq!((p.repeat_penalty, p.repeat_last_n), (1.1, WHOLE_CONTEXT));
    // Qwen2-Instruct style: everything given; min_p still off.
    let p = file_sampler("qwen2_gqa2", &tmp.0);
    assert_eq!(
        (p.temperature, p.top_k, p.top_p, p.min_p),
        (0.7, 20, 0.8, 0.0),
        "qwen2_gqa2"
    );
    assert!(p.validate().is_ok());
}

/// The GGUF `src` with metadata `key` set to `value` (tensors unchanged).
fn with_key(src: &[u8], key: &str, value: Value) -> Vec<u8> {
    let g = Gguf::parse(src).expect("parse");
    let mut w = GgufWriter::new();
    for (k, v) in g.kv() {
        if k != key {
            w.add(k, v.clone());
        }
    }
    w.add(key, value);
    for t in &g.tensors {
        w.add_tensor(&t.name, &t.dims, t.dtype).expect("add_tensor");
    }
    let mut s = w.start(Vec::new()).expect("start");
    for t in &g.tensors {
        s.write_tensor(&t.name, g.tensor_data(t))
            .expect("write_tensor");
    }
    s.finish().expect("finish")
}

/// A sampling default out of range in a file (made by another tool): qwen-run's error names
/// the GGUF key, and an option that overrides it makes the file usable.
#[test]
fn out_of_range_file_default_names_its_key() {
    let tmp = TempDir::new("key");
    let good = std::fs::read(convert_fixture("qwen2_gqa2", &tmp.0)).expect("read");
    let cases = [
        (
            "qwen_rs.generation.top_p",
            Value::F32(2.0),
            "--top-p",
            "top_p = 2",
        ),
        (
            "qwen_rs.generation.temperature",
            Value::F32(-1.0),
            "--temp",
            "temperature = -1",
        ),
        (
            "general.sampling.min_p",
            Value::F32(1.5),
            "--min-p",
            "min_p = 1.5",
        ),
        (
            "qwen_rs.generation.repetition_penalty",
            Value::F32(0.0),
            "--repeat-penalty",
            "repeat_penalty = 0",
        ),
    ];
    for (key, value, option, shown) in cases {
        let path = tmp.0.join("bad.gguf");
        std::fs::write(&path, with_key(&good, key, value)).expect("write");
        let run = |extra: &[&str]| {
            Command::new(env!("CARGO_BIN_EXE_qwen-run"))
                .arg("-f")
                .arg(&path)
                .args(["--mode", "generate", "-p", "hi", "-n", "2", "--seed", "1"])
                .args(extra)
                .output()
                .expect("run qwen-run")
        };
        let o = run(&[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{key}: accepted");
        assert!(
            err.contains(&format!("metadata key '{key}'")) && err.contains(shown),
            "{key}: error should name the key and the value: {err}"
        );
        let o = run(&[option, "0.5"]);
        assert!(
            o.status.success(),
            "{key} overridden by {option}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
