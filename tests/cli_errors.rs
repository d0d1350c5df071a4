//! qwen-run's error contract: every rejected input gives exactly one line
//! `error: …` on stderr, exit code 1, and nothing on stdout — never a panic.
//! Plus the --token-ids/--dump-logits and --check-tensors paths on tiny models
//! written in the test.

#[path = "forward_common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Output;

use common::*;
use quant_formats::gguf::Value;
use quant_formats::GgmlType;

/// Exit 1, stdout empty, stderr exactly one line starting "error: " that
/// contains every `needles` entry.
fn assert_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "exit code {:?}, stderr: {err}",
        o.status.code()
    );
    assert!(
        o.stdout.is_empty(),
        "stdout not empty: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("warning: "))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks {n:?}: {err}");
    }
}

fn run_ids(model: &Path, extra: &[&str]) -> Output {
    let out = model.with_extension("npy");
    let mut args = vec![
        "-f",
        model.to_str().unwrap(),
        "--token-ids",
        "1,2,3",
        "--dump-logits",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&qwen_run(), &args)
}

fn dir() -> std::path::PathBuf {
    scratch("cli_errors")
}

#[test]
fn tiny_model_dumps_logits() {
    let p = Tiny::new("qwen2").write(&dir(), "ok_qwen2");
    let o = run_ids(&p, &[]);
    ok(&o, "--dump-logits");
    let (shape, data) = read_npy(&p.with_extension("npy"));
    assert_eq!(shape, vec![3, 96]);
    assert!(data.iter().all(|x| x.is_finite()));
    // --dump-layers writes the named intermediates, chunks concatenated (-b 2).
    let layers = dir().join("layers");
    let o = run_ids(&p, &["--dump-layers", layers.to_str().unwrap(), "-b", "2"]);
    ok(&o, "--dump-layers");
    for (name, width) in [
        ("inp_embd", 64),
        ("Qcur-1", 64),
        ("Kcur-0", 32),
        ("l_out-1", 64),
        ("result_norm", 64),
    ] {
        let (shape, _) = read_npy(&layers.join(format!("{name}.npy")));
        assert_eq!(shape, vec![3, width], "{name}");
    }
    let (_, again) = read_npy(&p.with_extension("npy"));
    assert_eq!(again, data, "tracing changed the logits");
    // -m is an alias of -f, -t and -c are accepted.
    let o = run(
        &qwen_run(),
        &[
            "-m",
            p.to_str().unwrap(),
            "-t",
            "1",
            "-c",
            "64",
            "--token-ids",
            "4",
            "--dump-logits",
            p.with_extension("1.npy").to_str().unwrap(),
        ],
    );
    ok(&o, "-m -t -c");
}

/// --no-mmap (and -mmp 0 / --mmap 0) reads the file into anonymous memory: the
/// same bytes, so the same logits bit for bit; bad values and both spellings at
/// once are usage errors.
#[test]
fn no_mmap_gives_the_same_logits() {
    let p = Tiny::new("qwen2").write(&dir(), "no_mmap");
    ok(&run_ids(&p, &[]), "mapped");
    let (_, mapped) = read_npy(&p.with_extension("npy"));
    for extra in [
        &["--no-mmap"][..],
        &["-mmp", "0"],
        &["--mmap", "0"],
        &["--mmap", "1"],
    ] {
        let o = run_ids(&p, extra);
        ok(&o, &format!("{extra:?}"));
        let (_, got) = read_npy(&p.with_extension("npy"));
        assert_eq!(got, mapped, "{extra:?}");
    }
    let o = run_ids(&p, &["-v", "--no-mmap"]);
    ok(&o, "-v --no-mmap");
    assert!(
        stderr(&o).contains("read into huge pages"),
        "{}",
        stderr(&o)
    );
    assert_error(&run_ids(&p, &["--mmap", "2"]), &["--mmap"]);
    assert_error(&run_ids(&p, &["--no-mmap", "--mmap", "1"]), &["--no-mmap"]);
}

/// The library's two ways in: the copy holds the file's bytes exactly and starts
/// on a 2 MiB boundary (huge pages cover it from its first byte).
#[test]
fn read_copy_is_the_file() {
    let p = Tiny::new("qwen2").write(&dir(), "read_copy");
    let want = std::fs::read(&p).unwrap();
    let mapped = qwen::ModelFile::open(&p).unwrap();
    let copy = qwen::ModelFile::read(&p).unwrap();
    assert!(!mapped.is_copy() && copy.is_copy());
    assert_eq!(mapped.bytes(), &want[..]);
    assert_eq!(copy.bytes(), &want[..]);
    assert_eq!(copy.bytes().as_ptr() as usize % (2 << 20), 0);
    assert_eq!(
        copy.gguf().unwrap().tensors.len(),
        mapped.gguf().unwrap().tensors.len()
    );
    let empty = dir().join("read_copy_empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let e = qwen::ModelFile::read(&empty).unwrap();
    assert!(e.bytes().is_empty() && e.gguf().is_err());
}

#[test]
fn nonexistent_file() {
    let o = run_ids(&dir().join("does-not-exist.gguf"), &[]);
    assert_error(&o, &["does-not-exist.gguf"]);
    let o = run_ids(&dir().join("does-not-exist.gguf"), &["--no-mmap"]);
    assert_error(&o, &["does-not-exist.gguf"]);
    assert_error(&run_ids(&dir(), &["--no-mmap"]), &["directory"]);
}

#[test]
fn not_gguf() {
    let p = dir().join("text.gguf");
    std::fs::write(&p, "hello, I am not a model\n".repeat(20)).unwrap();
    assert_error(&run_ids(&p, &[]), &["GGUF"]);
    let empty = dir().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert_error(&run_ids(&empty, &[]), &[]);
}

#[test]
fn truncated_file() {
    let bytes = Tiny::new("qwen2").build();
    for cut in [10, 100, bytes.len() / 2, bytes.len() - 1] {
        let p = dir().join(format!("truncated_{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        assert_error(&run_ids(&p, &[]), &[]);
        assert_error(&run_ids(&p, &["--no-mmap"]), &[]);
    }
}

#[test]
fn unknown_architecture() {
    let mut t = Tiny::new("qwen2");
    t.arch = "gptneox";
    let p = t.write(&dir(), "arch");
    assert_error(&run_ids(&p, &[]), &["gptneox"]);
}

#[test]
fn unsupported_tensor_type() {
    let mut t = Tiny::new("qwen2");
    t.n_ff = 256; // iq4_xs needs rows of 256
    t.dtype_override = vec![("blk.0.ffn_down.weight".into(), GgmlType::Iq4Xs)];
    let p = t.write(&dir(), "iq4xs");
    assert_error(&run_ids(&p, &[]), &["blk.0.ffn_down.weight", "iq4_xs"]);
}

#[test]
fn missing_key_and_bad_shape() {
    let mut t = Tiny::new("qwen2");
    t.skip_keys = vec!["qwen2.attention.head_count".into()];
    let p = t.write(&dir(), "nokey");
    assert_error(&run_ids(&p, &[]), &["qwen2.attention.head_count"]);

    let mut t = Tiny::new("qwen2");
    t.dims_override = vec![("blk.1.attn_k.weight".into(), vec![64, 48])];
    let p = t.write(&dir(), "shape");
    assert_error(
        &run_ids(&p, &[]),
        &["blk.1.attn_k.weight", "[64, 32]", "[64, 48]"],
    );

    let mut t = Tiny::new("qwen3");
    t.extra = vec![];
    t.skip_keys = vec![];
    // a hostile head count is capped before anything is allocated
    t.n_head = 4;
    let mut bytes_t = t.clone();
    bytes_t.skip_keys = vec!["qwen3.block_count".into()];
    bytes_t.extra = vec![("qwen3.block_count".into(), Value::U32(4_000_000))];
    let p = bytes_t.write(&dir(), "hostile");
    assert_error(&run_ids(&p, &[]), &["qwen3.block_count", "4000000"]);
}

#[test]
fn nan_weights() {
    let mut t = Tiny::new("qwen2");
    t.nan_in = Some("blk.0.ffn_up.weight".into());
    let p = t.write(&dir(), "nan");
    assert_error(&run_ids(&p, &[]), &["NaN/Inf", "--check-tensors"]);
    let o = run(&qwen_run(), &["-f", p.to_str().unwrap(), "--check-tensors"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("blk.0.ffn_up.weight") && err.contains("1 NaN"),
        "{err}"
    );
    assert!(err.lines().last().unwrap().starts_with("error: "), "{err}");

    let good = Tiny::new("qwen2").write(&dir(), "finite");
    let o = run(
        &qwen_run(),
        &["-f", good.to_str().unwrap(), "--check-tensors"],
    );
    ok(&o, "--check-tensors on a finite model");
}

#[test]
fn bad_arguments() {
    let p = Tiny::new("qwen2").write(&dir(), "args");
    let f = p.to_str().unwrap();
    let q = qwen_run();
    assert_error(
        &run(
            &q,
            &["-f", f, "--token-ids", "1,x", "--dump-logits", "/tmp/x.npy"],
        ),
        &["'x'"],
    );
    assert_error(
        &run(
            &q,
            &["-f", f, "--token-ids", "96", "--dump-logits", "/tmp/x.npy"],
        ),
        &["96"],
    );
    assert_error(&run(&q, &["-f", f, "--token-ids", "1"]), &["--dump-logits"]);
    assert_error(
        &run(
            &q,
            &[
                "-f",
                f,
                "-c",
                "2",
                "--token-ids",
                "1,2,3",
                "--dump-logits",
                "/tmp/x.npy",
            ],
        ),
        &["context"],
    );
    assert_error(&run(&q, &["-f", f, "--bogus-flag"]), &["--bogus-flag"]);
    assert_error(&run(&q, &["--token-ids", "1"]), &[]);
    assert_error(
        &run(
            &q,
            &[
                "-f",
                f,
                "-t",
                "0",
                "--token-ids",
                "1",
                "--dump-logits",
                "/tmp/x.npy",
            ],
        ),
        &["--threads"],
    );
}
