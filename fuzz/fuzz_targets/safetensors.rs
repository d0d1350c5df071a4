//! The converter's checkpoint reader: config.json, safetensors headers (single
//! file or index + shards) and tokenizer files, through qwen_convert's public
//! API exactly as `convert()` calls it, then every tensor read to f32; when all
//! of that succeeds, the whole conversion, whose output must parse as GGUF and
//! leave no temporary file behind.
//!
//! Input layout: up to five parts separated by the marker `@@FILE@@`:
//! 0 config.json | 1 model.safetensors (the first shard when part 2 is given) |
//! 2 model.safetensors.index.json (optional) | 3 the second shard |
//! 4 tokenizer.json (also written as qwen.tiktoken).
//! Shards are named model-00001-of-00002.safetensors and model-00002-of-00002.safetensors.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use std::sync::atomic::AtomicBool;

use quant_formats::gguf::Gguf;
use quant_formats::GgmlType;
use qwen_convert::arch::{tensor_specs, Hparams};
use qwen_convert::convert::{convert, Options, Silent};
use qwen_convert::hf::{Checkpoint, Config};
use qwen_convert::plan::TypePolicy;
use qwen_convert::tokenizer::Vocab;

const MARKER: &[u8] = b"@@FILE@@";
const SHARD1: &str = "model-00001-of-00002.safetensors";
const SHARD2: &str = "model-00002-of-00002.safetensors";
/// Elements read per tensor at most.
const MAX_READ: usize = 4096;

/// One scratch folder per fuzzing process (in RAM when /dev/shm exists).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("qwen-fuzz-safetensors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch folder");
        dir
    })
}

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while parts.len() < 4 {
        match rest.windows(MARKER.len()).position(|w| w == MARKER) {
            Some(k) => {
                parts.push(&rest[..k]);
                rest = &rest[k + MARKER.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

/// Writes `bytes` to `dir/name`, or removes `dir/name` when None.
fn put(dir: &Path, name: &str, bytes: Option<&[u8]>) {
    let p = dir.join(name);
    match bytes {
        Some(b) => std::fs::write(&p, b).expect("write scratch file"),
        None => {
            let _ = std::fs::remove_file(&p);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let parts = split(data);
    let part = |i: usize| parts.get(i).copied();
    let sharded = part(2).is_some_and(|p| !p.is_empty());
    put(dir, "config.json", part(0));
    if sharded {
        put(dir, "model.safetensors", None);
        put(dir, "model.safetensors.index.json", part(2));
        put(dir, SHARD1, part(1));
        put(dir, SHARD2, part(3));
    } else {
        put(dir, "model.safetensors", part(1));
        put(dir, "model.safetensors.index.json", None);
        put(dir, SHARD1, None);
        put(dir, SHARD2, None);
    }
    put(dir, "tokenizer.json", part(4));
    put(dir, "qwen.tiktoken", part(4));

    // config.json alone.
    let hp = Config::load(dir)
        .ok()
        .and_then(|cfg| Some((Hparams::from_config(&cfg).ok()?, cfg)));

    // The checkpoint alone: every tensor's first elements as f32.
    let Ok(ck) = Checkpoint::open(dir) else {
        return;
    };
    for name in ck.names() {
        let t = ck.get(name).expect("listed tensor is found");
        assert!(ck.shard_path(t).is_file());
        let n = t.n_elements().min(MAX_READ);
        let mut out = vec![0f32; n];
        let _ = ck.read_f32(t, 0, &mut out);
        let _ = ck.read_f32(t, t.n_elements() - n, &mut out);
    }

    // Both together, as convert() does before it writes anything.
    let Some((hp, cfg)) = hp else {
        return;
    };
    if tensor_specs(&hp, &ck).is_err() || Vocab::load(dir, &hp, &cfg).is_err() {
        return;
    }
    drop(ck);

    // The whole conversion (q4_0: every code path of the type policy).
    let out_dir = dir.join("out");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).expect("create output folder");
    let out = out_dir.join("model.gguf");
    let opts = Options {
        input: dir.to_path_buf(),
        output: out.clone(),
        policy: TypePolicy::new(GgmlType::Q4_0, None),
        measure_error: true,
    };
    let result = convert(&opts, &mut Silent, &AtomicBool::new(false));
    let left: Vec<_> = std::fs::read_dir(&out_dir)
        .expect("read output folder")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    match result {
        Ok(_) => {
            assert_eq!(left.len(), 1, "files left: {left:?}");
            let bytes = std::fs::read(&out).expect("read output");
            if let Err(e) = Gguf::parse(&bytes) {
                panic!("qwen-convert wrote a file its own reader refuses: {e}");
            }
        }
        Err(_) => assert!(left.is_empty(), "failed conversion left {left:?}"),
    }
});
