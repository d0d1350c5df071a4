//! qwen-run accepts llama.cpp's spellings of the generation flags: `-n -1`
//! (no limit), `--seed -1` (random) and `-s SEED`, `--repeat-last-n -1` (whole
//! context); out-of-range values are one-line errors, never an abort. A seed
//! gives the same text every run; without one, runs differ like llama.cpp's.

#[path = "forward_common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Output;

use common::*;

fn model() -> PathBuf {
    let out = scratch("cli_llama_flags").join("qwen2_gqa2.q8_0.qbin");
    convert(&root().join("tests/fixtures/hf/qwen2_gqa2"), &out, "q8_0");
    out
}

fn generate(extra: &[&str]) -> Output {
    let m = model();
    let mut args = vec![
        "-f",
        m.to_str().unwrap(),
        "--mode",
        "generate",
        "-p",
        "Hello world, this is",
        "-c",
        "48",
    ];
    args.extend_from_slice(extra);
    run(&qwen_run(), &args)
}

fn assert_one_line_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(o.stdout.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "error lacks {n:?}: {err}");
    }
}

#[test]
fn negative_n_means_no_limit() {
    // -n -1 / -2: until end of text or a full context (48 positions here).
    for n in ["-1", "-2"] {
        let o = generate(&["-n", n, "--temp", "0"]);
        ok(&o, &format!("-n {n}"));
        let e = stderr(&o);
        assert!(
            e.contains("stopped: context full") || e.contains("stopped: end of text"),
            "{e}"
        );
    }
    assert_one_line_error(&generate(&["-n", "-3"]), &["-n -3"]);
}

#[test]
fn seeds_like_llama_cpp() {
    let sampled = |seed: &[&str]| {
        let mut a = vec![
            "-n", "24", "--temp", "1.5", "--top-k", "0", "--top-p", "1", "--min-p", "0",
        ];
        a.extend_from_slice(seed);
        let o = generate(&a);
        ok(&o, &format!("{a:?}"));
        o.stdout
    };
    // A seed is reproducible, and -s is --seed.
    assert_eq!(sampled(&["--seed", "7"]), sampled(&["-s", "7"]));
    // No seed or -1: a random one (-v prints it); five runs are not all the same text.
    let runs: Vec<Vec<u8>> = (0..5).map(|_| sampled(&["--seed", "-1"])).collect();
    assert!(
        runs.iter().any(|r| r != &runs[0]),
        "5 random seeds, one text"
    );
    let o = generate(&["-n", "1", "-v"]);
    ok(&o, "-v");
    assert!(
        stderr(&o).lines().any(|l| l.starts_with("seed: ")),
        "{}",
        stderr(&o)
    );
    assert_one_line_error(&generate(&["--seed", "-2"]), &["--seed -2"]);
}

#[test]
fn repeat_last_n_takes_minus_one_and_huge_values() {
    for n in ["-1", "0", "1000000000000", "9223372036854775807"] {
        let o = generate(&["-n", "8", "--repeat-penalty", "1.3", "--repeat-last-n", n]);
        ok(&o, &format!("--repeat-last-n {n}"));
    }
    assert_one_line_error(
        &generate(&["--repeat-last-n", "-5"]),
        &["--repeat-last-n -5"],
    );
}

#[test]
fn dump_logits_errors_leave_no_file() {
    let m = model();
    let dir = scratch("cli_llama_flags_dump");
    let dump = |out: &str| {
        run(
            &qwen_run(),
            &[
                "-f",
                m.to_str().unwrap(),
                "--token-ids",
                "1,2,3",
                "--dump-logits",
                out,
            ],
        )
    };
    // A device that cannot take the data: one-line error.
    assert_one_line_error(&dump("/dev/full"), &["/dev/full"]);
    // A folder that does not exist: error, nothing created.
    let out = dir.join("no/such/dir/l.npy");
    assert_one_line_error(&dump(out.to_str().unwrap()), &["no/such/dir"]);
    // A regular file is replaced whole, and no temporary file stays behind.
    let out = dir.join("l.npy");
    std::fs::write(&out, b"old").unwrap();
    ok(&dump(out.to_str().unwrap()), "dump");
    let (shape, _) = read_npy(&out);
    assert_eq!(shape[0], 3);
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
