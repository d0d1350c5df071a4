//! Hugging Face checkpoint folder: `config.json`, JSON helpers, and the
//! safetensors weights (one `model.safetensors` or shards listed by
//! `model.safetensors.index.json`), memory-mapped and read one tensor at a time.
//!
//! Every safetensors header is checked by us first (so the error names the
//! tensor and the numbers) and then by the `safetensors` crate.

use crate::{bail, Error, Result};
use memmap2::Mmap;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Largest JSON file we read (tokenizer.json of Qwen is ~7 MB).
const MAX_JSON_BYTES: u64 = 256 << 20;
/// Largest safetensors header (the crate's own limit is 100 MB).
const MAX_HEADER_BYTES: u64 = 100_000_000;
/// Bytes before a released range that are released too (see release_elements).
const FAULT_AROUND: usize = 256 << 10;

/// Read and parse a JSON file; errors name the path.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = read_text(path)?;
    serde_json::from_str(&text)
        .map_err(|e| Error::new(format!("{}: invalid JSON: {e}", path.display())))
}

/// Read a UTF-8 text file of bounded size; errors name the path.
pub fn read_text(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::new(format!("cannot read {}: {e}", path.display())))?;
    if meta.len() > MAX_JSON_BYTES {
        bail!(
            "{}: {} bytes is larger than the limit of {} bytes",
            path.display(),
            meta.len(),
            MAX_JSON_BYTES
        );
    }
    let bytes = std::fs::read(path)
        .map_err(|e| Error::new(format!("cannot read {}: {e}", path.display())))?;
    String::from_utf8(bytes).map_err(|e| {
        Error::new(format!(
            "{}: not UTF-8 at byte {}",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

/// `config.json` as a JSON object with typed, error-naming getters.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub raw: Map<String, Value>,
}

impl Config {
    pub fn load(dir: &Path) -> Result<Config> {
        let path = dir.join("config.json");
        if !path.is_file() {
            bail!(
                "{}: no such file (is {} a Hugging Face model folder?)",
                path.display(),
                dir.display()
            );
        }
        Self::from_value(path.clone(), read_json(&path)?)
    }

    pub fn from_value(path: PathBuf, v: Value) -> Result<Config> {
        match v {
            Value::Object(raw) => Ok(Config { path, raw }),
            other => bail!(
                "{}: expected a JSON object, found {}",
                path.display(),
                kind(&other)
            ),
        }
    }

    fn err(&self, key: &str, what: &str, v: &Value) -> Error {
        Error::new(format!(
            "{}: key `{key}` must be {what}, found {}",
            self.path.display(),
            short(v)
        ))
    }

    pub fn has(&self, key: &str) -> bool {
        self.raw.get(key).is_some_and(|v| !v.is_null())
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.raw.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.err(key, "a non-negative integer", v)),
        }
    }

    /// A required positive integer that fits in u32.
    pub fn u32(&self, key: &str) -> Result<u32> {
        match self.opt_u32(key)? {
            Some(v) => Ok(v),
            None => bail!("{}: required key `{key}` is missing", self.path.display()),
        }
    }

    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        match self.opt_u64(key)? {
            None => Ok(None),
            Some(v) if v > 0 && v <= u32::MAX as u64 => Ok(Some(v as u32)),
            Some(v) => bail!(
                "{}: key `{key}` = {v} is out of range 1..={}",
                self.path.display(),
                u32::MAX
            ),
        }
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.raw.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, "a number", v)),
        }
    }

    pub fn f64(&self, key: &str) -> Result<f64> {
        match self.opt_f64(key)? {
            Some(v) => Ok(v),
            None => bail!("{}: required key `{key}` is missing", self.path.display()),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.raw.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(key, "true or false", v)),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.raw.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(key, "a string", v)),
        }
    }

    /// `architectures[0]`, the class name transformers instantiates.
    pub fn architecture(&self) -> Result<String> {
        match self.raw.get("architectures") {
            Some(Value::Array(a)) if !a.is_empty() => match &a[0] {
                Value::String(s) => Ok(s.clone()),
                v => Err(self.err("architectures", "a list of class names", v)),
            },
            Some(Value::Array(_)) | None | Some(Value::Null) => bail!(
                "{}: key `architectures` is missing or empty (model_type = {})",
                self.path.display(),
                self.opt_str("model_type")
                    .ok()
                    .flatten()
                    .unwrap_or("absent")
            ),
            Some(v) => Err(self.err("architectures", "a list of class names", v)),
        }
    }

    /// Weight dtype as declared: `dtype` (transformers 5) or `torch_dtype`.
    pub fn dtype(&self) -> Result<Option<&str>> {
        match self.opt_str("dtype")? {
            Some(s) => Ok(Some(s)),
            None => self.opt_str("torch_dtype"),
        }
    }

    /// RoPE base: top-level `rope_theta`, or `rope_parameters.rope_theta`
    /// (transformers 5), or `rope_parameters.full_attention.rope_theta`.
    pub fn rope_theta(&self) -> Result<Option<f64>> {
        if let Some(t) = self.opt_f64("rope_theta")? {
            return Ok(Some(t));
        }
        let Some(rp) = self.raw.get("rope_parameters") else {
            return Ok(None);
        };
        let obj = match rp {
            Value::Null => return Ok(None),
            Value::Object(o) => o,
            v => return Err(self.err("rope_parameters", "an object", v)),
        };
        let inner = match obj.get("full_attention") {
            Some(Value::Object(o)) => o,
            _ => obj,
        };
        match inner.get("rope_theta") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err("rope_parameters.rope_theta", "a number", v)),
        }
    }

    /// `rope_scaling` / `rope_parameters.rope_type` other than none/default:
    /// we do not convert scaled RoPE, so callers reject it.
    pub fn rope_scaling_type(&self) -> Option<String> {
        let from = |v: Option<&Value>| -> Option<String> {
            let o = v?.as_object()?;
            let o = match o.get("full_attention") {
                Some(Value::Object(inner)) => inner,
                _ => o,
            };
            let t = o.get("rope_type").or_else(|| o.get("type"))?.as_str()?;
            (t != "default" && t != "none").then(|| t.to_string())
        };
        from(self.raw.get("rope_scaling")).or_else(|| from(self.raw.get("rope_parameters")))
    }
}

/// Short text of a JSON value for error messages (at most ~80 chars).
pub fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        let cut: String = s.chars().take(77).collect();
        format!("{cut}...")
    } else {
        s
    }
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Source element types we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrcDtype {
    F32,
    F16,
    Bf16,
}

impl SrcDtype {
    pub fn size(self) -> usize {
        match self {
            SrcDtype::F32 => 4,
            SrcDtype::F16 | SrcDtype::Bf16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            SrcDtype::F32 => "F32",
            SrcDtype::F16 => "F16",
            SrcDtype::Bf16 => "BF16",
        }
    }
}

/// One tensor of the checkpoint: where its bytes are and what they hold.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: SrcDtype,
    /// PyTorch order: shape[0] is the slowest axis (rows of a weight matrix).
    pub shape: Vec<usize>,
    /// Index into `Checkpoint::shards`.
    pub shard: usize,
    /// Absolute byte offset of the data in the shard file.
    pub start: usize,
    pub n_bytes: usize,
}

impl TensorEntry {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

/// All safetensors files of a model, memory-mapped, with one name index.
pub struct Checkpoint {
    shards: Vec<Shard>,
    tensors: HashMap<String, TensorEntry>,
}

impl Checkpoint {
    /// Open `model.safetensors.index.json` + its shards, or `model.safetensors`.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut ck = Checkpoint {
            shards: Vec::new(),
            tensors: HashMap::new(),
        };
        if index.is_file() {
            let v = read_json(&index)?;
            let Some(map) = v.get("weight_map").and_then(Value::as_object) else {
                bail!("{}: missing object `weight_map`", index.display());
            };
            // Shard file names in first-seen order, deduplicated.
            let mut files: Vec<String> = Vec::new();
            for (tensor, file) in map {
                let Some(f) = file.as_str() else {
                    bail!(
                        "{}: weight_map[{tensor:?}] must be a file name, found {}",
                        index.display(),
                        short(file)
                    );
                };
                if f.is_empty() || f.contains('/') || f.contains('\\') || f == "." || f == ".." {
                    bail!(
                        "{}: weight_map[{tensor:?}] = {f:?} is not a plain file name",
                        index.display()
                    );
                }
                if !files.iter().any(|x| x == f) {
                    files.push(f.to_string());
                }
            }
            if files.is_empty() {
                bail!("{}: weight_map is empty", index.display());
            }
            files.sort();
            for f in &files {
                let p = dir.join(f);
                if !p.is_file() {
                    bail!(
                        "{}: shard {f:?} listed in {} does not exist",
                        p.display(),
                        index.display()
                    );
                }
                ck.add_shard(p)?;
            }
            for (tensor, file) in map {
                let f = file.as_str().unwrap_or_default();
                match ck.tensors.get(tensor) {
                    Some(t)
                        if ck.shards[t.shard].path.file_name().and_then(|n| n.to_str())
                            == Some(f) => {}
                    Some(t) => bail!(
                        "{}: tensor {tensor:?} is listed in shard {f:?} but found in {}",
                        index.display(),
                        ck.shards[t.shard].path.display()
                    ),
                    None => bail!(
                        "{}: tensor {tensor:?} listed in {} is missing from that shard",
                        dir.join(f).display(),
                        index.display()
                    ),
                }
            }
        } else if single.is_file() {
            ck.add_shard(single)?;
        } else {
            bail!(
                "{}: no model.safetensors or model.safetensors.index.json found",
                dir.display()
            );
        }
        Ok(ck)
    }

    fn add_shard(&mut self, path: PathBuf) -> Result<()> {
        let file = File::open(&path)
            .map_err(|e| Error::new(format!("cannot open {}: {e}", path.display())))?;
        let len = file
            .metadata()
            .map_err(|e| Error::new(format!("cannot stat {}: {e}", path.display())))?
            .len();
        if len < 8 {
            bail!(
                "{}: {len} bytes is too short for a safetensors file (needs at least 8)",
                path.display()
            );
        }
        // SAFETY: the map is read-only. Like every mmap-based loader we assume
        // the file is not truncated or rewritten while we convert it; every
        // offset we read is checked against the length seen here.
        let mmap = unsafe { Mmap::map(&file) }
            .map_err(|e| Error::new(format!("cannot mmap {}: {e}", path.display())))?;
        let shard_idx = self.shards.len();
        let entries = parse_header(&path, &mmap, shard_idx)?;
        // Second opinion from the reference implementation.
        if let Err(e) = safetensors::SafeTensors::deserialize(&mmap) {
            bail!(
                "{}: rejected by the safetensors crate: {e:?}",
                path.display()
            );
        }
        for t in entries {
            if let Some(prev) = self.tensors.get(&t.name) {
                bail!(
                    "{}: tensor {:?} also appears in {}",
                    path.display(),
                    t.name,
                    self.shards[prev.shard].path.display()
                );
            }
            self.tensors.insert(t.name.clone(), t);
        }
        self.shards.push(Shard { path, mmap });
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Paths of every safetensors file opened.
    pub fn shard_paths(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|s| s.path.as_path())
    }

    pub fn shard_path(&self, t: &TensorEntry) -> &Path {
        &self.shards[t.shard].path
    }

    /// Convert elements `[first, first + out.len())` of `t` to f32 into `out`.
    /// A NaN or infinity is an error naming the tensor and the element.
    pub fn read_f32(&self, t: &TensorEntry, first: usize, out: &mut [f32]) -> Result<()> {
        let n = t.n_elements();
        let end = first.checked_add(out.len()).filter(|&e| e <= n);
        let Some(end) = end else {
            bail!(
                "internal: read of elements {first}+{} past tensor {:?} of {n} elements",
                out.len(),
                t.name
            );
        };
        let es = t.dtype.size();
        let bytes = &self.shards[t.shard].mmap[t.start + first * es..t.start + end * es];
        match t.dtype {
            SrcDtype::F32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            SrcDtype::F16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            }
            SrcDtype::Bf16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
                }
            }
        }
        if let Some(i) = out.iter().position(|x| !x.is_finite()) {
            bail!(
                "{}: tensor {:?} has a non-finite value {} at element {} (shape {:?})",
                self.shard_path(t).display(),
                t.name,
                out[i],
                first + i,
                t.shape
            );
        }
        Ok(())
    }

    /// Drop the mapped pages of `t` from our resident set (they stay in the
    /// page cache), so peak RSS stays near one tensor rather than the model.
    pub fn release(&self, t: &TensorEntry) {
        self.release_elements(t, 0, t.n_elements());
    }

    /// Like [`Checkpoint::release`] for elements `[first, first + n)` only,
    /// so even one large tensor is never resident as a whole.
    pub fn release_elements(&self, t: &TensorEntry, first: usize, n: usize) {
        let mmap = &self.shards[t.shard].mmap;
        let es = t.dtype.size();
        let page = 4096;
        let lo = t.start + first.saturating_mul(es);
        let hi = (t.start + first.saturating_add(n).saturating_mul(es)).min(t.start + t.n_bytes);
        // Linux maps up to 64 KB of cached pages around each fault
        // ("fault-around"), including pages before `lo` that an earlier call
        // already dropped; reach back a little so they do not accumulate.
        let start = lo.saturating_sub(FAULT_AROUND) / page * page;
        let end = hi.min(mmap.len());
        if end <= start {
            return;
        }
        // SAFETY: the mapping is read-only and file-backed, so MADV_DONTNEED
        // only discards clean pages; later reads (including of a partial page
        // shared with a neighbour) fault them back from the file. No slice into
        // this range is alive across this call (read_f32 copies out).
        // Failure only costs memory, so the result is ignored.
        let _ = unsafe {
            mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }
}

/// Parse and check a safetensors header: 8-byte little-endian length, JSON
/// object of `name: {dtype, shape, data_offsets}`; data packed from 0 with no
/// gaps or overlaps, each size = product(shape) x dtype size, ending at EOF.
fn parse_header(path: &Path, buf: &[u8], shard: usize) -> Result<Vec<TensorEntry>> {
    let file_len = buf.len() as u64;
    let n = u64::from_le_bytes([
        buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7],
    ]);
    if n > MAX_HEADER_BYTES || n > file_len - 8 {
        bail!(
            "{}: header length {n} exceeds the file ({} bytes after the length field; limit {MAX_HEADER_BYTES})",
            path.display(),
            file_len - 8
        );
    }
    let data_start = 8 + n as usize;
    let data_len = buf.len() - data_start;
    let text = std::str::from_utf8(&buf[8..data_start]).map_err(|e| {
        Error::new(format!(
            "{}: header is not UTF-8 at byte {}",
            path.display(),
            8 + e.valid_up_to()
        ))
    })?;
    let header: Value = serde_json::from_str(text)
        .map_err(|e| Error::new(format!("{}: header is not valid JSON: {e}", path.display())))?;
    let Value::Object(obj) = header else {
        bail!("{}: header must be a JSON object", path.display());
    };
    let mut out = Vec::with_capacity(obj.len());
    for (name, info) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype_s = info.get("dtype").and_then(Value::as_str).unwrap_or("");
        let dtype = match dtype_s {
            "F32" => SrcDtype::F32,
            "F16" => SrcDtype::F16,
            "BF16" => SrcDtype::Bf16,
            other => bail!(
                "{}: tensor {name:?} has dtype {:?}; only F32, F16 and BF16 are supported",
                path.display(),
                if other.is_empty() { "missing" } else { other }
            ),
        };
        let shape: Option<Vec<usize>> = info.get("shape").and_then(Value::as_array).and_then(|a| {
            a.iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect()
        });
        let Some(shape) = shape else {
            bail!("{}: tensor {name:?} has no valid `shape`", path.display());
        };
        let offs: Option<Vec<u64>> = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_u64).collect());
        let (s, e) = match offs.as_deref() {
            Some(&[s, e]) => (s, e),
            _ => bail!(
                "{}: tensor {name:?} has no valid `data_offsets`",
                path.display()
            ),
        };
        let want = shape
            .iter()
            .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64));
        let Some(want) = want else {
            bail!(
                "{}: tensor {name:?} shape {shape:?} overflows",
                path.display()
            );
        };
        if e < s || e - s != want {
            bail!(
                "{}: tensor {name:?} data_offsets [{s}, {e}] hold {} bytes but {dtype_s} x {shape:?} needs {want}",
                path.display(),
                e.saturating_sub(s)
            );
        }
        if e > data_len as u64 {
            bail!(
                "{}: tensor {name:?} data_offsets [{s}, {e}] end past the data section of {data_len} bytes",
                path.display()
            );
        }
        out.push(TensorEntry {
            name,
            dtype,
            shape,
            shard,
            start: data_start + s as usize,
            n_bytes: want as usize,
        });
    }
    // Packed, no overlap, no gap, nothing after the last tensor.
    out.sort_by_key(|t| t.start);
    let mut pos = data_start;
    for t in &out {
        if t.start != pos {
            bail!(
                "{}: tensor {:?} starts at data offset {} but the previous tensor ends at {}",
                path.display(),
                t.name,
                t.start - data_start,
                pos - data_start
            );
        }
        pos = t.start + t.n_bytes;
    }
    if pos != buf.len() {
        bail!(
            "{}: tensors end at data offset {} but the data section has {data_len} bytes",
            path.display(),
            pos - data_start
        );
    }
    Ok(out)
}
