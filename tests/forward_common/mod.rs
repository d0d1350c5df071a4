//! Shared by the forward_*, cli_* and smollm2_* tests: paths to the binaries,
//! running them, .npy and logits statistics, and tiny GGUF models built in memory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use quant_formats::gguf::{GgufWriter, Value};
use quant_formats::GgmlType;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn qwen_run() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_qwen-run"))
}

/// A scratch directory under target/ for this test binary.
pub fn scratch(name: &str) -> PathBuf {
    let dir = target_dir().join("test-scratch").join(name);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// target/<profile>/ : the test executable lives in target/<profile>/deps/.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(|d| d.parent())
        .map(Path::to_path_buf)
        .expect("test executable is not inside target/<profile>/deps")
}

/// The qwen-convert binary of this workspace, built on first use (it belongs to
/// another package, so CARGO_BIN_EXE_ does not cover it).
pub fn qwen_convert() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(root()).args([
            "build",
            "-q",
            "-p",
            "qwen-convert",
            "--bin",
            "qwen-convert",
        ]);
        // Build where this test's own binaries live (debug or release).
        let profile_dir = target_dir();
        if profile_dir.file_name().and_then(|s| s.to_str()) == Some("release") {
            cmd.arg("--release");
        }
        if let Some(t) = profile_dir.parent() {
            cmd.arg("--target-dir").arg(t);
        }
        let st = cmd
            .status()
            .expect("cannot run cargo to build qwen-convert");
        assert!(st.success(), "cargo build -p qwen-convert failed");
        let exe = profile_dir.join(format!("qwen-convert{}", std::env::consts::EXE_SUFFIX));
        assert!(exe.exists(), "qwen-convert not found at {}", exe.display());
        exe
    })
    .clone()
}

pub fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

pub fn run_stdin(bin: &Path, args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success, showing stderr otherwise.
pub fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({:?}): {}",
        o.status.code(),
        stderr(o)
    );
}

/// Converts an HF folder with qwen-convert into `out` of type `ty` (skipped when
/// `out` is newer than every file of the folder and than qwen-convert itself).
pub fn convert(hf: &Path, out: &Path, ty: &str) {
    let conv = qwen_convert();
    let newest_src = std::fs::read_dir(hf)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", hf.display()))
        .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
        .chain(std::fs::metadata(&conv).and_then(|m| m.modified()).ok())
        .max();
    if let (Ok(m), Some(src)) = (
        std::fs::metadata(out).and_then(|m| m.modified()),
        newest_src,
    ) {
        if m > src {
            return;
        }
    }
    let o = run(
        &conv,
        &[
            "-i",
            hf.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "-t",
            ty,
        ],
    );
    ok(&o, &format!("qwen-convert -i {} -t {ty}", hf.display()));
}

/// `qwen-run -f model --token-ids … --dump-logits`: returns [n_ids, n_vocab].
pub fn dump_logits(
    model: &Path,
    ids: &[u32],
    out: &Path,
    extra: &[&str],
) -> (Vec<usize>, Vec<f32>) {
    let ids_s: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let ids_s = ids_s.join(",");
    let mut args = vec![
        "-f",
        model.to_str().unwrap(),
        "--token-ids",
        &ids_s,
        "--dump-logits",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = run(&qwen_run(), &args);
    ok(
        &o,
        &format!("qwen-run --dump-logits on {}", model.display()),
    );
    read_npy(out)
}

pub fn read_npy(p: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    qwen::npy::read_f32(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn read_ids(p: &Path) -> Vec<u32> {
    let s =
        std::fs::read_to_string(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// log-softmax of one row, in f64.
pub fn log_softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() + m;
    x.iter().map(|&v| v as f64 - lse).collect()
}

/// KL(p || q) of the softmaxes of two logit rows.
pub fn kl(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let lp = log_softmax(p_logits);
    let lq = log_softmax(q_logits);
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
}

pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Mean KL(ref || other) over rows and the fraction of rows with the same argmax.
pub fn kl_and_top1(reference: &[f32], other: &[f32], n_vocab: usize) -> (f64, f64) {
    let rows = reference.len() / n_vocab;
    let (mut kls, mut same) = (0.0, 0usize);
    for r in 0..rows {
        let a = &reference[r * n_vocab..(r + 1) * n_vocab];
        let b = &other[r * n_vocab..(r + 1) * n_vocab];
        kls += kl(a, b);
        same += (argmax(a) == argmax(b)) as usize;
    }
    (kls / rows as f64, same as f64 / rows as f64)
}

// ---------------------------------------------------------------------------
// Tiny models written with quant_formats' GgufWriter.

/// A tiny random model; fields are the knobs the tests turn.
#[derive(Clone)]
pub struct Tiny {
    pub arch: &'static str,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_layer: usize,
    pub ctx: u32,
    pub tied: bool,
    pub biases: bool,
    pub seed: u64,
    /// Metadata keys to leave out.
    pub skip_keys: Vec<String>,
    /// Tensors written in another type (bytes are random).
    pub dtype_override: Vec<(String, GgmlType)>,
    /// Tensors written with other dims (f32).
    pub dims_override: Vec<(String, Vec<u64>)>,
    /// A tensor that gets one NaN.
    pub nan_in: Option<String>,
    /// Extra metadata.
    pub extra: Vec<(String, Value)>,
}

impl Tiny {
    pub fn new(arch: &'static str) -> Self {
        Tiny {
            arch,
            n_vocab: 96,
            n_embd: 64,
            n_head: 4,
            n_kv: 2,
            head_dim: 16,
            n_ff: 96,
            n_layer: 2,
            ctx: 256,
            tied: false,
            biases: arch == "qwen2" || arch == "qwen",
            seed: 7,
            skip_keys: vec![],
            dtype_override: vec![],
            dims_override: vec![],
            nan_in: None,
            extra: vec![],
        }
    }

    /// (name, dims in ggml order, is_norm)
    fn tensors(&self) -> Vec<(String, Vec<u64>, bool)> {
        let (e, v, ff) = (self.n_embd as u64, self.n_vocab as u64, self.n_ff as u64);
        let qd = (self.n_head * self.head_dim) as u64;
        let kvd = (self.n_kv * self.head_dim) as u64;
        let mut t = vec![("token_embd.weight".to_string(), vec![e, v], false)];
        for il in 0..self.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}");
            t.push((n("attn_norm.weight"), vec![e], true));
            if self.arch == "qwen" {
                t.push((n("attn_qkv.weight"), vec![e, qd + 2 * kvd], false));
                if self.biases {
                    t.push((n("attn_qkv.bias"), vec![qd + 2 * kvd], false));
                }
            } else {
                t.push((n("attn_q.weight"), vec![e, qd], false));
                t.push((n("attn_k.weight"), vec![e, kvd], false));
                t.push((n("attn_v.weight"), vec![e, kvd], false));
                if self.biases {
                    t.push((n("attn_q.bias"), vec![qd], false));
                    t.push((n("attn_k.bias"), vec![kvd], false));
                    t.push((n("attn_v.bias"), vec![kvd], false));
                }
            }
            if self.arch == "qwen3" {
                t.push((n("attn_q_norm.weight"), vec![self.head_dim as u64], true));
                t.push((n("attn_k_norm.weight"), vec![self.head_dim as u64], true));
            }
            t.push((n("attn_output.weight"), vec![qd, e], false));
            t.push((n("ffn_norm.weight"), vec![e], true));
            t.push((n("ffn_gate.weight"), vec![e, ff], false));
            t.push((n("ffn_up.weight"), vec![e, ff], false));
            t.push((n("ffn_down.weight"), vec![ff, e], false));
        }
        t.push(("output_norm.weight".to_string(), vec![e], true));
        if !self.tied {
            t.push(("output.weight".to_string(), vec![e, v], false));
        }
        t
    }

    pub fn build(&self) -> Vec<u8> {
        let a = self.arch;
        let mut w = GgufWriter::new();
        let mut kv: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::from(a)),
            ("general.name".into(), Value::from("tiny")),
            (format!("{a}.context_length"), Value::U32(self.ctx)),
            (
                format!("{a}.embedding_length"),
                Value::U32(self.n_embd as u32),
            ),
            (format!("{a}.block_count"), Value::U32(self.n_layer as u32)),
            (
                format!("{a}.feed_forward_length"),
                Value::U32(self.n_ff as u32),
            ),
            (
                format!("{a}.attention.head_count"),
                Value::U32(self.n_head as u32),
            ),
            (
                format!("{a}.attention.head_count_kv"),
                Value::U32(self.n_kv as u32),
            ),
            (format!("{a}.rope.freq_base"), Value::F32(10000.0)),
            (
                format!("{a}.attention.layer_norm_rms_epsilon"),
                Value::F32(1e-6),
            ),
            (
                format!("{a}.attention.key_length"),
                Value::U32(self.head_dim as u32),
            ),
            (
                format!("{a}.attention.value_length"),
                Value::U32(self.head_dim as u32),
            ),
        ];
        kv.retain(|(k, _)| !self.skip_keys.contains(k));
        kv.extend(self.extra.iter().cloned());
        for (k, v) in kv {
            w.add(k, v);
        }
        let mut rng = self.seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        let mut next = move || {
            // xorshift64*
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            let r = rng.wrapping_mul(0x2545F4914F6CDD1D);
            (r >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut datas = Vec::new();
        for (name, dims, is_norm) in self.tensors() {
            let dims = self
                .dims_override
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, d)| d.clone())
                .unwrap_or(dims);
            let dtype = self
                .dtype_override
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| *t)
                .unwrap_or(GgmlType::F32);
            let n: u64 = dims.iter().product();
            let bytes = if dtype == GgmlType::F32 {
                let scale = 2.0 / (dims[0] as f32).sqrt();
                let mut vals: Vec<f32> = (0..n)
                    .map(|_| {
                        if is_norm {
                            1.0 + 0.4 * next()
                        } else {
                            scale * next()
                        }
                    })
                    .collect();
                if self.nan_in.as_deref() == Some(name.as_str()) {
                    vals[n as usize / 2] = f32::NAN;
                }
                vals.iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<u8>>()
            } else {
                let nb = (n as usize / dtype.block_size()) * dtype.type_size();
                (0..nb).map(|i| (i * 37 % 251) as u8).collect()
            };
            w.add_tensor(&name, &dims, dtype).expect("add_tensor");
            datas.push((name, bytes));
        }
        let mut s = w.start(Vec::new()).expect("gguf start");
        for (name, bytes) in &datas {
            s.write_tensor(name, bytes).expect("write_tensor");
        }
        s.finish().expect("gguf finish")
    }

    /// Writes the model to `dir/name.gguf` and returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(format!("{name}.gguf"));
        std::fs::write(&p, self.build())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
        p
    }
}
