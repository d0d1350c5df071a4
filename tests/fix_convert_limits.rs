//! The converter's copies of the runtime's limits (`qwen_convert::limits`) against
//! the runtime itself, and the sampling a converted file gives `qwen-run`
//! against transformers' (review 3, defects 3 and 4).

use quant_formats::gguf::Gguf;
use quant_formats::GgmlType;
use qwen::sampler::{GenerationDefaults, SamplerParams, WHOLE_CONTEXT};
use qwen_convert::convert::{convert, Options, Silent};
use qwen_convert::limits;
use qwen_convert::plan::TypePolicy;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

#[test]
fn counts_match_the_runtime() {
    use qwen::config as rt;
    assert_eq!(limits::MAX_LAYERS, rt::MAX_LAYERS);
    assert_eq!(limits::MAX_HEADS, rt::MAX_HEADS);
    assert_eq!(limits::MAX_HEAD_DIM, rt::MAX_HEAD_DIM);
    assert_eq!(limits::MAX_EMBD, rt::MAX_EMBD);
    assert_eq!(limits::MAX_FF, rt::MAX_FF);
    assert_eq!(limits::MAX_VOCAB, rt::MAX_VOCAB);
    assert_eq!(limits::MAX_CTX, rt::MAX_CTX);
}

/// Each sampling range agrees with `SamplerParams::validate` at both ends and just outside.
#[test]
fn sampling_ranges_match_the_runtime() {
    type Set = fn(&mut SamplerParams, f32);
    let cases: [(&str, limits::Range, Set); 4] = [
        ("temperature", limits::TEMPERATURE, |p, v| p.temperature = v),
        ("top_p", limits::TOP_P, |p, v| p.top_p = v),
        ("min_p", limits::MIN_P, |p, v| p.min_p = v),
        ("repetition_penalty", limits::REPETITION_PENALTY, |p, v| {
            p.repeat_penalty = v
        }),
    ];
    for (name, range, set) in cases {
        let probes = [
            range.lo,
            range.hi,
            range.lo - 1e-3,
            range.hi + 1e-3,
            (range.lo + range.hi) / 2.0,
            f32::NAN,
        ];
        for v in probes {
            let mut p = SamplerParams::default();
            set(&mut p, v);
            assert_eq!(
                p.validate().is_ok(),
                range.contains(v),
                "{name} = {v}: runtime and converter disagree"
            );
        }
    }
}

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

/// Convert a committed fixture and return the sampler settings qwen-run starts from.
fn file_sampler(fixture: &str, tmp: &Path) -> SamplerParams {
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
    let bytes = std::fs::read(&out).expect("read output");
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
