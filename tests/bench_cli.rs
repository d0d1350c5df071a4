//! qwen-bench's command-line contract on a tiny model written in the test:
//! `--json` prints one JSON object whose "pp" and "tg" come first, each
//! {"tokens_per_s": X, "stddev": S} (the acceptance checks parse exactly this);
//! the table mode prints pp/tg rows; errors are one line `error: …`, exit 1.

#[path = "forward_common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

fn qwen_bench() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_qwen-bench"))
}

/// A tiny Qwen2 file per test (tests run in parallel: no shared file).
fn tiny(test: &str) -> PathBuf {
    Tiny::new("qwen2").write(&scratch("bench_cli"), test)
}

fn bench(model: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["-f", model.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&qwen_bench(), &args)
}

fn json(o: &Output) -> serde_json::Value {
    ok(o, "qwen-bench --json");
    let text = String::from_utf8(o.stdout.clone()).expect("stdout is UTF-8");
    assert_eq!(text.lines().count(), 1, "one line on stdout: {text}");
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// {"tokens_per_s": X > 0, "stddev": S >= 0}; returns X.
fn speed(v: &serde_json::Value, test: &str) -> f64 {
    let t = &v[test];
    let x = t["tokens_per_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("{test}.tokens_per_s missing: {v}"));
    let s = t["stddev"]
        .as_f64()
        .unwrap_or_else(|| panic!("{test}.stddev missing: {v}"));
    assert!(x.is_finite() && x > 0.0, "{test} speed {x}");
    assert!(s.is_finite() && s >= 0.0, "{test} stddev {s}");
    x
}

#[test]
fn json_has_pp_and_tg_first() {
    let m = tiny("json_has_pp_and_tg_first");
    let o = bench(&m, &["-p", "16", "-n", "8", "-t", "2", "-r", "2", "--json"]);
    let v = json(&o);
    speed(&v, "pp");
    speed(&v, "tg");
    // The contract's prefix, exactly: {"pp":{"tokens_per_s":X,"stddev":S},"tg":{...}...
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.starts_with("{\"pp\":{\"tokens_per_s\":"),
        "stdout starts {text}"
    );
    let tg_at = text
        .find(",\"tg\":{\"tokens_per_s\":")
        .expect("tg follows pp");
    assert!(text[..tg_at].contains(",\"stddev\":"), "{text}");
    assert!(v["load_s"].as_f64().is_some_and(|x| x >= 0.0), "{v}");
    assert!(v["peak_rss_mb"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    assert!(v["kernels"].as_str().is_some(), "{v}");
    assert_eq!(v["threads"].as_u64(), Some(2), "{v}");
}

#[test]
fn every_kernel_level_and_one_rep_without_warmup() {
    let m = tiny("every_kernel_level_and_one_rep_without_warmup");
    for level in ["scalar", "avx2", "avx512"] {
        let args = [
            "-p",
            "8",
            "-n",
            "4",
            "-t",
            "1",
            "-r",
            "1",
            "--no-warmup",
            "--kernels",
            level,
            "--json",
        ];
        let o = bench(&m, &args);
        if o.status.success() {
            let v = json(&o);
            speed(&v, "pp");
            speed(&v, "tg");
            // One run: the sample standard deviation is defined as 0.
            assert_eq!(v["tg"]["stddev"].as_f64(), Some(0.0), "{v}");
            assert_eq!(v["kernels"].as_str(), Some(level), "{v}");
        } else {
            // A level this CPU lacks is a clean one-line error.
            let err = stderr(&o);
            assert!(
                err.starts_with("error: ") && err.contains(level),
                "{level}: {err}"
            );
        }
    }
}

#[test]
fn skipped_test_is_null() {
    let m = tiny("skipped_test_is_null");
    let v = json(&bench(&m, &["-p", "0", "-n", "4", "-r", "1", "--json"]));
    assert!(v["pp"].is_null(), "{v}");
    speed(&v, "tg");
}

#[test]
fn table_mode_and_verbose() {
    let m = tiny("table_mode_and_verbose");
    let o = bench(&m, &["-p", "8", "-n", "4", "-r", "2", "-v"]);
    ok(&o, "qwen-bench table");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("| pp8 ") || out.contains(" pp8 |"), "{out}");
    assert!(out.contains(" tg4 |"), "{out}");
    assert!(out.contains("peak RSS"), "{out}");
    assert!(stderr(&o).contains("kernels: "), "{}", stderr(&o));
}

#[test]
fn errors_are_one_line() {
    let m = tiny("errors_are_one_line");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-r", "0"], "-r/--repetitions 0"),
        (vec!["-p", "0", "-n", "0"], "nothing to measure"),
        (vec!["-t", "0"], "-t/--threads 0"),
        (vec!["--kernels", "sse9"], "sse9"),
        (vec!["--bogus"], "--bogus"),
    ];
    for (args, needle) in cases {
        let o = bench(&m, &args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}: stdout not empty");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
    }
    let o = run(&qwen_bench(), &["-f", "/nonexistent/model.qbin", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("error: cannot open /nonexistent/model.qbin"));
    // Not a GGUF file.
    let bad = scratch("bench_cli").join("not_gguf.qbin");
    std::fs::write(&bad, b"this is not a model").unwrap();
    let o = bench(&bad, &["--json"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

/// `-d N` (llama-bench's n_depth): both tests run after N tokens of context, so the
/// KV cache holds N more positions, the JSON says the depth and the table labels the
/// tests `pp8 @ d40`; `-m` is llama-bench's spelling of the model flag.
#[test]
fn depth_and_llama_bench_model_flag() {
    let m = tiny("depth");
    let base = json(&bench(&m, &["-p", "8", "-n", "4", "-r", "1", "--json"]));
    let deep = json(&run(
        &qwen_bench(),
        &[
            "-m",
            m.to_str().unwrap(),
            "-p",
            "8",
            "-n",
            "4",
            "-r",
            "1",
            "-d",
            "40",
            "--json",
        ],
    ));
    speed(&deep, "pp");
    speed(&deep, "tg");
    assert_eq!(base["n_depth"], 0, "{base}");
    assert_eq!(deep["n_depth"], 40, "{deep}");
    let kv = |v: &serde_json::Value| v["kv_cache_bytes"].as_u64().expect("kv_cache_bytes");
    // Positions (as llama-bench sizes its context): 8 + 4 without depth, 40 + 8 + 4 with it.
    assert_eq!(kv(&deep) * 12, kv(&base) * 52, "{base} vs {deep}");
    let o = bench(&m, &["-p", "8", "-n", "4", "-r", "1", "-d", "40"]);
    ok(&o, "table with -d");
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("pp8 @ d40") && table.contains("tg4 @ d40"),
        "{table}"
    );
    let e = bench(&m, &["-d", "99999999999"]);
    assert_eq!(e.status.code(), Some(1));
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(
        err.starts_with("error: -d/--n-depth") && err.lines().count() == 1,
        "{err}"
    );
}

/// `--read-bw`: the read bandwidth measured between the tg runs, and decode's share of
/// it (tg t/s x decode_bytes_per_token / read bandwidth); null without the flag or
/// without a tg test. The table mode prints it on one line.
#[test]
fn read_bandwidth_between_tg_runs() {
    let m = tiny("read_bandwidth_between_tg_runs");
    let v = json(&bench(
        &m,
        &["-p", "0", "-n", "4", "-r", "2", "--read-bw", "--json"],
    ));
    let bw = v["read_gbps"]
        .as_f64()
        .unwrap_or_else(|| panic!("read_gbps: {v}"));
    let pct = v["tg_pct_of_read_bw"]
        .as_f64()
        .unwrap_or_else(|| panic!("tg_pct_of_read_bw: {v}"));
    assert!(bw.is_finite() && bw > 0.0, "{v}");
    let bytes = v["decode_bytes_per_token"].as_f64().expect("decode bytes");
    let want = 100.0 * speed(&v, "tg") * bytes / 1e9 / bw;
    assert!(
        (pct - want).abs() <= 1e-6 * want.max(1.0),
        "{pct} vs {want}: {v}"
    );

    let plain = json(&bench(&m, &["-p", "0", "-n", "4", "-r", "1", "--json"]));
    assert!(
        plain["read_gbps"].is_null() && plain["tg_pct_of_read_bw"].is_null(),
        "{plain}"
    );
    let no_tg = json(&bench(
        &m,
        &["-p", "4", "-n", "0", "-r", "1", "--read-bw", "--json"],
    ));
    assert!(
        no_tg["read_gbps"].is_null() && no_tg["tg_pct_of_read_bw"].is_null(),
        "{no_tg}"
    );

    let o = bench(&m, &["-p", "0", "-n", "4", "-r", "1", "--read-bw"]);
    ok(&o, "qwen-bench --read-bw");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("read bandwidth ") && l.contains("% of it")),
        "{text}"
    );
}

/// `--no-mmap` / `-mmp 0` (llama-bench's spelling) read the model into memory
/// instead of mapping it: JSON "mmap" says which, the table's load line too, and
/// --read-bw then reads the copy.
#[test]
fn no_mmap_reads_the_model() {
    let m = tiny("no_mmap_reads_the_model");
    let mapped = json(&bench(&m, &["-p", "4", "-n", "2", "-r", "1", "--json"]));
    assert_eq!(mapped["mmap"], serde_json::Value::Bool(true), "{mapped}");
    for extra in [
        &["--no-mmap"][..],
        &["-mmp", "0"],
        &["-lm", "none"],
        &["--load-mode", "none"],
    ] {
        let mut args = vec!["-p", "4", "-n", "2", "-r", "1", "--read-bw", "--json"];
        args.extend_from_slice(extra);
        let v = json(&bench(&m, &args));
        assert_eq!(v["mmap"], serde_json::Value::Bool(false), "{extra:?}: {v}");
        speed(&v, "pp");
        speed(&v, "tg");
        assert!(v["read_gbps"].as_f64().is_some_and(|b| b > 0.0), "{v}");
        assert_eq!(v["file_bytes"], mapped["file_bytes"], "{v}");
    }
    let o = bench(
        &m,
        &["-p", "0", "-n", "2", "-r", "1", "-mmp", "0", "--read-bw"],
    );
    ok(&o, "table with -mmp 0");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("read into huge pages") && text.contains("model's copy"),
        "{text}"
    );
    let v = json(&bench(
        &m,
        &["-p", "4", "-n", "0", "-r", "1", "-lm", "mmap", "--json"],
    ));
    assert_eq!(v["mmap"], serde_json::Value::Bool(true), "{v}");
    for bad in [
        &["-mmp", "2"][..],
        &["--no-mmap", "-mmp", "1"],
        &["-lm", "dio"],
        &["-lm", "none", "--no-mmap"],
        &["-lm", "none", "-mmp", "0"],
    ] {
        let mut args = vec!["-p", "4", "-n", "0"];
        args.extend_from_slice(bad);
        let o = bench(&m, &args);
        assert_eq!(o.status.code(), Some(1), "{bad:?}");
        let err = stderr(&o);
        assert!(
            err.starts_with("error: ") && err.lines().count() == 1,
            "{bad:?}: {err}"
        );
    }
}
