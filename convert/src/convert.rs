//! The conversion pipeline: read and check everything, declare every tensor,
//! write the header, then stream tensor by tensor and, within a tensor, chunk
//! by chunk of whole rows (read -> f32 -> quantize -> write -> drop), so peak
//! memory is a few MB of work buffers plus the header, not the model.
//!
//! The file appears atomically: we write `.NAME.tmp-PID` in the output folder,
//! fsync it and rename it over NAME; on any error (or cancellation) the
//! temporary file is removed and NAME is left as it was.

use crate::arch::{Arch, Hparams, TensorSpec};
use crate::hf::{Checkpoint, Config, TensorEntry};
use crate::meta::{Meta, MetaValue};
use crate::plan::{self, ErrorStats, TensorReport, TypePolicy};
use crate::tokenizer::Vocab;
use crate::{bail, Error, Result};
use quant_formats::gguf::{GgufWriter, Value};
use quant_formats::{reference, GgmlType};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Elements converted per step (4 MB of f32).
const CHUNK_ELEMS: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Options {
    pub input: PathBuf,
    pub output: PathBuf,
    pub policy: TypePolicy,
    /// Dequantize every chunk again to measure the RMSE (for `-v`).
    pub measure_error: bool,
}

/// Callbacks for the binary's progress bar and `-v` lines (the library prints nothing).
pub trait Progress {
    fn begin(&mut self, _total_elements: u64) {}
    fn tensor_start(&mut self, _name: &str) {}
    fn advance(&mut self, _elements: u64) {}
    fn tensor_done(&mut self, _report: &TensorReport) {}
}

/// No-op progress.
pub struct Silent;
impl Progress for Silent {}

#[derive(Debug, Clone)]
pub struct Summary {
    pub arch: Arch,
    /// config.json `dtype` / `torch_dtype`, as declared.
    pub config_dtype: Option<String>,
    pub hparams: Hparams,
    pub n_bytes: u64,
    pub reports: Vec<TensorReport>,
}

/// One planned tensor.
struct Item<'a> {
    spec: TensorSpec,
    src: &'a TensorEntry,
    dtype: GgmlType,
    n_bytes: usize,
}

/// Removes the temporary file unless disarmed.
struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(format!("{what} {}: {e}", path.display()))
}

/// Temporary file name for `out`: `.NAME.tmp-PID` beside it.
pub fn temp_path(out: &Path) -> Result<PathBuf> {
    let Some(name) = out.file_name().and_then(|n| n.to_str()) else {
        bail!("{}: output must name a file", out.display());
    };
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(parent.join(format!(".{name}.tmp-{}", std::process::id())))
}

pub fn convert(
    opts: &Options,
    progress: &mut dyn Progress,
    cancel: &AtomicBool,
) -> Result<Summary> {
    let dir = &opts.input;
    if !dir.is_dir() {
        bail!(
            "{}: not a folder (expected a Hugging Face model folder)",
            dir.display()
        );
    }
    if opts.output.is_dir() {
        bail!(
            "{}: output is a folder; give a file name",
            opts.output.display()
        );
    }
    // The file appears by renaming a temporary one over the output path: that
    // would replace a device (/dev/null), a FIFO or a symlink instead of writing
    // through it. Only a missing path or a regular file is a valid output.
    if let Ok(meta) = std::fs::symlink_metadata(&opts.output) {
        if !meta.file_type().is_file() {
            bail!(
                "{}: output exists and is not a regular file (a symlink, device or pipe); give a file path",
                opts.output.display()
            );
        }
    }
    let tmp = temp_path(&opts.output)?;
    if let Some(parent) = tmp.parent() {
        if !parent.is_dir() {
            bail!("{}: output folder does not exist", parent.display());
        }
    }

    // 1. Read and check everything before creating any file.
    let cfg = Config::load(dir)?;
    let config_dtype = cfg.dtype()?.map(str::to_string);
    let hp = Hparams::from_config(&cfg)?;
    let ck = Checkpoint::open(dir)?;
    let specs = crate::arch::tensor_specs(&hp, &ck)?;
    let vocab = Vocab::load(dir, &hp, &cfg)?;
    refuse_overwriting_inputs(dir, &ck, &opts.output)?;

    let mut items = Vec::with_capacity(specs.len());
    for spec in specs {
        let Some(src) = ck.get(&spec.hf) else {
            bail!("checkpoint: tensor {:?} is missing", spec.hf);
        };
        let row_len = spec.shape.last().copied().unwrap_or(1);
        let wanted = opts.policy.wanted(&spec, hp.n_layer);
        let dtype = plan::choose(wanted, row_len, || max_abs(&ck, src, cancel))?;
        let n = spec.n_elements() as u64;
        let Some(n_bytes) = dtype.row_bytes(n).and_then(|b| usize::try_from(b).ok()) else {
            bail!("tensor {}: {n} elements do not fit type {dtype}", spec.gguf);
        };
        items.push(Item {
            spec,
            src,
            dtype,
            n_bytes,
        });
    }

    let mut meta = Meta::default();
    let name = model_name(&cfg, dir);
    meta.push(
        "general.architecture",
        MetaValue::Str(hp.arch.gguf_name().into()),
    );
    meta.push("general.name", MetaValue::Str(name));
    meta.push(
        "general.file_type",
        MetaValue::U32(plan::llama_ftype(opts.policy.base)),
    );
    meta.push("general.quantization_version", MetaValue::U32(2));
    meta.push("general.alignment", MetaValue::U32(32));
    hp.metadata(&mut meta);
    vocab.into_metadata(&mut meta);

    let mut w = GgufWriter::new();
    for (k, v) in meta.entries {
        w.add(k, to_value(v));
    }
    for it in &items {
        w.add_tensor(&it.spec.gguf, &it.spec.gguf_dims(), it.dtype)
            .map_err(|e| Error::new(format!("tensor {}: {e}", it.spec.gguf)))?;
    }

    // 2. Stream into the temporary file.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| {
            Error::new(format!(
                "cannot write output {}: creating {} failed: {e}",
                opts.output.display(),
                tmp.display()
            ))
        })?;
    let mut guard = TempGuard {
        path: tmp.clone(),
        armed: true,
    };
    let out_err = |e: &dyn std::fmt::Display| Error::new(format!("writing {}: {e}", tmp.display()));

    let total: u64 = items.iter().map(|i| i.spec.n_elements() as u64).sum();
    progress.begin(total);
    let mut stream = w
        .start(BufWriter::with_capacity(8 << 20, file))
        .map_err(|e| out_err(&e))?;
    let mut reports = Vec::with_capacity(items.len());
    let mut work = Work::default();
    let mut written = 0u64;
    for it in &items {
        progress.tensor_start(&it.spec.gguf);
        let name = it.spec.gguf.as_str();
        let mut sink = |bytes: &[u8]| {
            stream
                .write_tensor_chunk(name, bytes)
                .map_err(|e| out_err(&e))
        };
        let error = convert_tensor(
            &ck,
            it,
            opts.measure_error,
            &mut work,
            &mut sink,
            progress,
            cancel,
        )?;
        written += it.n_bytes as u64;
        let report = TensorReport {
            name: it.spec.gguf.clone(),
            dims: it.spec.gguf_dims(),
            dtype: it.dtype,
            n_bytes: it.n_bytes as u64,
            error,
        };
        progress.tensor_done(&report);
        reports.push(report);
    }
    let buf = stream.finish().map_err(|e| out_err(&e))?;
    let file = buf
        .into_inner()
        .map_err(|e| out_err(&e.error().to_string()))?;
    file.sync_all().map_err(|e| io_err("fsync", &tmp, e))?;
    drop(file);
    if cancel.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    std::fs::rename(&tmp, &opts.output).map_err(|e| {
        Error::new(format!(
            "cannot rename {} to {}: {e}",
            tmp.display(),
            opts.output.display()
        ))
    })?;
    guard.armed = false;
    // Make the rename durable; failure here does not lose the file.
    if let Some(parent) = tmp.parent() {
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
    }
    let n_bytes = std::fs::metadata(&opts.output)
        .map(|m| m.len())
        .unwrap_or(written);
    Ok(Summary {
        arch: hp.arch,
        config_dtype,
        hparams: hp,
        n_bytes,
        reports,
    })
}

/// Files of the input folder we read (or may read).
const INPUT_FILES: [&str; 9] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "qwen.tiktoken",
    "chat_template.jinja",
    "chat_template.json",
    "model.safetensors.index.json",
    "model.safetensors",
];

/// The rename would replace an input file (even one still mapped) with the
/// output: refuse when OUT is the same file as any input, by path or by
/// device + inode (hard links, symlinks, `..` spellings).
fn refuse_overwriting_inputs(dir: &Path, ck: &Checkpoint, out: &Path) -> Result<()> {
    let Ok(out_meta) = std::fs::metadata(out) else {
        return Ok(()); // a file that does not exist yet is no input
    };
    let inputs = INPUT_FILES
        .iter()
        .map(|n| dir.join(n))
        .chain(ck.shard_paths().map(Path::to_path_buf));
    for input in inputs {
        let Ok(in_meta) = std::fs::metadata(&input) else {
            continue;
        };
        if same_file(&out_meta, &in_meta) {
            bail!(
                "{}: output is the input file {}; choose another output path",
                out.display(),
                input.display()
            );
        }
    }
    Ok(())
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    // Without inode numbers: same size and modification time is the best cheap guess.
    a.len() == b.len() && a.modified().ok() == b.modified().ok()
}

/// Largest |x| of a tensor (only for tensors that may fall back to f16).
fn max_abs(ck: &Checkpoint, t: &TensorEntry, cancel: &AtomicBool) -> Result<f32> {
    let n = t.n_elements();
    let mut buf = vec![0f32; CHUNK_ELEMS.min(n)];
    let mut m = 0f32;
    let mut i = 0;
    while i < n {
        if cancel.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let len = CHUNK_ELEMS.min(n - i);
        ck.read_f32(t, i, &mut buf[..len])?;
        ck.release_elements(t, i, len);
        m = buf[..len].iter().fold(m, |m, x| m.max(x.abs()));
        i += len;
    }
    Ok(m)
}

/// Buffers reused across tensors: one chunk of f32 values, its quantized
/// bytes, and (for `-v`) its dequantized copy.
#[derive(Default)]
struct Work {
    values: Vec<f32>,
    quant: Vec<u8>,
    check: Vec<f32>,
}

/// Convert one tensor chunk by chunk (whole rows, ~CHUNK_ELEMS values each),
/// handing each chunk's bytes to `sink` as soon as it is quantized.
fn convert_tensor(
    ck: &Checkpoint,
    it: &Item<'_>,
    measure: bool,
    w: &mut Work,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    progress: &mut dyn Progress,
    cancel: &AtomicBool,
) -> Result<Option<ErrorStats>> {
    let n = it.spec.n_elements();
    let row_len = it.spec.shape.last().copied().unwrap_or(1).max(1);
    let rows_per_chunk = (CHUNK_ELEMS / row_len).max(1);
    let step = rows_per_chunk * row_len;
    let mut stats = measure.then(ErrorStats::default);
    if n == 0 {
        sink(&[])?;
    }
    let mut i = 0;
    let mut out_pos = 0;
    while i < n {
        if cancel.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let len = step.min(n - i);
        w.values.resize(len, 0.0);
        ck.read_f32(it.src, i, &mut w.values)?;
        ck.release_elements(it.src, i, len);
        if it.dtype == GgmlType::F16 {
            let lim = half::f16::MAX.to_f32();
            if let Some(j) = w.values.iter().position(|x| x.abs() > lim) {
                bail!(
                    "{}: tensor {:?} value {} at element {} overflows f16 (max {lim}); use -t bf16 or -t f32",
                    ck.shard_path(it.src).display(),
                    it.src.name,
                    w.values[j],
                    i + j
                );
            }
        }
        let nb = it
            .dtype
            .row_bytes(len as u64)
            .and_then(|b| usize::try_from(b).ok())
            .filter(|&b| out_pos + b <= it.n_bytes);
        let Some(nb) = nb else {
            bail!(
                "internal: chunk of {len} values of {} does not fit tensor {}",
                it.dtype,
                it.spec.gguf
            );
        };
        w.quant.resize(nb, 0);
        quantize_rows(it.dtype, row_len, &w.values, &mut w.quant)
            .map_err(|e| Error::new(format!("tensor {}: {e}", it.spec.gguf)))?;
        if let Some(s) = stats.as_mut() {
            w.check.resize(len, 0.0);
            reference::dequantize(it.dtype, &w.quant, &mut w.check)
                .map_err(|e| Error::new(format!("tensor {}: {e}", it.spec.gguf)))?;
            s.add(&w.values, &w.check);
        }
        sink(&w.quant)?;
        out_pos += nb;
        i += len;
        progress.advance(len as u64);
    }
    Ok(stats)
}

/// Quantize whole rows, split over the rayon pool in groups of rows. Rows are
/// independent, so the bytes equal a serial `quantize_into` on any machine.
fn quantize_rows(
    dtype: GgmlType,
    row_len: usize,
    x: &[f32],
    out: &mut [u8],
) -> std::result::Result<(), quant_formats::QuantError> {
    use rayon::prelude::*;
    const PAR_ELEMS: usize = 1 << 16;
    let rows_per_task = (PAR_ELEMS / row_len).max(1);
    let row_bytes = dtype
        .row_bytes(row_len as u64)
        .and_then(|b| usize::try_from(b).ok());
    match row_bytes {
        Some(rb) if x.len() > PAR_ELEMS && rb * (x.len() / row_len) == out.len() => x
            .par_chunks(rows_per_task * row_len)
            .zip(out.par_chunks_mut(rows_per_task * rb))
            .try_for_each(|(xs, os)| reference::quantize_into(dtype, xs, os)),
        _ => reference::quantize_into(dtype, x, out),
    }
}

fn model_name(cfg: &Config, dir: &Path) -> String {
    let from_cfg = cfg
        .opt_str("_name_or_path")
        .ok()
        .flatten()
        .and_then(|s| s.trim_end_matches('/').rsplit('/').next())
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    from_cfg.unwrap_or_else(|| {
        std::fs::canonicalize(dir)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into())
    })
}

fn to_value(v: MetaValue) -> Value {
    match v {
        MetaValue::U32(x) => Value::from(x),
        MetaValue::I32(x) => Value::from(x),
        MetaValue::F32(x) => Value::from(x),
        MetaValue::Bool(x) => Value::from(x),
        MetaValue::Str(s) => Value::from(s),
        MetaValue::ArrStr(a) => Value::from(a),
        MetaValue::ArrI32(a) => Value::from(a),
        MetaValue::ArrU32(a) => Value::from(a),
    }
}
