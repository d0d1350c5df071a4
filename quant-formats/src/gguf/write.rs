//! The streaming writer: declare metadata and tensors, write the header, then
//! stream each tensor's bytes in declared order.
//!
//! ```no_run
//! # use quant_formats::{GgmlType, gguf::{GgufWriter, Value}};
//! # fn main() -> Result<(), quant_formats::gguf::GgufError> {
//! let mut w = GgufWriter::new();
//! w.add("general.architecture", "qwen2");
//! w.add("general.alignment", 32u32);
//! w.add_tensor("output_norm.weight", &[896], GgmlType::F32)?;
//! let file = std::fs::File::create("model.qbin")?;
//! let mut s = w.start(file)?;
//! s.write_tensor("output_norm.weight", &[0u8; 896 * 4])?;
//! let _file = s.finish()?;
//! # Ok(()) }
//! ```

use super::{
    tensor_size, GgufError, TensorInfo, Value, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION,
    MAX_ALIGNMENT, MAX_TENSOR_NAME,
};
use super::{MAX_ARRAY_DEPTH, MAX_ARRAY_LEN, MAX_KEY_LEN, MAX_STRING_LEN};
use crate::GgmlType;
use std::collections::HashSet;
use std::io::{BufWriter, Write};

/// Collects metadata and the tensor table; [`GgufWriter::start`] writes them.
#[derive(Debug, Default)]
pub struct GgufWriter {
    kv: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    names: HashSet<String>,
    /// End of the data section so far (padded).
    data_len: u64,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a metadata entry (written in call order). Keys and values are
    /// checked by [`GgufWriter::start`] (duplicate or empty keys, arrays with
    /// mixed element types, over-long strings, a bad `general.alignment`).
    pub fn add(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        self.kv.push((key.into(), value.into()));
    }

    /// Declare the next tensor. `dims` are in ggml order (`dims[0]` = row
    /// length). Its data offset is assigned now: tensors are laid out in
    /// declaration order, each padded to the alignment.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        dtype: GgmlType,
    ) -> Result<(), GgufError> {
        if name.len() >= MAX_TENSOR_NAME {
            return Err(GgufError::TensorNameTooLong {
                index: self.tensors.len() as u64,
                name: name.to_string(),
                len: name.len(),
            });
        }
        if self.names.contains(name) {
            return Err(GgufError::DuplicateDeclaration {
                name: name.to_string(),
            });
        }
        let n_bytes = tensor_size(name, dims, dtype)?;
        // Offsets are provisional until start() knows the alignment; they are
        // recomputed there. Check the running total cannot overflow.
        let padded =
            pad_to(n_bytes, MAX_ALIGNMENT).ok_or_else(|| GgufError::ElementCountOverflow {
                tensor: name.to_string(),
                dims: dims.to_vec(),
            })?;
        self.data_len =
            self.data_len
                .checked_add(padded)
                .ok_or_else(|| GgufError::ElementCountOverflow {
                    tensor: name.to_string(),
                    dims: dims.to_vec(),
                })?;
        self.names.insert(name.to_string());
        self.tensors.push(TensorInfo {
            name: name.to_string(),
            dims: dims.to_vec(),
            dtype,
            offset: 0,
            n_bytes,
        });
        Ok(())
    }

    /// Tensors declared so far (offsets are assigned by [`GgufWriter::start`]
    /// once the alignment is known; see [`TensorStream::tensors`]).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Validate the metadata, then write header, metadata, tensor table and
    /// padding. The returned stream takes each tensor's bytes in order.
    pub fn start<W: Write>(mut self, file: W) -> Result<TensorStream<W>, GgufError> {
        let alignment = self.validate()?;
        let mut offset = 0u64;
        for t in &mut self.tensors {
            t.offset = offset;
            // add_tensor checked the sum of sizes padded to MAX_ALIGNMENT.
            offset += pad_to(t.n_bytes, alignment).unwrap_or(u64::MAX);
        }
        let mut out = Counting {
            w: BufWriter::with_capacity(1 << 20, file),
            pos: 0,
        };
        out.write(&GGUF_MAGIC)?;
        out.write(&GGUF_VERSION.to_le_bytes())?;
        out.write(&(self.tensors.len() as u64).to_le_bytes())?;
        out.write(&(self.kv.len() as u64).to_le_bytes())?;
        for (k, v) in &self.kv {
            out.string(k)?;
            out.write(&v.value_type().tag().to_le_bytes())?;
            write_value(&mut out, v)?;
        }
        for t in &self.tensors {
            out.string(&t.name)?;
            out.write(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                out.write(&d.to_le_bytes())?;
            }
            out.write(&t.dtype.tag().to_le_bytes())?;
            out.write(&t.offset.to_le_bytes())?;
        }
        out.pad(alignment)?;
        Ok(TensorStream {
            out,
            tensors: self.tensors,
            next: 0,
            written: 0,
            alignment,
        })
    }

    /// Keys unique, non-empty, not too long; values well-formed; alignment.
    fn validate(&self) -> Result<u64, GgufError> {
        let mut seen = HashSet::new();
        let mut alignment = DEFAULT_ALIGNMENT;
        for (i, (k, v)) in self.kv.iter().enumerate() {
            if k.is_empty() {
                return Err(GgufError::EmptyKey { index: i as u64 });
            }
            if k.len() as u64 > MAX_KEY_LEN {
                return Err(GgufError::KeyTooLong {
                    key: k.chars().take(64).collect(),
                    len: k.len(),
                    limit: MAX_KEY_LEN,
                });
            }
            if !seen.insert(k.as_str()) {
                return Err(GgufError::DuplicateKey(k.clone()));
            }
            check_value(k, v, 0)?;
            if k == "general.alignment" {
                match v {
                    Value::U32(a) => {
                        let a = *a as u64;
                        if a == 0 || !a.is_power_of_two() || a > MAX_ALIGNMENT {
                            return Err(GgufError::BadAlignment(a));
                        }
                        alignment = a;
                    }
                    v => {
                        return Err(GgufError::AlignmentType {
                            found: format!("{} {v}", v.type_name()),
                        })
                    }
                }
            }
        }
        Ok(alignment)
    }
}

/// The same limits the reader enforces, so whatever we write we can read.
fn check_value(key: &str, v: &Value, depth: usize) -> Result<(), GgufError> {
    match v {
        Value::String(s) if s.len() as u64 > MAX_STRING_LEN => Err(GgufError::StringTooLong {
            what: format!("value of key '{key}'"),
            len: s.len() as u64,
            limit: MAX_STRING_LEN,
        }),
        Value::Array(t, items) => {
            if depth + 1 > MAX_ARRAY_DEPTH {
                return Err(GgufError::ArrayTooDeep {
                    key: key.to_string(),
                    depth: depth + 1,
                    limit: MAX_ARRAY_DEPTH,
                });
            }
            if items.len() as u64 > MAX_ARRAY_LEN {
                return Err(GgufError::ArrayTooLong {
                    key: key.to_string(),
                    len: items.len() as u64,
                    limit: MAX_ARRAY_LEN,
                });
            }
            for (index, item) in items.iter().enumerate() {
                if item.value_type() != *t {
                    return Err(GgufError::MixedArray {
                        key: key.to_string(),
                        index,
                        expected: *t,
                        found: item.type_name(),
                    });
                }
                check_value(key, item, depth + 1)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn write_value<W: Write>(out: &mut Counting<W>, v: &Value) -> Result<(), GgufError> {
    match v {
        Value::U8(x) => out.write(&[*x]),
        Value::I8(x) => out.write(&x.to_le_bytes()),
        Value::U16(x) => out.write(&x.to_le_bytes()),
        Value::I16(x) => out.write(&x.to_le_bytes()),
        Value::U32(x) => out.write(&x.to_le_bytes()),
        Value::I32(x) => out.write(&x.to_le_bytes()),
        Value::F32(x) => out.write(&x.to_le_bytes()),
        Value::U64(x) => out.write(&x.to_le_bytes()),
        Value::I64(x) => out.write(&x.to_le_bytes()),
        Value::F64(x) => out.write(&x.to_le_bytes()),
        Value::Bool(x) => out.write(&[*x as u8]),
        Value::String(s) => out.string(s),
        Value::Array(t, items) => {
            out.write(&t.tag().to_le_bytes())?;
            out.write(&(items.len() as u64).to_le_bytes())?;
            for item in items {
                write_value(out, item)?;
            }
            Ok(())
        }
    }
}

/// `n` rounded up to a multiple of `align` (a power of two), or None on overflow.
fn pad_to(n: u64, align: u64) -> Option<u64> {
    Some(n.checked_add(align - 1)? & !(align - 1))
}

/// A writer that counts bytes (for padding) and buffers small writes.
#[derive(Debug)]
struct Counting<W: Write> {
    w: BufWriter<W>,
    pos: u64,
}

impl<W: Write> Counting<W> {
    fn write(&mut self, b: &[u8]) -> Result<(), GgufError> {
        self.w.write_all(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn string(&mut self, s: &str) -> Result<(), GgufError> {
        self.write(&(s.len() as u64).to_le_bytes())?;
        self.write(s.as_bytes())
    }

    fn pad(&mut self, align: u64) -> Result<(), GgufError> {
        let n = (align - self.pos % align) % align;
        self.write(&vec![0u8; n as usize])
    }
}

/// Takes the tensor bytes, in declared order, after the header was written.
#[derive(Debug)]
pub struct TensorStream<W: Write> {
    out: Counting<W>,
    tensors: Vec<TensorInfo>,
    next: usize,
    /// Bytes of tensor `next` written so far (chunked writes).
    written: u64,
    alignment: u64,
}

impl<W: Write> TensorStream<W> {
    /// The declared tensors with their final offsets.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor expected next, or None when all were written.
    pub fn next_tensor(&self) -> Option<&TensorInfo> {
        self.tensors.get(self.next)
    }

    /// Write the next tensor's bytes (name and size must match the
    /// declaration) followed by zero padding to the alignment.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<(), GgufError> {
        let t = self.expect(name)?;
        if self.written != 0 {
            return Err(GgufError::IncompleteTensor {
                name: name.to_string(),
                written: self.written,
                expected: t.n_bytes,
            });
        }
        if t.n_bytes != bytes.len() as u64 {
            return Err(GgufError::WrongTensorSize {
                name: name.to_string(),
                expected: t.n_bytes,
                got: bytes.len() as u64,
            });
        }
        self.write_tensor_chunk(name, bytes)
    }

    /// Write part of the next tensor (e.g. a few quantized rows at a time, so
    /// a converter never holds a whole tensor). Once the declared size is
    /// reached the padding is written and the stream moves to the next tensor;
    /// going past the declared size is an error.
    pub fn write_tensor_chunk(&mut self, name: &str, bytes: &[u8]) -> Result<(), GgufError> {
        let n_bytes = self.expect(name)?.n_bytes;
        let total = self.written + bytes.len() as u64;
        if total > n_bytes {
            return Err(GgufError::WrongTensorSize {
                name: name.to_string(),
                expected: n_bytes,
                got: total,
            });
        }
        self.out.write(bytes)?;
        self.written = total;
        if total == n_bytes {
            self.out.pad(self.alignment)?;
            self.next += 1;
            self.written = 0;
        }
        Ok(())
    }

    /// The declaration of the tensor due next, if it is `name`.
    fn expect(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        let Some(t) = self.tensors.get(self.next) else {
            return Err(GgufError::ExtraTensor {
                declared: self.tensors.len(),
                name: name.to_string(),
            });
        };
        if t.name != name {
            return Err(GgufError::WrongTensorOrder {
                expected: t.name.clone(),
                got: name.to_string(),
            });
        }
        Ok(t)
    }

    /// Check every declared tensor was written, flush, and return the writer.
    pub fn finish(self) -> Result<W, GgufError> {
        if self.written > 0 {
            let t = &self.tensors[self.next];
            return Err(GgufError::IncompleteTensor {
                name: t.name.clone(),
                written: self.written,
                expected: t.n_bytes,
            });
        }
        if self.next < self.tensors.len() {
            return Err(GgufError::MissingTensors {
                missing: self.tensors[self.next..]
                    .iter()
                    .map(|t| t.name.clone())
                    .collect(),
            });
        }
        self.out
            .w
            .into_inner()
            .map_err(|e| GgufError::Io(e.into_error()))
    }
}
