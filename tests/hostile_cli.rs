//! Hostile input through the command-line tools (issue 6): damaged, lying and
//! absurd GGUF files through `qwen-run`, damaged Hugging Face folders through
//! `qwen-convert`. Every case must end with a non-zero exit code below 128 (no
//! signal, no abort), stderr's last line starting with `error: `, and no panic
//! text; qwen-convert must leave neither its output nor a temporary file; and a
//! valid file must still work afterwards.
//!
//! Valid base files are built here: a tiny qwen2 GGUF (q8_0/q4_0 weights and a
//! byte-level tokenizer) with quant_formats' writer, and copies of the HF
//! fixtures under tests/fixtures/hf. Header fields are located by [`Layout`],
//! a small independent walk over the GGUF bytes, so each mutation hits exactly
//! the field it names.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use quant_formats::gguf::{Gguf, GgufWriter, Value, ValueType};
use quant_formats::{reference, GgmlType};

// ---------------------------------------------------------------------------
// Running the binaries.

fn qwen_run() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_qwen-run"))
}

/// target/<profile>/ (the test executable lives in target/<profile>/deps/).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("test executable is not inside target/<profile>/deps")
}

/// qwen-convert belongs to another package (no CARGO_BIN_EXE_ for it): build it
/// once into the same target folder and profile as this test.
fn qwen_convert() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let profile = profile_dir();
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&root)
            .args(["build", "-q", "-p", "qwen-convert", "--bin", "qwen-convert"]);
        if profile.file_name().and_then(|s| s.to_str()) == Some("release") {
            cmd.arg("--release");
        }
        if let Some(t) = profile.parent() {
            cmd.arg("--target-dir").arg(t);
        }
        let st = cmd
            .status()
            .expect("cannot run cargo to build qwen-convert");
        assert!(st.success(), "cargo build -p qwen-convert failed");
        let exe = profile.join(format!("qwen-convert{}", std::env::consts::EXE_SUFFIX));
        assert!(exe.exists(), "qwen-convert not found at {}", exe.display());
        exe
    })
    .clone()
}

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = profile_dir().join("hostile-scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

fn run(bin: &Path, args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(bin)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let mut input = child.stdin.take().expect("stdin");
    // The tool may exit before reading stdin: a broken pipe here is fine.
    let _ = input.write_all(stdin);
    drop(input);
    child.wait_with_output().expect("wait")
}

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// The hostile-input contract: exit code in 1..128, stderr's last non-empty
/// line starts with "error: ", and nothing says "panicked".
fn assert_refused(o: &Output, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    let code = o.status.code();
    assert!(
        matches!(code, Some(c) if (1..128).contains(&c)),
        "{what}: exit status {:?} (want 1..127), stderr:\n{err}",
        o.status
    );
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        last.starts_with("error: "),
        "{what}: last stderr line is not `error: …`:\n{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{what}: panic text in stderr:\n{err}"
    );
}

fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: failed ({:?}):\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs every case, catching failures, then fails once listing all of them (so
/// one run shows every broken case, not only the first).
fn each_case<T>(cases: impl IntoIterator<Item = T>, mut f: impl FnMut(T)) {
    let mut failures = Vec::new();
    let mut n = 0;
    for case in cases {
        n += 1;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(case)));
        if let Err(e) = r {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(msg);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n---\n")
    );
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// ---------------------------------------------------------------------------
// A tiny valid qwen2 model with a tokenizer.

const N_EMBD: u64 = 32;
const HEAD_DIM: u64 = 16;
const N_FF: u64 = 64;
const N_LAYER: usize = 2;

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

/// GPT-2 byte-level form of one byte (printable bytes stand for themselves).
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    let k = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + k).expect("byte-level char")
}

/// The base model; `edit` may change metadata or tensors before writing.
#[derive(Clone)]
struct Spec {
    arch: String,
    meta: Vec<(String, Value)>,
    /// (name, dims in ggml order, type)
    tensors: Vec<(String, Vec<u64>, GgmlType)>,
}

impl Spec {
    fn qwen2() -> Spec {
        let a = "qwen2";
        let k = |s: &str| format!("{a}.{s}");
        let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
        let merges = ["h e", "l l", "he ll", "hell o", "\u{120} w"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
        }
        let mut types = vec![1i32; tokens.len()];
        for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
            tokens.push(s.to_string());
            types.push(3);
        }
        let n_vocab = tokens.len() as u64;
        let im_end = n_vocab as u32 - 1;
        let meta: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::from(a)),
            ("general.name".into(), Value::from("hostile-base")),
            ("general.alignment".into(), Value::U32(32)),
            (k("context_length"), Value::U32(128)),
            (k("embedding_length"), Value::U32(N_EMBD as u32)),
            (k("block_count"), Value::U32(N_LAYER as u32)),
            (k("feed_forward_length"), Value::U32(N_FF as u32)),
            (k("attention.head_count"), Value::U32(2)),
            (k("attention.head_count_kv"), Value::U32(1)),
            (k("rope.freq_base"), Value::F32(10000.0)),
            (k("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
            (k("rope.dimension_count"), Value::U32(HEAD_DIM as u32)),
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
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(im_end)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
            (
                "tokenizer.chat_template".into(),
                Value::from(
                    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
                     {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
                ),
            ),
        ];
        let (e, q, kv, ff) = (N_EMBD, 2 * HEAD_DIM, HEAD_DIM, N_FF);
        let (f32t, q4, q8) = (GgmlType::F32, GgmlType::Q4_0, GgmlType::Q8_0);
        let mut tensors = vec![("token_embd.weight".to_string(), vec![e, n_vocab], q8)];
        for il in 0..N_LAYER {
            let n = |s: &str| format!("blk.{il}.{s}");
            tensors.extend([
                (n("attn_norm.weight"), vec![e], f32t),
                (n("attn_q.weight"), vec![e, q], q4),
                (n("attn_k.weight"), vec![e, kv], q4),
                (n("attn_v.weight"), vec![e, kv], q4),
                (n("attn_q.bias"), vec![q], f32t),
                (n("attn_k.bias"), vec![kv], f32t),
                (n("attn_v.bias"), vec![kv], f32t),
                (n("attn_output.weight"), vec![q, e], q4),
                (n("ffn_norm.weight"), vec![e], f32t),
                (n("ffn_gate.weight"), vec![e, ff], q4),
                (n("ffn_up.weight"), vec![e, ff], q4),
                (n("ffn_down.weight"), vec![ff, e], q4),
            ]);
        }
        tensors.push(("output_norm.weight".into(), vec![e], f32t));
        tensors.push(("output.weight".into(), vec![e, n_vocab], q8));
        Spec {
            arch: a.to_string(),
            meta,
            tensors,
        }
    }

    fn set(mut self, key: &str, v: Value) -> Spec {
        match self.meta.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = v,
            None => self.meta.push((key.to_string(), v)),
        }
        self
    }

    fn remove(mut self, key: &str) -> Spec {
        self.meta.retain(|(k, _)| k != key);
        self
    }

    fn arch_key(&self, s: &str) -> String {
        format!("{}.{s}", self.arch)
    }

    fn build(&self) -> Vec<u8> {
        let mut w = GgufWriter::new();
        for (k, v) in &self.meta {
            w.add(k.clone(), v.clone());
        }
        let mut datas = Vec::new();
        for (i, (name, dims, ty)) in self.tensors.iter().enumerate() {
            w.add_tensor(name, dims, *ty).expect("add_tensor");
            let n: u64 = dims.iter().product();
            let norm = dims.len() == 1 && name.ends_with("norm.weight");
            let x: Vec<f32> = values(n as usize, i as u64 + 1)
                .into_iter()
                .map(|v| if norm { 1.0 + 0.2 * v } else { 0.5 * v })
                .collect();
            datas.push(reference::quantize(*ty, &x).expect("quantize"));
        }
        let mut s = w.start(Vec::new()).expect("gguf start");
        for ((name, _, _), bytes) in self.tensors.iter().zip(&datas) {
            s.write_tensor(name, bytes).expect("write_tensor");
        }
        s.finish().expect("gguf finish")
    }
}

fn base_bytes() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| Spec::qwen2().build())
}

// ---------------------------------------------------------------------------
// Where each header field of a GGUF file is (an independent walk, no checks).

#[derive(Debug)]
struct KvPos {
    key: String,
    len_pos: usize,
    type_pos: usize,
    value_pos: usize,
}

#[derive(Debug)]
struct TensorPos {
    name: String,
    len_pos: usize,
    ndims_pos: usize,
    dims_pos: usize,
    type_pos: usize,
    offset_pos: usize,
}

#[derive(Debug)]
struct Layout {
    kvs: Vec<KvPos>,
    tensors: Vec<TensorPos>,
    header_end: usize,
}

fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn rd_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Bytes taken by a value of type `tag` at `at`.
fn value_len(b: &[u8], tag: u32, at: usize) -> usize {
    match tag {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => 8 + rd_u64(b, at) as usize,
        9 => {
            let (et, n) = (rd_u32(b, at), rd_u64(b, at + 4) as usize);
            let mut pos = at + 12;
            for _ in 0..n {
                pos += value_len(b, et, pos);
            }
            pos - at
        }
        t => panic!("layout: value type {t} in a file we wrote"),
    }
}

impl Layout {
    fn of(b: &[u8]) -> Layout {
        let n_tensors = rd_u64(b, 8) as usize;
        let n_kv = rd_u64(b, 16) as usize;
        let mut pos = 24;
        let mut kvs = Vec::new();
        for _ in 0..n_kv {
            let len = rd_u64(b, pos) as usize;
            let key = String::from_utf8_lossy(&b[pos + 8..pos + 8 + len]).into_owned();
            let type_pos = pos + 8 + len;
            let value_pos = type_pos + 4;
            let next = value_pos + value_len(b, rd_u32(b, type_pos), value_pos);
            kvs.push(KvPos {
                key,
                len_pos: pos,
                type_pos,
                value_pos,
            });
            pos = next;
        }
        let mut tensors = Vec::new();
        for _ in 0..n_tensors {
            let len = rd_u64(b, pos) as usize;
            let name = String::from_utf8_lossy(&b[pos + 8..pos + 8 + len]).into_owned();
            let ndims_pos = pos + 8 + len;
            let n_dims = rd_u32(b, ndims_pos) as usize;
            let dims_pos = ndims_pos + 4;
            let type_pos = dims_pos + 8 * n_dims;
            tensors.push(TensorPos {
                name,
                len_pos: pos,
                ndims_pos,
                dims_pos,
                type_pos,
                offset_pos: type_pos + 4,
            });
            pos = type_pos + 12;
        }
        Layout {
            kvs,
            tensors,
            header_end: pos,
        }
    }

    fn kv(&self, key: &str) -> &KvPos {
        self.kvs
            .iter()
            .find(|k| k.key == key)
            .unwrap_or_else(|| panic!("no key {key}"))
    }

    fn tensor(&self, name: &str) -> &TensorPos {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }
}

/// The base file with `f` applied to its bytes.
fn mutated(f: impl FnOnce(&mut Vec<u8>, &Layout)) -> Vec<u8> {
    let mut b = base_bytes().to_vec();
    let layout = Layout::of(&b);
    f(&mut b, &layout);
    b
}

// ---------------------------------------------------------------------------
// qwen-run on hostile GGUF files.

/// The ways qwen-run reads a model: token ids to logits, a generated reply, the
/// tokenizer alone, and the tensor scan.
const MODES: &[&[&str]] = &[
    &["--token-ids", "1,2,3", "--dump-logits", "@npy"],
    &[
        "--mode", "generate", "-p", "hello", "-n", "3", "--temp", "0",
    ],
    &["--tokenize"],
    &["--check-tensors"],
];

/// Writes `bytes` to `dir/name.gguf` and runs every mode on it; each must be
/// refused. Returns the stderr of the first mode (token ids).
fn refuse_everywhere(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(format!("{name}.gguf"));
    std::fs::write(&path, bytes).expect("write case");
    let npy = dir.join(format!("{name}.npy"));
    let mut first = None;
    for mode in MODES {
        let mut args = vec!["-f", p(&path)];
        args.extend(mode.iter().map(|a| if *a == "@npy" { p(&npy) } else { a }));
        let o = run(&qwen_run(), &args, b"hello");
        assert_refused(&o, &format!("{name}: qwen-run {}", mode.join(" ")));
        first.get_or_insert_with(|| stderr_of(&o));
    }
    assert!(!npy.exists(), "{name}: a logits file was written");
    first.unwrap_or_default()
}

/// Runs one mode; it must be refused. Returns stderr.
fn refuse(dir: &Path, name: &str, bytes: &[u8], args: &[&str], stdin: &[u8]) -> String {
    let path = dir.join(format!("{name}.gguf"));
    std::fs::write(&path, bytes).expect("write case");
    let mut a = vec!["-f", p(&path)];
    a.extend_from_slice(args);
    let o = run(&qwen_run(), &a, stdin);
    assert_refused(&o, &format!("{name}: qwen-run {}", args.join(" ")));
    stderr_of(&o)
}

/// The base model must still give finite logits and tokenize.
fn base_still_works(dir: &Path) {
    let path = dir.join("base.gguf");
    std::fs::write(&path, base_bytes()).expect("write base");
    let npy = dir.join("base.npy");
    let o = run(
        &qwen_run(),
        &[
            "-f",
            p(&path),
            "--token-ids",
            "1,2,3",
            "--dump-logits",
            p(&npy),
        ],
        b"",
    );
    assert_ok(&o, "base model --dump-logits");
    assert!(npy.exists());
    let o = run(&qwen_run(), &["-f", p(&path), "--tokenize"], b"hello world");
    assert_ok(&o, "base model --tokenize");
    let o = run(&qwen_run(), &["-f", p(&path), "--check-tensors"], b"");
    assert_ok(&o, "base model --check-tensors");
}

#[test]
fn base_model_works() {
    let dir = scratch("base_model_works");
    base_still_works(&dir);
    let path = dir.join("base.gguf");
    let o = run(
        &qwen_run(),
        &[
            "-f",
            p(&path),
            "--mode",
            "generate",
            "-p",
            "hello",
            "-n",
            "4",
            "--temp",
            "0",
        ],
        b"",
    );
    assert_ok(&o, "base model generate");
}

#[test]
fn empty_missing_and_foreign_files() {
    let dir = scratch("empty_missing_and_foreign_files");
    refuse_everywhere(&dir, "empty", b"");
    refuse_everywhere(&dir, "text", b"this is not a model file\n");
    refuse_everywhere(&dir, "magic_only", b"GGUF");
    // A safetensors file given to qwen-run.
    let st = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hf/qwen2_odd/model.safetensors"),
    )
    .expect("fixture");
    refuse_everywhere(&dir, "safetensors", &st[..4096]);
    let o = run(
        &qwen_run(),
        &["-f", p(&dir.join("absent.gguf")), "--check-tensors"],
        b"",
    );
    assert_refused(&o, "missing file");
    let o = run(&qwen_run(), &["-f", p(&dir), "--check-tensors"], b"");
    assert_refused(&o, "a folder as model");
    base_still_works(&dir);
}

#[test]
fn bad_versions() {
    let dir = scratch("bad_versions");
    for (name, v) in [
        ("v0", 0u32),
        ("v1", 1),
        ("v4", 4),
        ("big_endian_v3", 3u32.swap_bytes()),
        ("v_max", u32::MAX),
    ] {
        let b = mutated(|b, _| put_u32(b, 4, v));
        refuse_everywhere(&dir, name, &b);
    }
    base_still_works(&dir);
}

#[test]
fn truncated_at_many_offsets() {
    let dir = scratch("truncated_at_many_offsets");
    let base = base_bytes();
    let l = Layout::of(base);
    let mut cuts: Vec<usize> = vec![0, 1, 3, 4, 5, 8, 12, 16, 20, 24, 25, 31, 32];
    for kv in l.kvs.iter().step_by(3) {
        cuts.extend([kv.len_pos + 4, kv.type_pos, kv.value_pos + 2]);
    }
    for t in &l.tensors {
        cuts.extend([
            t.len_pos + 1,
            t.ndims_pos,
            t.dims_pos + 3,
            t.type_pos,
            t.offset_pos + 7,
        ]);
    }
    let g = Gguf::parse(base).expect("base parses");
    let data = g.data_offset as usize;
    cuts.extend([l.header_end - 1, l.header_end, data - 1, data, data + 1]);
    for t in &g.tensors {
        let start = data + t.offset as usize;
        cuts.extend([
            start + t.n_bytes as usize / 2,
            start + t.n_bytes as usize - 1,
        ]);
    }
    // The writer pads the file to the alignment after the last tensor; cutting
    // that padding leaves a valid file, so cut only before the end of the data.
    let data_end = g
        .tensors
        .iter()
        .map(|t| data + (t.offset + t.n_bytes) as usize)
        .max()
        .expect("tensors");
    cuts.extend([data_end - 33, data_end - 1]);
    for k in 1..40 {
        cuts.push(data_end * k / 40);
    }
    cuts.retain(|&c| c < data_end);
    cuts.sort_unstable();
    cuts.dedup();
    assert!(cuts.len() > 100, "{} cut points", cuts.len());
    let path = dir.join("cut.gguf");
    for &c in &cuts {
        std::fs::write(&path, &base[..c]).expect("write");
        // Loading is where truncation must be caught: one mode suffices per cut,
        // the full set of modes runs on a few.
        let o = run(
            &qwen_run(),
            &[
                "-f",
                p(&path),
                "--token-ids",
                "1,2",
                "--dump-logits",
                p(&dir.join("cut.npy")),
            ],
            b"",
        );
        assert_refused(&o, &format!("truncated at {c} of {}", base.len()));
    }
    for &c in &[24usize, data - 1, data_end - 1] {
        refuse_everywhere(&dir, &format!("cut_{c}"), &base[..c]);
    }
    base_still_works(&dir);
}

#[test]
fn absurd_counts() {
    let dir = scratch("absurd_counts");
    for (name, field, v) in [
        ("n_tensors_max", 8usize, u64::MAX),
        ("n_tensors_2p62", 8, 1 << 62),
        ("n_tensors_plus_one", 8, 0),
        ("n_kv_max", 16, u64::MAX),
        ("n_kv_2p40", 16, 1 << 40),
        ("n_kv_plus_one", 16, 0),
    ] {
        let b = mutated(|b, _| {
            let v = if v == 0 { rd_u64(b, field) + 1 } else { v };
            put_u64(b, field, v)
        });
        refuse_everywhere(&dir, name, &b);
    }
    // An array claiming 2^61 tokens.
    let b = mutated(|b, l| put_u64(b, l.kv("tokenizer.ggml.tokens").value_pos + 4, 1 << 61));
    refuse_everywhere(&dir, "token_array_2p61", &b);
    // n_dims = 5 and 2^32 - 1.
    for (name, n) in [("five_dims", 5u32), ("max_dims", u32::MAX)] {
        let b = mutated(|b, l| put_u32(b, l.tensor("blk.0.attn_q.weight").ndims_pos, n));
        refuse_everywhere(&dir, name, &b);
    }
    base_still_works(&dir);
}

#[test]
fn string_lengths_near_2_pow_64() {
    let dir = scratch("string_lengths_near_2_pow_64");
    for (name, v) in [
        ("max", u64::MAX),
        ("max_minus_7", u64::MAX - 7),
        ("2p63", 1 << 63),
        ("past_end", 1 << 20),
    ] {
        let b = mutated(|b, l| put_u64(b, l.kvs[0].len_pos, v));
        refuse_everywhere(&dir, &format!("key_len_{name}"), &b);
        let b = mutated(|b, l| put_u64(b, l.kv("general.name").value_pos, v));
        refuse_everywhere(&dir, &format!("str_value_len_{name}"), &b);
        let b = mutated(|b, l| put_u64(b, l.tensor("output_norm.weight").len_pos, v));
        refuse_everywhere(&dir, &format!("tensor_name_len_{name}"), &b);
        // The length of one string inside the tokens array.
        let b = mutated(|b, l| put_u64(b, l.kv("tokenizer.ggml.tokens").value_pos + 12, v));
        refuse_everywhere(&dir, &format!("token_len_{name}"), &b);
    }
    base_still_works(&dir);
}

#[test]
fn dims_whose_product_overflows() {
    let dir = scratch("dims_whose_product_overflows");
    // [2^40, 2^40] (2^80 elements), [2^63, 2] and [u64::MAX, 1] in place of a 2-D weight.
    for (name, d0, d1) in [
        ("2p40_2p40", 1u64 << 40, 1u64 << 40),
        ("2p63_2", 1 << 63, 2),
        ("max_1", u64::MAX - 31, 1),
        ("2p32_2p32", 1 << 32, 1 << 32),
    ] {
        let b = mutated(|b, l| {
            let t = l.tensor("blk.1.ffn_up.weight");
            put_u64(b, t.dims_pos, d0);
            put_u64(b, t.dims_pos + 8, d1);
        });
        refuse_everywhere(&dir, name, &b);
    }
    base_still_works(&dir);
}

#[test]
fn zero_sized_dims_with_huge_rows() {
    // [2^40, 0]: zero elements and zero bytes (ggml allows a 0 dim), but a row
    // of 2^40 elements. The model must refuse the shape; the tensor scan must
    // not allocate a row buffer from dims[0] (it may pass: nothing is NaN).
    let dir = scratch("zero_sized_dims_with_huge_rows");
    let b = mutated(|b, l| {
        let t = l.tensor("output.weight");
        put_u64(b, t.dims_pos, 1 << 40);
        put_u64(b, t.dims_pos + 8, 0);
    });
    let npy = dir.join("x.npy");
    let e = refuse(
        &dir,
        "output_2p40_by_0",
        &b,
        &["--token-ids", "1", "--dump-logits", p(&npy)],
        b"",
    );
    assert!(e.contains("output.weight"), "{e}");
    refuse(
        &dir,
        "output_2p40_by_0",
        &b,
        &["--mode", "generate", "-p", "hi", "-n", "2"],
        b"",
    );
    let path = dir.join("output_2p40_by_0.gguf");
    let o = run(&qwen_run(), &["-f", p(&path), "--check-tensors"], b"");
    if !o.status.success() {
        assert_refused(&o, "--check-tensors on a [2^40, 0] tensor");
    }
    base_still_works(&dir);
}

#[test]
fn offsets_past_the_end_and_misaligned() {
    let dir = scratch("offsets_past_the_end_and_misaligned");
    for (name, f) in [
        ("past_end", (|o: u64| o + (1 << 30)) as fn(u64) -> u64),
        ("max_aligned", |_| u64::MAX - 31),
        ("misaligned_1", |o| o + 1),
        ("misaligned_16", |o| o + 16),
        ("just_past_end", |o| o + 4096),
    ] {
        let b = mutated(|b, l| {
            let at = l.tensor("output.weight").offset_pos;
            let o = rd_u64(b, at);
            put_u64(b, at, f(o));
        });
        refuse_everywhere(&dir, name, &b);
    }
    // Two tensors on the same bytes.
    let b = mutated(|b, l| {
        let a = rd_u64(b, l.tensor("blk.0.ffn_up.weight").offset_pos);
        put_u64(b, l.tensor("blk.0.ffn_gate.weight").offset_pos, a);
    });
    refuse_everywhere(&dir, "overlap", &b);
    // A bad alignment value.
    for (name, a) in [("align_0", 0u32), ("align_3", 3), ("align_2p31", 1 << 31)] {
        let b = mutated(|b, l| put_u32(b, l.kv("general.alignment").value_pos, a));
        refuse_everywhere(&dir, name, &b);
    }
    base_still_works(&dir);
}

#[test]
fn unknown_type_tags() {
    let dir = scratch("unknown_type_tags");
    for (name, tag) in [
        ("tensor_type_99", 99u32),
        ("tensor_type_max", u32::MAX),
        ("tensor_type_4", 4),
    ] {
        let b = mutated(|b, l| put_u32(b, l.tensor("blk.0.attn_k.weight").type_pos, tag));
        refuse_everywhere(&dir, name, &b);
    }
    for (name, tag) in [("value_type_13", 13u32), ("value_type_max", u32::MAX)] {
        let b = mutated(|b, l| put_u32(b, l.kv("general.name").type_pos, tag));
        refuse_everywhere(&dir, name, &b);
    }
    // A valid ggml type the runtime cannot multiply (i32 has the same 4-byte
    // elements as f32, so the file stays consistent).
    let b = mutated(|b, l| put_u32(b, l.tensor("blk.0.attn_norm.weight").type_pos, 26));
    let e = refuse(
        &dir,
        "norm_as_i32",
        &b,
        &["--token-ids", "1", "--dump-logits", p(&dir.join("x.npy"))],
        b"",
    );
    assert!(e.contains("blk.0.attn_norm.weight"), "{e}");
    // The element type of an array.
    let b = mutated(|b, l| put_u32(b, l.kv("tokenizer.ggml.merges").value_pos, 77));
    refuse_everywhere(&dir, "array_elem_type_77", &b);
    base_still_works(&dir);
}

/// f16 bits of the scale of block `block` of tensor `name` (q4_0/q8_0 keep
/// `d` in the first two bytes of each block).
fn set_block_scale(name: &str, block: usize, bits: u16) -> Vec<u8> {
    let g = Gguf::parse(base_bytes()).expect("base parses");
    let t = g.tensor(name).expect("tensor").clone();
    assert!(matches!(t.dtype, GgmlType::Q4_0 | GgmlType::Q8_0));
    let at = (g.data_offset + t.offset) as usize + block * t.dtype.type_size();
    let mut b = base_bytes().to_vec();
    b[at..at + 2].copy_from_slice(&bits.to_le_bytes());
    b
}

const F16_NAN: u16 = 0x7e00;
const F16_INF: u16 = 0x7c00;
const F16_NEG_INF: u16 = 0xfc00;

#[test]
fn non_finite_scales_stop_the_run() {
    let dir = scratch("non_finite_scales_stop_the_run");
    let cases = [
        ("output_q8_0_nan", "output.weight", 5usize, F16_NAN),
        ("output_q8_0_inf", "output.weight", 0, F16_INF),
        ("attn_q_q4_0_nan", "blk.0.attn_q.weight", 0, F16_NAN),
        (
            "ffn_down_q4_0_neg_inf",
            "blk.1.ffn_down.weight",
            3,
            F16_NEG_INF,
        ),
        // Row 1 of the embedding (token id 1 is in every prompt below).
        ("embd_q8_0_inf", "token_embd.weight", 1, F16_INF),
    ];
    each_case(cases, |(name, tensor, block, bits)| {
        let b = set_block_scale(tensor, block, bits);
        // The scan finds it whatever the forward pass does.
        let e = refuse(&dir, name, &b, &["--check-tensors"], b"");
        assert!(
            e.contains(tensor),
            "{name}: --check-tensors does not name {tensor}: {e}"
        );
        let npy = dir.join(format!("{name}.npy"));
        let e = refuse(
            &dir,
            name,
            &b,
            &["--token-ids", "1,2,3", "--dump-logits", p(&npy)],
            b"",
        );
        assert!(!npy.exists(), "{name}: logits written");
        assert!(
            e.to_lowercase().contains("finite") || e.to_lowercase().contains("nan"),
            "{name}: the error does not say the values are non-finite: {e}"
        );
        refuse(
            &dir,
            name,
            &b,
            &[
                "--mode",
                "generate",
                "-p",
                "\u{1}hello",
                "-n",
                "4",
                "--temp",
                "0",
            ],
            b"",
        );
    });
    base_still_works(&dir);
}

#[test]
fn nan_in_f32_norm_is_reported() {
    let dir = scratch("nan_in_f32_norm_is_reported");
    let g = Gguf::parse(base_bytes()).expect("base parses");
    let t = g.tensor("blk.1.ffn_norm.weight").expect("tensor").clone();
    let at = (g.data_offset + t.offset) as usize + 4 * 7;
    let mut b = base_bytes().to_vec();
    b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let e = refuse(&dir, "norm_nan", &b, &["--check-tensors"], b"");
    assert!(e.contains("blk.1.ffn_norm.weight"), "{e}");
    refuse(
        &dir,
        "norm_nan",
        &b,
        &["--token-ids", "1,2", "--dump-logits", p(&dir.join("n.npy"))],
        b"",
    );
    base_still_works(&dir);
}

#[test]
fn wrong_shapes_and_hyperparameters() {
    let dir = scratch("wrong_shapes_and_hyperparameters");
    let base = Spec::qwen2();
    let cases: Vec<(&str, Spec)> = vec![
        (
            "embd_48",
            base.clone()
                .set(&base.arch_key("embedding_length"), Value::U32(48)),
        ),
        (
            "ff_128",
            base.clone()
                .set(&base.arch_key("feed_forward_length"), Value::U32(128)),
        ),
        (
            "layers_3",
            base.clone()
                .set(&base.arch_key("block_count"), Value::U32(3)),
        ),
        (
            "layers_max",
            base.clone()
                .set(&base.arch_key("block_count"), Value::U32(u32::MAX)),
        ),
        (
            "heads_0",
            base.clone()
                .set(&base.arch_key("attention.head_count"), Value::U32(0)),
        ),
        (
            "heads_3",
            base.clone()
                .set(&base.arch_key("attention.head_count"), Value::U32(3)),
        ),
        (
            "kv_heads_3",
            base.clone()
                .set(&base.arch_key("attention.head_count_kv"), Value::U32(3)),
        ),
        (
            "ctx_0",
            base.clone()
                .set(&base.arch_key("context_length"), Value::U32(0)),
        ),
        (
            "embd_as_string",
            base.clone()
                .set(&base.arch_key("embedding_length"), Value::from("32")),
        ),
        (
            "eps_negative",
            base.clone().set(
                &base.arch_key("attention.layer_norm_rms_epsilon"),
                Value::F32(-1.0),
            ),
        ),
        (
            "eps_nan",
            base.clone().set(
                &base.arch_key("attention.layer_norm_rms_epsilon"),
                Value::F32(f32::NAN),
            ),
        ),
        (
            "rope_base_inf",
            base.clone()
                .set(&base.arch_key("rope.freq_base"), Value::F32(f32::INFINITY)),
        ),
        (
            "rope_dim_odd",
            base.clone()
                .set(&base.arch_key("rope.dimension_count"), Value::U32(15)),
        ),
        (
            "rope_dim_huge",
            base.clone()
                .set(&base.arch_key("rope.dimension_count"), Value::U32(1 << 20)),
        ),
        (
            "no_block_count",
            base.clone().remove(&base.arch_key("block_count")),
        ),
        (
            "no_architecture",
            base.clone().remove("general.architecture"),
        ),
    ];
    for (name, spec) in cases {
        refuse(
            &dir,
            name,
            &spec.build(),
            &["--token-ids", "1,2", "--dump-logits", p(&dir.join("x.npy"))],
            b"",
        );
    }
    // A weight with the wrong shape: attn_q as [32, 16] (q4_0 stays consistent).
    let mut spec = Spec::qwen2();
    spec.tensors
        .iter_mut()
        .find(|t| t.0 == "blk.0.attn_q.weight")
        .expect("attn_q")
        .1 = vec![N_EMBD, 16];
    let e = refuse(
        &dir,
        "attn_q_shape",
        &spec.build(),
        &["--token-ids", "1", "--dump-logits", p(&dir.join("x.npy"))],
        b"",
    );
    assert!(e.contains("blk.0.attn_q.weight"), "{e}");
    // A missing tensor.
    let mut spec = Spec::qwen2();
    spec.tensors.retain(|t| t.0 != "blk.1.ffn_gate.weight");
    let e = refuse(
        &dir,
        "missing_ffn_gate",
        &spec.build(),
        &["--token-ids", "1", "--dump-logits", p(&dir.join("x.npy"))],
        b"",
    );
    assert!(e.contains("blk.1.ffn_gate.weight"), "{e}");
    base_still_works(&dir);
}

#[test]
fn unknown_architectures() {
    let dir = scratch("unknown_architectures");
    for (name, arch) in [
        ("llama9", "llama9"),
        ("empty", ""),
        ("gpt2", "gpt2"),
        ("qwen2moe", "qwen2moe"),
    ] {
        let spec = Spec::qwen2().set("general.architecture", Value::from(arch));
        refuse(
            &dir,
            &format!("arch_{name}"),
            &spec.build(),
            &["--token-ids", "1", "--dump-logits", p(&dir.join("x.npy"))],
            b"",
        );
    }
    let spec = Spec::qwen2().set("general.architecture", Value::U32(2));
    refuse(
        &dir,
        "arch_as_u32",
        &spec.build(),
        &["--token-ids", "1", "--dump-logits", p(&dir.join("x.npy"))],
        b"",
    );
    base_still_works(&dir);
}

#[test]
fn hostile_tokenizer_metadata() {
    let dir = scratch("hostile_tokenizer_metadata");
    let tok_args: &[&str] = &["--tokenize"];
    let b = Spec::qwen2()
        .set("tokenizer.ggml.model", Value::from("llama"))
        .build();
    refuse(&dir, "model_llama", &b, tok_args, b"hi");
    let b = Spec::qwen2()
        .set("tokenizer.ggml.pre", Value::from("nonsense"))
        .build();
    refuse(&dir, "pre_unknown", &b, tok_args, b"hi");
    let b = Spec::qwen2()
        .set("tokenizer.ggml.token_type", Value::from(vec![1i32, 1, 1]))
        .build();
    refuse(&dir, "types_short", &b, tok_args, b"hi");
    let b = Spec::qwen2()
        .set("tokenizer.ggml.tokens", Value::from(vec![1u32, 2, 3]))
        .build();
    refuse(&dir, "tokens_not_strings", &b, tok_args, b"hi");
    let b = Spec::qwen2()
        .set("tokenizer.ggml.eos_token_id", Value::U32(1 << 30))
        .build();
    refuse(
        &dir,
        "eos_out_of_range",
        &b,
        &["--mode", "generate", "-p", "hi", "-n", "2"],
        b"",
    );
    let b = Spec::qwen2()
        .set(
            "tokenizer.ggml.merges",
            Value::from(vec!["no_space_here".to_string()]),
        )
        .build();
    refuse(&dir, "merge_without_space", &b, tok_args, b"hi");
    let b = Spec::qwen2().remove("tokenizer.ggml.tokens").build();
    refuse(&dir, "no_tokens", &b, tok_args, b"hi");
    let b = Spec::qwen2()
        .set(
            "tokenizer.chat_template",
            Value::from("{% for m in messages %}{{ m.content "),
        )
        .build();
    refuse(&dir, "template_unclosed", &b, &["-p", "hi", "-n", "2"], b"");
    let b = Spec::qwen2()
        .set(
            "tokenizer.chat_template",
            Value::from("{{ raise_exception('no') }}"),
        )
        .build();
    refuse(&dir, "template_raises", &b, &["-p", "hi", "-n", "2"], b"");
    // A token in byte-level form that is not in GPT-2's alphabet (U+3000).
    let mut spec = Spec::qwen2();
    if let Some((_, Value::Array(_, toks))) = spec
        .meta
        .iter_mut()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
    {
        toks[256] = Value::from("h\u{3000}");
    }
    refuse(
        &dir,
        "token_outside_alphabet",
        &spec.build(),
        tok_args,
        b"hi",
    );
    base_still_works(&dir);
}

/// Runs qwen-run with a deadline; a run still going after `secs` is killed and
/// reported as hanging.
fn run_deadline(args: &[&str], secs: u64) -> Result<Output, String> {
    let mut child = Command::new(qwen_run())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qwen-run");
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return Ok(child.wait_with_output().expect("output"));
        }
        if start.elapsed().as_secs() >= secs {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "qwen-run {} still running after {secs} s",
                args.join(" ")
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn chat_templates_that_never_end() {
    // A chat template is code from the file: one that loops (nearly) forever
    // or builds a huge string must be stopped with an error, not hang or
    // exhaust memory.
    let dir = scratch("chat_templates_that_never_end");
    let cases = [
        (
            "nested_ranges",
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        ),
        (
            "recursive_macro",
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        ),
    ];
    each_case(cases, |(name, tpl)| {
        let b = Spec::qwen2()
            .set("tokenizer.chat_template", Value::from(tpl))
            .build();
        let path = dir.join(format!("{name}.gguf"));
        std::fs::write(&path, b).expect("write");
        let o = run_deadline(&["-f", p(&path), "-p", "hi", "-n", "1"], 30)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_refused(&o, name);
    });
}

#[test]
fn hostile_command_line_and_stdin() {
    let dir = scratch("hostile_command_line_and_stdin");
    let path = dir.join("base.gguf");
    std::fs::write(&path, base_bytes()).expect("write base");
    let m = p(&path);
    let npy = dir.join("x.npy");
    let cases: Vec<(&str, Vec<&str>, &[u8])> = vec![
        (
            "id_out_of_range",
            vec!["--token-ids", "1,99999", "--dump-logits", p(&npy)],
            b"",
        ),
        (
            "id_u32_overflow",
            vec!["--token-ids", "4294967296", "--dump-logits", p(&npy)],
            b"",
        ),
        (
            "id_negative",
            vec!["--token-ids", "-1", "--dump-logits", p(&npy)],
            b"",
        ),
        (
            "ctx_huge",
            vec![
                "--token-ids",
                "1",
                "--dump-logits",
                p(&npy),
                "-c",
                "18446744073709551615",
            ],
            b"",
        ),
        (
            "batch_0",
            vec!["--token-ids", "1", "--dump-logits", p(&npy), "-b", "0"],
            b"",
        ),
        (
            "prompt_longer_than_ctx",
            vec![
                "--mode",
                "generate",
                "-p",
                "hello hello hello hello",
                "-c",
                "2",
            ],
            b"",
        ),
        (
            "detok_unknown_id",
            vec!["--detokenize"],
            b"[1, 2, 4000000000]",
        ),
        ("detok_not_json", vec!["--detokenize"], b"[1, 2"),
        ("tok_not_utf8", vec!["--tokenize"], b"ab\xff\xfecd"),
        (
            "temp_nan",
            vec!["--mode", "generate", "-p", "hi", "--temp", "NaN"],
            b"",
        ),
        (
            "top_p_neg",
            vec!["--mode", "generate", "-p", "hi", "--top-p", "-1"],
            b"",
        ),
        (
            "threads_0",
            vec!["--token-ids", "1", "--dump-logits", p(&npy), "-t", "0"],
            b"",
        ),
        (
            "kernels_bogus",
            vec![
                "--token-ids",
                "1",
                "--dump-logits",
                p(&npy),
                "--kernels",
                "sse9",
            ],
            b"",
        ),
    ];
    for (name, args, stdin) in cases {
        let mut a = vec!["-f", m];
        a.extend(args);
        let o = run(&qwen_run(), &a, stdin);
        assert_refused(&o, name);
    }
    base_still_works(&dir);
}

#[test]
fn long_whitespace_runs_tokenize() {
    // The Qwen2 pre-tokenizer's `\s+(?!\S)` backtracks over whitespace runs;
    // a long run must still tokenize (or be refused with an error), not panic.
    let dir = scratch("long_whitespace_runs_tokenize");
    let path = dir.join("base.gguf");
    std::fs::write(&path, base_bytes()).expect("write base");
    for (name, text) in [
        ("spaces_then_x", format!("{}x", " ".repeat(200_000))),
        ("newlines_then_x", format!("{}x", "\n ".repeat(100_000))),
        ("tabs", "\t".repeat(300_000)),
    ] {
        let o = run(
            &qwen_run(),
            &["-f", p(&path), "--tokenize"],
            text.as_bytes(),
        );
        let err = stderr_of(&o);
        assert!(!err.contains("panicked"), "{name}: panic: {err}");
        if !o.status.success() {
            assert_refused(&o, name);
        }
    }
}

// ---------------------------------------------------------------------------
// qwen-convert on hostile Hugging Face folders.

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// Copies fixture folder `name` to `dst`.
fn copy_fixture(name: &str, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for e in std::fs::read_dir(fixture(name)).expect("fixture folder") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), dst.join(e.file_name())).expect("copy");
    }
}

/// Runs qwen-convert on `input` into `out_dir/model.gguf`; it must be refused
/// and leave out_dir as it was (no output, no temporary file).
fn convert_refused(input: &Path, out_dir: &Path, what: &str) -> String {
    std::fs::create_dir_all(out_dir).expect("mkdir");
    let before: Vec<_> = list(out_dir);
    let out = out_dir.join("model.gguf");
    let o = run(
        &qwen_convert(),
        &["-i", p(input), "-o", p(&out), "-t", "q4_0", "-q"],
        b"",
    );
    assert_refused(&o, &format!("qwen-convert: {what}"));
    assert_eq!(
        list(out_dir),
        before,
        "{what}: qwen-convert left files behind"
    );
    stderr_of(&o)
}

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// (header JSON, data start) of a safetensors file.
fn st_header(bytes: &[u8]) -> (serde_json::Map<String, serde_json::Value>, usize) {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8")) as usize;
    let v: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header JSON");
    match v {
        serde_json::Value::Object(m) => (m, 8 + n),
        _ => panic!("header is not an object"),
    }
}

/// A safetensors file with the header replaced by `header` (data kept).
fn st_with_header(bytes: &[u8], header: &serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
    let (_, start) = st_header(bytes);
    let mut h = serde_json::to_vec(header).expect("json");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[start..]);
    out
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("read json")).expect("json");
    f(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).expect("json")).expect("write json");
}

/// One hostile folder: a copy of `fixture_name` changed by `f`.
struct Case {
    name: &'static str,
    fixture: &'static str,
    edit: Box<dyn Fn(&Path)>,
    /// Text the error must contain.
    needle: &'static str,
}

fn st_edit(f: impl Fn(&mut Vec<u8>) + 'static) -> Box<dyn Fn(&Path)> {
    Box::new(move |d: &Path| {
        let path = d.join("model.safetensors");
        let mut b = std::fs::read(&path).expect("read");
        f(&mut b);
        std::fs::write(&path, b).expect("write");
    })
}

fn header_edit(
    f: impl Fn(&mut serde_json::Map<String, serde_json::Value>) + 'static,
) -> Box<dyn Fn(&Path)> {
    st_edit(move |b| {
        let (mut h, _) = st_header(b);
        f(&mut h);
        *b = st_with_header(b, &h);
    })
}

fn config_edit(f: impl Fn(&mut serde_json::Value) + 'static) -> Box<dyn Fn(&Path)> {
    Box::new(move |d: &Path| edit_json(&d.join("config.json"), &f))
}

fn convert_cases() -> Vec<Case> {
    use serde_json::json;
    let odd = "qwen2_odd";
    vec![
        Case {
            name: "st_empty",
            fixture: odd,
            edit: st_edit(|b| b.clear()),
            needle: "model.safetensors",
        },
        Case {
            name: "st_7_bytes",
            fixture: odd,
            edit: st_edit(|b| b.truncate(7)),
            needle: "model.safetensors",
        },
        Case {
            name: "st_cut_in_header",
            fixture: odd,
            edit: st_edit(|b| b.truncate(100)),
            needle: "model.safetensors",
        },
        Case {
            name: "st_cut_in_data",
            fixture: odd,
            edit: st_edit(|b| {
                let n = b.len();
                b.truncate(n - 1000)
            }),
            needle: "model.safetensors",
        },
        Case {
            name: "st_cut_last_byte",
            fixture: odd,
            edit: st_edit(|b| {
                b.pop();
            }),
            needle: "model.safetensors",
        },
        Case {
            name: "st_header_len_max",
            fixture: odd,
            edit: st_edit(|b| b[..8].copy_from_slice(&u64::MAX.to_le_bytes())),
            needle: "header",
        },
        Case {
            name: "st_header_len_2p63",
            fixture: odd,
            edit: st_edit(|b| b[..8].copy_from_slice(&(1u64 << 63).to_le_bytes())),
            needle: "header",
        },
        Case {
            name: "st_header_len_0",
            fixture: odd,
            edit: st_edit(|b| b[..8].copy_from_slice(&0u64.to_le_bytes())),
            needle: "header",
        },
        Case {
            name: "st_header_not_utf8",
            fixture: odd,
            edit: st_edit(|b| b[20] = 0xff),
            needle: "header",
        },
        Case {
            name: "st_header_is_array",
            fixture: odd,
            edit: st_edit(|b| {
                let (_, start) = st_header(b);
                let mut h = b"[1,2,3]".to_vec();
                h.resize(start - 8, b' ');
                b[8..start].copy_from_slice(&h);
            }),
            needle: "header",
        },
        Case {
            name: "st_offsets_past_end",
            fixture: odd,
            edit: header_edit(|h| {
                h["model.norm.weight"]["data_offsets"] = json!([1u64 << 40, (1u64 << 40) + 80]);
            }),
            needle: "model.norm.weight",
        },
        Case {
            name: "st_offsets_reversed",
            fixture: odd,
            edit: header_edit(|h| {
                let o = h["model.norm.weight"]["data_offsets"].clone();
                h["model.norm.weight"]["data_offsets"] = json!([o[1], o[0]]);
            }),
            needle: "model.norm.weight",
        },
        Case {
            name: "st_offsets_overlap",
            fixture: odd,
            edit: header_edit(|h| {
                let o = h["lm_head.weight"]["data_offsets"].clone();
                h["model.embed_tokens.weight"]["data_offsets"] = o;
            }),
            needle: "",
        },
        Case {
            name: "st_size_lies",
            fixture: odd,
            edit: header_edit(|h| {
                h["model.norm.weight"]["shape"] = json!([41]);
            }),
            needle: "model.norm.weight",
        },
        Case {
            name: "st_shape_overflows",
            fixture: odd,
            edit: header_edit(|h| {
                h["model.norm.weight"]["shape"] = json!([1u64 << 62, 1u64 << 62, 4]);
            }),
            needle: "model.norm.weight",
        },
        Case {
            name: "st_shape_negative",
            fixture: odd,
            edit: header_edit(|h| {
                h["model.norm.weight"]["shape"] = json!([-40]);
            }),
            needle: "model.norm.weight",
        },
        Case {
            name: "st_dtype_unknown",
            fixture: odd,
            edit: header_edit(|h| {
                h["model.norm.weight"]["dtype"] = json!("F8_E4M3");
            }),
            needle: "F8_E4M3",
        },
        Case {
            name: "st_dtype_i64",
            fixture: odd,
            edit: header_edit(|h| {
                // Same byte size as 40 x F16 would not be: 10 x I64 = 80 bytes.
                h["model.norm.weight"]["dtype"] = json!("I64");
                h["model.norm.weight"]["shape"] = json!([10]);
            }),
            needle: "I64",
        },
        Case {
            name: "st_missing_tensor",
            fixture: odd,
            edit: header_edit(|h| {
                let v = h.remove("model.norm.weight").expect("tensor");
                h.insert("model.norm.weigh_".into(), v);
            }),
            needle: "model.norm.weigh",
        },
        Case {
            name: "st_wrong_shape",
            fixture: odd,
            edit: header_edit(|h| {
                // 40 x 72 read as 72 x 40: same bytes, wrong orientation.
                h["model.layers.0.mlp.down_proj.weight"]["shape"] = json!([72, 40]);
            }),
            needle: "down_proj",
        },
        Case {
            name: "st_nan_weight",
            fixture: odd,
            edit: st_edit(|b| {
                let (h, start) = st_header(b);
                let s = h["model.layers.1.mlp.up_proj.weight"]["data_offsets"][0]
                    .as_u64()
                    .expect("offset") as usize;
                b[start + s + 10..start + s + 12].copy_from_slice(&0x7e00u16.to_le_bytes());
            }),
            needle: "up_proj",
        },
        Case {
            name: "st_inf_weight",
            fixture: odd,
            edit: st_edit(|b| {
                let (h, start) = st_header(b);
                let s = h["model.embed_tokens.weight"]["data_offsets"][0]
                    .as_u64()
                    .expect("offset") as usize;
                b[start + s + 100..start + s + 102].copy_from_slice(&0xfc00u16.to_le_bytes());
            }),
            needle: "embed_tokens",
        },
        Case {
            name: "bf16_inf_weight_qwen1",
            fixture: "qwen1",
            edit: st_edit(|b| {
                let (h, start) = st_header(b);
                let s = h["transformer.h.1.mlp.w2.weight"]["data_offsets"][0]
                    .as_u64()
                    .expect("offset") as usize;
                b[start + s + 64..start + s + 66].copy_from_slice(&0x7f80u16.to_le_bytes());
            }),
            needle: "w2",
        },
        Case {
            name: "config_missing",
            fixture: odd,
            edit: Box::new(|d: &Path| std::fs::remove_file(d.join("config.json")).expect("rm")),
            needle: "config.json",
        },
        Case {
            name: "config_truncated",
            fixture: odd,
            edit: Box::new(|d: &Path| {
                let b = std::fs::read(d.join("config.json")).expect("read");
                std::fs::write(d.join("config.json"), &b[..b.len() / 2]).expect("write");
            }),
            needle: "config.json",
        },
        Case {
            name: "config_not_object",
            fixture: odd,
            edit: Box::new(|d: &Path| {
                std::fs::write(d.join("config.json"), "[42]").expect("write")
            }),
            needle: "config.json",
        },
        Case {
            name: "arch_llama",
            fixture: odd,
            edit: config_edit(|v| v["architectures"] = json!(["LlamaForCausalLM"])),
            needle: "LlamaForCausalLM",
        },
        Case {
            name: "arch_empty",
            fixture: odd,
            edit: config_edit(|v| v["architectures"] = json!([])),
            needle: "architectures",
        },
        Case {
            name: "arch_not_string",
            fixture: odd,
            edit: config_edit(|v| v["architectures"] = json!([7])),
            needle: "architectures",
        },
        Case {
            name: "hidden_size_wrong",
            fixture: odd,
            edit: config_edit(|v| v["hidden_size"] = json!(80)),
            needle: "",
        },
        Case {
            name: "vocab_size_u32_max",
            fixture: odd,
            edit: config_edit(|v| v["vocab_size"] = json!(4294967295u64)),
            needle: "",
        },
        Case {
            name: "vocab_size_2p64",
            fixture: odd,
            edit: config_edit(|v| v["vocab_size"] = json!(18446744073709551615u64)),
            needle: "vocab_size",
        },
        Case {
            name: "layers_million",
            fixture: odd,
            edit: config_edit(|v| v["num_hidden_layers"] = json!(1_000_000)),
            needle: "",
        },
        Case {
            name: "layers_zero",
            fixture: odd,
            edit: config_edit(|v| v["num_hidden_layers"] = json!(0)),
            needle: "num_hidden_layers",
        },
        Case {
            name: "heads_not_dividing",
            fixture: odd,
            edit: config_edit(|v| v["num_key_value_heads"] = json!(3)),
            needle: "num_key_value_heads",
        },
        Case {
            name: "hidden_size_float",
            fixture: odd,
            edit: config_edit(|v| v["hidden_size"] = json!(40.5)),
            needle: "hidden_size",
        },
        Case {
            name: "rms_eps_overflows_f32",
            fixture: odd,
            edit: config_edit(|v| v["rms_norm_eps"] = json!(1e300)),
            needle: "rms_norm_eps",
        },
        Case {
            name: "rms_eps_negative",
            fixture: odd,
            edit: config_edit(|v| v["rms_norm_eps"] = json!(-1e-5)),
            needle: "rms_norm_eps",
        },
        Case {
            name: "rope_theta_negative",
            fixture: odd,
            edit: config_edit(|v| v["rope_theta"] = json!(-10000.0)),
            needle: "rope_theta",
        },
        Case {
            name: "rope_scaling_yarn",
            fixture: odd,
            edit: config_edit(|v| v["rope_scaling"] = json!({"type": "yarn", "factor": 4.0})),
            needle: "yarn",
        },
        Case {
            name: "tokenizer_missing",
            fixture: odd,
            edit: Box::new(|d: &Path| std::fs::remove_file(d.join("tokenizer.json")).expect("rm")),
            needle: "tokenizer.json",
        },
        Case {
            name: "tokenizer_truncated",
            fixture: odd,
            edit: Box::new(|d: &Path| {
                let b = std::fs::read(d.join("tokenizer.json")).expect("read");
                std::fs::write(d.join("tokenizer.json"), &b[..b.len() - 10]).expect("write");
            }),
            needle: "tokenizer.json",
        },
        Case {
            name: "tokenizer_id_past_vocab",
            fixture: odd,
            edit: Box::new(|d: &Path| {
                edit_json(&d.join("tokenizer.json"), |v| {
                    v["added_tokens"][0]["id"] = json!(100000);
                })
            }),
            needle: "",
        },
        Case {
            name: "tiktoken_bad_base64",
            fixture: "qwen1",
            edit: Box::new(|d: &Path| {
                let t = std::fs::read_to_string(d.join("qwen.tiktoken")).expect("read");
                std::fs::write(d.join("qwen.tiktoken"), format!("{t}!!!notbase64 400\n"))
                    .expect("write");
            }),
            needle: "qwen.tiktoken",
        },
        Case {
            name: "tiktoken_rank_past_vocab",
            fixture: "qwen1",
            edit: Box::new(|d: &Path| {
                let t = std::fs::read_to_string(d.join("qwen.tiktoken")).expect("read");
                std::fs::write(d.join("qwen.tiktoken"), format!("{t}eHl6 4294967295\n"))
                    .expect("write");
            }),
            needle: "qwen.tiktoken",
        },
        Case {
            name: "missing_shard",
            fixture: "qwen2_gqa3_sharded",
            edit: Box::new(|d: &Path| {
                std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).expect("rm")
            }),
            needle: "model-00002-of-00002.safetensors",
        },
        Case {
            name: "shard_path_traversal",
            fixture: "qwen2_gqa3_sharded",
            edit: Box::new(|d: &Path| {
                edit_json(&d.join("model.safetensors.index.json"), |v| {
                    let m = v["weight_map"].as_object_mut().expect("weight_map");
                    let k = m.keys().next().expect("a tensor").clone();
                    m.insert(k, json!("../../../etc/passwd"));
                })
            }),
            needle: "passwd",
        },
        Case {
            name: "index_lies_about_shard",
            fixture: "qwen2_gqa3_sharded",
            edit: Box::new(|d: &Path| {
                edit_json(&d.join("model.safetensors.index.json"), |v| {
                    let m = v["weight_map"].as_object_mut().expect("weight_map");
                    let (k, f) = m
                        .iter()
                        .find(|(_, f)| f.as_str() == Some("model-00001-of-00002.safetensors"))
                        .map(|(k, f)| (k.clone(), f.clone()))
                        .expect("shard 1 tensor");
                    let _ = f;
                    m.insert(k, json!("model-00002-of-00002.safetensors"));
                })
            }),
            needle: "",
        },
        Case {
            name: "index_weight_map_missing",
            fixture: "qwen2_gqa3_sharded",
            edit: Box::new(|d: &Path| {
                edit_json(&d.join("model.safetensors.index.json"), |v| {
                    v.as_object_mut().expect("object").remove("weight_map");
                })
            }),
            needle: "weight_map",
        },
        Case {
            name: "shard_truncated",
            fixture: "qwen2_gqa3_sharded",
            edit: Box::new(|d: &Path| {
                let p = d.join("model-00001-of-00002.safetensors");
                let b = std::fs::read(&p).expect("read");
                std::fs::write(&p, &b[..b.len() / 3]).expect("write");
            }),
            needle: "model-00001-of-00002.safetensors",
        },
    ]
}

#[test]
fn convert_refuses_hostile_folders() {
    let dir = scratch("convert_refuses_hostile_folders");
    let cases = convert_cases();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    each_case(&cases, |case| {
        let input = dir.join(case.name).join("hf");
        copy_fixture(case.fixture, &input);
        (case.edit)(&input);
        let out_dir = dir.join(case.name).join("out");
        let e = convert_refused(&input, &out_dir, case.name);
        assert!(
            e.contains(case.needle),
            "{}: error does not mention {:?}: {e}",
            case.name,
            case.needle
        );
    });

    // The valid fixture still converts, the file loads and gives logits.
    let out = dir.join("valid").join("model.gguf");
    std::fs::create_dir_all(out.parent().expect("parent")).expect("mkdir");
    let o = run(
        &qwen_convert(),
        &[
            "-i",
            p(&fixture("qwen2_odd")),
            "-o",
            p(&out),
            "-t",
            "q8_0",
            "-q",
        ],
        b"",
    );
    assert_ok(&o, "qwen-convert of the valid fixture");
    assert_eq!(
        list(out.parent().expect("parent")),
        vec!["model.gguf".to_string()]
    );
    let npy = dir.join("valid").join("logits.npy");
    let o = run(
        &qwen_run(),
        &[
            "-f",
            p(&out),
            "--token-ids",
            "1,2,3",
            "--dump-logits",
            p(&npy),
        ],
        b"",
    );
    assert_ok(&o, "qwen-run on the converted fixture");
}

#[test]
fn convert_failure_keeps_an_existing_output() {
    // A failed conversion must not replace (or delete) a file already at OUT.
    let dir = scratch("convert_failure_keeps_an_existing_output");
    let input = dir.join("hf");
    copy_fixture("qwen2_odd", &input);
    std::fs::write(input.join("model.safetensors"), b"short").expect("write");
    let out = dir.join("model.gguf");
    std::fs::write(&out, b"previous contents").expect("write");
    let o = run(
        &qwen_convert(),
        &["-i", p(&input), "-o", p(&out), "-q"],
        b"",
    );
    assert_refused(&o, "convert over an existing file");
    assert_eq!(std::fs::read(&out).expect("read"), b"previous contents");
    assert_eq!(list(&dir), vec!["hf".to_string(), "model.gguf".to_string()]);
}

#[test]
fn convert_refuses_to_overwrite_its_input() {
    // -o naming a file of the input folder would replace the checkpoint with
    // the GGUF (the rename succeeds while the old file is still mapped).
    let dir = scratch("convert_refuses_to_overwrite_its_input");
    let snapshot = |d: &Path| -> Vec<(String, Vec<u8>)> {
        list(d)
            .into_iter()
            .map(|n| {
                let b = std::fs::read(d.join(&n)).expect("read");
                (n, b)
            })
            .collect()
    };
    each_case(
        ["model.safetensors", "config.json", "tokenizer.json"],
        |name| {
            let input = dir.join(name).join("hf");
            copy_fixture("qwen2_odd", &input);
            let before = snapshot(&input);
            let out = input.join(name);
            let o = run(
                &qwen_convert(),
                &["-i", p(&input), "-o", p(&out), "-q"],
                b"",
            );
            assert_refused(&o, &format!("-o {name} inside the input folder"));
            assert!(
                snapshot(&input) == before,
                "-o {name}: the input folder changed"
            );
        },
    );
}

#[test]
fn convert_bad_arguments() {
    let dir = scratch("convert_bad_arguments");
    let input = fixture("qwen2_odd");
    let out = dir.join("m.gguf");
    for (name, args) in [
        (
            "type_unknown",
            vec!["-i", p(&input), "-o", p(&out), "-t", "q3_x"],
        ),
        (
            "input_missing",
            vec!["-i", p(&dir.join("nope")), "-o", p(&out)],
        ),
        (
            "input_is_file",
            vec!["-i", p(&input.join("config.json")), "-o", p(&out)],
        ),
        (
            "output_folder_missing",
            vec!["-i", p(&input), "-o", p(&dir.join("no/such/dir/m.gguf"))],
        ),
        ("output_is_folder", vec!["-i", p(&input), "-o", p(&dir)]),
    ] {
        let o = run(&qwen_convert(), &args, b"");
        assert_refused(&o, name);
        assert!(!out.exists(), "{name}: output written");
    }
}
