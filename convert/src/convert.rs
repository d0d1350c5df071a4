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
        if let Some(k) = overflowed_element(it.dtype, &w.values, &w.quant) {
            let advice = match it.dtype {
                GgmlType::Bf16 => format!(
                    "overflows bf16 (max {:e}); use -t f32",
                    half::bf16::MAX.to_f32()
                ),
                t => format!(
                    "overflows the f16 block scale of {t} (max {}); use -t bf16 or -t f32",
                    half::f16::MAX
                ),
            };
            bail!(
                "{}: tensor {:?} value {} at element {} {advice}",
                ck.shard_path(it.src).display(),
                it.src.name,
                w.values[k],
                i + k
            );
        }
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

/// Byte offsets, inside one block, of the f16 values a quantizer derives from the
/// block's magnitude: the scale `d`, the min `m` / `dmin` (q4_1, q5_1, K types) and
/// q8_1's sum `s`. A block too large for f16 (e.g. q4_0 when max |x| > 8 * 65504,
/// q8_0 when > 127 * 65504) gets an infinite one, which dequantizes to Inf/NaN.
fn f16_fields(t: GgmlType) -> &'static [usize] {
    use quant_formats::block::*;
    use std::mem::offset_of;
    const Q4_0: &[usize] = &[offset_of!(BlockQ4_0, d)];
    const Q4_1: &[usize] = &[offset_of!(BlockQ4_1, d), offset_of!(BlockQ4_1, m)];
    const Q5_0: &[usize] = &[offset_of!(BlockQ5_0, d)];
    const Q5_1: &[usize] = &[offset_of!(BlockQ5_1, d), offset_of!(BlockQ5_1, m)];
    const Q8_0: &[usize] = &[offset_of!(BlockQ8_0, d)];
    const Q8_1: &[usize] = &[offset_of!(BlockQ8_1, d), offset_of!(BlockQ8_1, s)];
    const Q2K: &[usize] = &[offset_of!(BlockQ2K, d), offset_of!(BlockQ2K, dmin)];
    const Q3K: &[usize] = &[offset_of!(BlockQ3K, d)];
    const Q4K: &[usize] = &[offset_of!(BlockQ4K, d), offset_of!(BlockQ4K, dmin)];
    const Q5K: &[usize] = &[offset_of!(BlockQ5K, d), offset_of!(BlockQ5K, dmin)];
    const Q6K: &[usize] = &[offset_of!(BlockQ6K, d)];
    match t {
        GgmlType::F16 => &[0],
        GgmlType::Q4_0 => Q4_0,
        GgmlType::Q4_1 => Q4_1,
        GgmlType::Q5_0 => Q5_0,
        GgmlType::Q5_1 => Q5_1,
        GgmlType::Q8_0 => Q8_0,
        GgmlType::Q8_1 => Q8_1,
        GgmlType::Q2K => Q2K,
        GgmlType::Q3K => Q3K,
        GgmlType::Q4K => Q4K,
        GgmlType::Q5K => Q5K,
        GgmlType::Q6K => Q6K,
        // f32 holds any finite input; bf16 is checked value by value; the
        // others are never written.
        _ => &[],
    }
}

/// No block with f16 scales holds a magnitude near 2^30 (the widest, q6_K, reaches
/// 65504 * 128 * 32 = 2.7e8). Larger values are refused outright: far above that,
/// the K quantizers' f32 sums of squares overflow and can leave a finite but wrong
/// scale (q6_K turns a 1e20 into garbage without an Inf).
const BLOCK_MAX_ABS: f32 = (1u32 << 30) as f32;

/// For a chunk `x` quantized to `q` (type `t`): the element whose block
/// overflowed (that block's largest |x|), if any.
fn overflowed_element(t: GgmlType, x: &[f32], q: &[u8]) -> Option<usize> {
    let bs = t.block_size();
    let huge = (bs > 1)
        .then(|| x.iter().position(|v| v.abs() > BLOCK_MAX_ABS))
        .flatten();
    let block = match huge {
        Some(k) => k / bs,
        None => first_overflowed_block(t, q)?,
    };
    let start = block * bs;
    let vals = x.get(start..start + bs)?;
    let j = (0..bs).fold(0, |m, k| if vals[k].abs() > vals[m].abs() { k } else { m });
    Some(start + j)
}

/// Index of the first block of `bytes` (whole blocks of type `t`) that holds an
/// Inf/NaN f16 scale, or for bf16 an Inf/NaN value. The source values are
/// already known to be finite, so such a field is an overflow. Costs one or two
/// 16-bit loads per block (a per-value load for bf16 / f16), next to nothing
/// beside the quantizer itself.
fn first_overflowed_block(t: GgmlType, bytes: &[u8]) -> Option<usize> {
    // Exponent bits: all ones = Inf or NaN.
    let (fields, exp): (&[usize], u16) = match t {
        GgmlType::Bf16 => (&[0], 0x7f80),
        _ => (f16_fields(t), 0x7c00),
    };
    if fields.is_empty() {
        return None;
    }
    bytes.chunks_exact(t.type_size()).position(|b| {
        fields
            .iter()
            .any(|&o| u16::from_le_bytes([b[o], b[o + 1]]) & exp == exp)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every type the converter can write, one large value of each magnitude from
    /// 1e4 to 3.4e38: either the converter refuses it (naming that element), or the
    /// value comes back finite and within a factor of two.
    #[test]
    fn overflowed_values_are_found_in_every_written_type() {
        use GgmlType::*;
        // -t's types and the fallbacks (q2_K and q3_K are neither).
        let types = [F16, Bf16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K];
        let base: Vec<f32> = (0..512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0)
            .collect();
        let mut bigs: Vec<f32> = (4..=38).map(|e| 10f32.powi(e)).collect();
        bigs.extend([3.3e38, 3.4e38, f32::MAX]);
        for t in types {
            let q = reference::quantize(t, &base).unwrap();
            assert_eq!(overflowed_element(t, &base, &q), None, "{t}: small values");
            for &big in &bigs {
                for sign in [1.0f32, -1.0] {
                    let mut x = base.clone();
                    x[300] = sign * big;
                    let q = reference::quantize(t, &x).unwrap();
                    let mut y = vec![0f32; x.len()];
                    reference::dequantize(t, &q, &mut y).unwrap();
                    match overflowed_element(t, &x, &q) {
                        Some(k) => assert_eq!(k, 300, "{t} {}", x[300]),
                        None => {
                            assert!(
                                y.iter().all(|v| v.is_finite()),
                                "{t}: {} gives non-finite values unnoticed",
                                x[300]
                            );
                            let r = y[300] / x[300];
                            assert!((0.5..2.0).contains(&r), "{t}: {} -> {}", x[300], y[300]);
                        }
                    }
                }
            }
        }
    }

    /// The limits the message implies: q4_0 holds |x| up to 8 * 65504, q8_0 up to
    /// 127 * 65504 (the scale is max / -8, amax / 127 rounded to f16).
    #[test]
    fn values_just_inside_the_scale_range_pass() {
        for (t, ok, bad) in [
            (GgmlType::Q4_0, 5.2e5f32, 5.3e5f32),
            (GgmlType::Q8_0, 8.3e6, 8.4e6),
        ] {
            let mut x = vec![0.01f32; 64];
            x[40] = ok;
            let q = reference::quantize(t, &x).unwrap();
            assert_eq!(overflowed_element(t, &x, &q), None, "{t} {ok}");
            x[40] = bad;
            let q = reference::quantize(t, &x).unwrap();
            assert_eq!(overflowed_element(t, &x, &q), Some(40), "{t} {bad}");
        }
    }
}
