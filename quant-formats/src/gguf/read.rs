//! The validating zero-copy reader; the checks are listed on [`Gguf::parse`].

use super::{
    tensor_size, GgufError, TensorInfo, Value, ValueType, DEFAULT_ALIGNMENT, GGUF_MAGIC,
    MAX_ALIGNMENT, MAX_DIMS, MAX_TENSOR_NAME,
};
use crate::GgmlType;
use std::collections::HashMap;
use std::fmt::Write as _;

/// Longest metadata key in bytes (the spec's limit, 2^16 - 1).
pub const MAX_KEY_LEN: u64 = 65_535;
/// Longest string value in bytes (ggml's `GGUF_MAX_STRING_LENGTH`, 1 GiB).
pub const MAX_STRING_LEN: u64 = 1 << 30;
/// Most elements in one array. Real vocabularies have < 2^20 entries; the cap
/// bounds memory on hostile files (each element becomes a 32-byte [`Value`]).
pub const MAX_ARRAY_LEN: u64 = 1 << 24;
/// Deepest array nesting (1 = an array of scalars).
pub const MAX_ARRAY_DEPTH: usize = 4;
/// How many lossy-UTF-8 warnings are kept (the rest are counted).
const MAX_WARNINGS: usize = 32;

/// Fewest bytes of one key/value entry: key length (8) + a 1-byte key +
/// type tag (4) + a 1-byte value.
const MIN_KV_BYTES: u64 = 14;
/// Fewest bytes of one tensor info: name length (8) + n_dims (4) + type (4) +
/// offset (8). (ggml accepts an empty name and 0 dims.)
const MIN_TENSOR_INFO_BYTES: u64 = 24;

/// A parsed GGUF file borrowing its bytes (typically an mmap).
pub struct Gguf<'a> {
    pub version: u32,
    /// `general.alignment` or 32.
    pub alignment: u64,
    /// The tensor table in file order.
    pub tensors: Vec<TensorInfo>,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
    /// Things accepted but worth telling the user (lossy UTF-8 in arrays).
    pub warnings: Vec<String>,
    kv: Vec<(String, Value)>,
    kv_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
    bytes: &'a [u8],
}

/// Debug shows the header and tables, not the (possibly gigabytes of) bytes.
impl std::fmt::Debug for Gguf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("file_len", &self.bytes.len())
            .field("kv", &self.kv)
            .field("tensors", &self.tensors)
            .field("warnings", &self.warnings)
            .finish()
    }
}

/// A bounds-checked little-endian reader over the file.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.left() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                need: n,
                left: self.left(),
            });
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(
        &mut self,
        what: impl FnOnce() -> String,
    ) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed string's raw bytes; `limit` caps the length.
    fn string(&mut self, limit: u64, what: impl Fn() -> String) -> Result<&'a [u8], GgufError> {
        let len = self.u64(|| format!("length of {}", what()))?;
        if len > limit {
            return Err(GgufError::StringTooLong {
                what: what(),
                len,
                limit,
            });
        }
        self.take(len, what)
    }

    fn utf8(&mut self, limit: u64, what: impl Fn() -> String) -> Result<&'a str, GgufError> {
        let s = self.string(limit, &what)?;
        std::str::from_utf8(s).map_err(|e| GgufError::InvalidUtf8 {
            what: what(),
            detail: e.to_string(),
        })
    }
}

/// Mutable state while reading values: lossy-UTF-8 warnings.
struct Warnings {
    list: Vec<String>,
    n: usize,
}

impl Warnings {
    fn push(&mut self, msg: impl FnOnce() -> String) {
        if self.list.len() < MAX_WARNINGS {
            self.list.push(msg());
        }
        self.n += 1;
    }
}

fn read_value(
    c: &mut Cursor<'_>,
    ty: ValueType,
    key: &str,
    depth: usize,
    w: &mut Warnings,
) -> Result<Value, GgufError> {
    let what = || format!("value of key '{key}'");
    Ok(match ty {
        ValueType::U8 => Value::U8(c.array::<1>(what)?[0]),
        ValueType::I8 => Value::I8(c.array::<1>(what)?[0] as i8),
        ValueType::U16 => Value::U16(u16::from_le_bytes(c.array(what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.array(what)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(c.array(what)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.array(what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(c.array(what)?)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(c.array(what)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.array(what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(c.array(what)?)),
        ValueType::Bool => {
            let offset = c.pos as u64;
            match c.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                byte => {
                    return Err(GgufError::BadBool {
                        key: key.to_string(),
                        byte,
                        offset,
                    })
                }
            }
        }
        ValueType::String => {
            if depth == 0 {
                Value::String(c.utf8(MAX_STRING_LEN, what)?.to_string())
            } else {
                let s = c.string(MAX_STRING_LEN, what)?;
                match std::str::from_utf8(s) {
                    Ok(s) => Value::String(s.to_string()),
                    Err(_) => {
                        let offset = c.pos - s.len();
                        w.push(|| {
                            format!(
                                "key '{key}': a string at offset {offset} is not valid UTF-8; \
                                 invalid bytes were replaced by U+FFFD"
                            )
                        });
                        Value::String(String::from_utf8_lossy(s).into_owned())
                    }
                }
            }
        }
        ValueType::Array => {
            if depth + 1 > MAX_ARRAY_DEPTH {
                return Err(GgufError::ArrayTooDeep {
                    key: key.to_string(),
                    depth: depth + 1,
                    limit: MAX_ARRAY_DEPTH,
                });
            }
            let tag = c.u32(|| format!("array element type of key '{key}'"))?;
            let elem = ValueType::from_tag(tag).ok_or_else(|| GgufError::UnknownValueType {
                key: key.to_string(),
                tag,
            })?;
            let len = c.u64(|| format!("array length of key '{key}'"))?;
            if len > MAX_ARRAY_LEN {
                return Err(GgufError::ArrayTooLong {
                    key: key.to_string(),
                    len,
                    limit: MAX_ARRAY_LEN,
                });
            }
            // len <= 2^24 and min_size <= 12: no overflow.
            let need = len * elem.min_size();
            if need > c.left() {
                return Err(GgufError::Truncated {
                    what: format!("array of {len} {elem} for key '{key}'"),
                    offset: c.pos as u64,
                    need,
                    left: c.left(),
                });
            }
            let mut items = Vec::with_capacity(prealloc(len));
            for _ in 0..len {
                items.push(read_value(c, elem, key, depth + 1, w)?);
            }
            Value::Array(elem, items)
        }
    })
}

/// Capacity to reserve for `n` declared entries: counts were checked against
/// the bytes left, but a hostile file should not make us reserve memory for
/// entries before their bytes were actually read.
fn prealloc(n: u64) -> usize {
    n.min(1 << 16) as usize
}

fn count_check(what: &'static str, count: u64, per: u64, left: u64) -> Result<(), GgufError> {
    if count > left / per {
        return Err(GgufError::CountTooLarge {
            what,
            count,
            left,
            max: left / per,
        });
    }
    Ok(())
}

impl<'a> Gguf<'a> {
    /// Parse and validate a whole GGUF file held in `bytes`. Everything is
    /// checked before any tensor slice is handed out:
    /// - magic "GGUF"; version 2 or 3 (v1, whose counts are u32, is refused with its
    ///   own message; a byte-swapped version is reported as a big-endian file);
    /// - tensor and key counts against the fewest bytes each entry can take in the
    ///   bytes that follow (so a count of 2^63 fails at once, before any allocation);
    /// - every string length against the bytes left and a cap ([`MAX_KEY_LEN`] for
    ///   keys, [`MAX_STRING_LEN`] otherwise); array lengths against the bytes left
    ///   and [`MAX_ARRAY_LEN`]; arrays nested at most [`MAX_ARRAY_DEPTH`] deep (ggml
    ///   itself refuses nested arrays; the spec allows them);
    /// - keys non-empty, unique and UTF-8; string values UTF-8. Strings *inside
    ///   arrays* that are not UTF-8 (rare tokenizer dumps) are decoded lossily
    ///   (U+FFFD) and each such case is reported in [`Gguf::warnings`], so nothing is
    ///   changed silently; bool bytes must be 0 or 1;
    /// - `general.alignment`, when present, a u32 power of two up to [`MAX_ALIGNMENT`](super::MAX_ALIGNMENT);
    /// - tensor names unique, UTF-8 and shorter than 64 bytes (ggml's `GGML_MAX_NAME`);
    ///   at most 4 dims, each may be 0 (as in ggml), element count below 2^63; a
    ///   known type tag; row length a multiple of the block size;
    /// - each tensor offset a multiple of the alignment, its bytes inside the file,
    ///   and no two tensors overlapping. (ggml additionally wants tensors packed in
    ///   file order; we accept gaps and any order, which is a superset.)
    pub fn parse(bytes: &'a [u8]) -> Result<Gguf<'a>, GgufError> {
        let mut c = Cursor { b: bytes, pos: 0 };
        let magic: [u8; 4] = c.array(|| "magic".to_string())?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = c.u32(|| "version".to_string())?;
        match version {
            2 | 3 => {}
            1 => return Err(GgufError::VersionOne),
            v if v != 0 && v & 0xffff == 0 => return Err(GgufError::BigEndian(v)),
            v => return Err(GgufError::UnsupportedVersion(v)),
        }
        let n_tensors = c.u64(|| "tensor count".to_string())?;
        let n_kv = c.u64(|| "metadata count".to_string())?;
        count_check("metadata entries", n_kv, MIN_KV_BYTES, c.left())?;
        count_check("tensors", n_tensors, MIN_TENSOR_INFO_BYTES, c.left())?;

        let mut warnings = Warnings {
            list: Vec::new(),
            n: 0,
        };
        let mut kv = Vec::with_capacity(prealloc(n_kv));
        let mut kv_index = HashMap::with_capacity(prealloc(n_kv));
        for i in 0..n_kv {
            let key = c.utf8(MAX_KEY_LEN, || format!("metadata key #{i}"))?;
            if key.is_empty() {
                return Err(GgufError::EmptyKey { index: i });
            }
            if kv_index.contains_key(key) {
                return Err(GgufError::DuplicateKey(key.to_string()));
            }
            let tag = c.u32(|| format!("value type of key '{key}'"))?;
            let ty = ValueType::from_tag(tag).ok_or_else(|| GgufError::UnknownValueType {
                key: key.to_string(),
                tag,
            })?;
            let value = read_value(&mut c, ty, key, 0, &mut warnings)?;
            kv_index.insert(key.to_string(), kv.len());
            kv.push((key.to_string(), value));
        }
        if warnings.n > warnings.list.len() {
            let more = warnings.n - warnings.list.len();
            warnings
                .list
                .push(format!("… and {more} more strings with invalid UTF-8"));
        }

        let alignment = match kv_index.get("general.alignment").map(|&i| &kv[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) => {
                let a = *a as u64;
                if a == 0 || !a.is_power_of_two() || a > MAX_ALIGNMENT {
                    return Err(GgufError::BadAlignment(a));
                }
                a
            }
            Some(v) => {
                return Err(GgufError::AlignmentType {
                    found: format!("{} {v}", v.type_name()),
                })
            }
        };

        count_check("tensors", n_tensors, MIN_TENSOR_INFO_BYTES, c.left())?;
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(prealloc(n_tensors));
        let mut tensor_index = HashMap::with_capacity(prealloc(n_tensors));
        for i in 0..n_tensors {
            let name = c.utf8(MAX_STRING_LEN, || format!("name of tensor #{i}"))?;
            if name.len() >= MAX_TENSOR_NAME {
                return Err(GgufError::TensorNameTooLong {
                    index: i,
                    name: name.to_string(),
                    len: name.len(),
                });
            }
            if tensor_index.contains_key(name) {
                return Err(GgufError::DuplicateTensor(name.to_string()));
            }
            let n_dims = c.u32(|| format!("dims count of tensor '{name}'"))?;
            if n_dims as usize > MAX_DIMS {
                return Err(GgufError::TooManyDims {
                    tensor: name.to_string(),
                    n_dims: n_dims as u64,
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                dims.push(c.u64(|| format!("dim {d} of tensor '{name}'"))?);
            }
            let tag = c.u32(|| format!("type of tensor '{name}'"))?;
            let dtype = GgmlType::from_tag(tag).map_err(|_| GgufError::UnknownTensorType {
                tensor: name.to_string(),
                tag,
            })?;
            let n_bytes = tensor_size(name, &dims, dtype)?;
            let offset = c.u64(|| format!("data offset of tensor '{name}'"))?;
            tensor_index.insert(name.to_string(), tensors.len());
            tensors.push(TensorInfo {
                name: name.to_string(),
                dims,
                dtype,
                offset,
                n_bytes,
            });
        }

        let len = bytes.len() as u64;
        let header_end = c.pos as u64;
        // alignment <= 2^20 and header_end <= len: no overflow.
        let data_offset = header_end.div_ceil(alignment) * alignment;
        if !tensors.is_empty() && data_offset > len {
            return Err(GgufError::DataSectionPastEnd {
                offset: data_offset,
                alignment,
                len,
            });
        }
        for t in &tensors {
            if t.offset % alignment != 0 {
                return Err(GgufError::Misaligned {
                    tensor: t.name.clone(),
                    offset: t.offset,
                    alignment,
                });
            }
            let start = data_offset.checked_add(t.offset);
            let fits = start.is_some_and(|s| s <= len && t.n_bytes <= len - s);
            if !fits {
                let offset = start.unwrap_or(u64::MAX);
                return Err(GgufError::OutOfBounds {
                    tensor: t.name.clone(),
                    need: t.n_bytes,
                    offset,
                    left: len.saturating_sub(offset),
                });
            }
        }
        let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
        order.sort_by_key(|t| t.offset);
        for pair in order.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            // both ranges were checked to lie inside the file: no overflow.
            if b.offset < a.offset + a.n_bytes {
                return Err(GgufError::Overlap {
                    a: a.name.clone(),
                    a_start: a.offset,
                    a_end: a.offset + a.n_bytes,
                    b: b.name.clone(),
                    b_start: b.offset,
                });
            }
        }

        Ok(Gguf {
            version,
            alignment,
            tensors,
            data_offset,
            warnings: warnings.list,
            kv,
            kv_index,
            tensor_index,
            bytes,
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Metadata in file order.
    pub fn kv(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> + '_ {
        self.kv.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv_index.get(key).map(|&i| &self.kv[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor of this file (validated at parse time). For a
    /// `TensorInfo` that does not come from this file and whose range lies
    /// outside it, the result is empty rather than a panic.
    pub fn tensor_data(&self, info: &TensorInfo) -> &'a [u8] {
        let range = self
            .data_offset
            .checked_add(info.offset)
            .and_then(|s| Some(s..s.checked_add(info.n_bytes)?))
            .and_then(|r| Some(usize::try_from(r.start).ok()?..usize::try_from(r.end).ok()?));
        range.and_then(|r| self.bytes.get(r)).unwrap_or(&[])
    }

    /// `tensor_data` by name.
    pub fn tensor_bytes(&self, name: &str) -> Option<&'a [u8]> {
        self.tensor(name).map(|t| self.tensor_data(t))
    }

    fn wrong_type(key: &str, expected: &'static str, v: &Value) -> GgufError {
        GgufError::WrongType {
            key: key.to_string(),
            expected,
            found: v.type_name(),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(Self::wrong_type(key, "str", v)),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(Self::wrong_type(key, "bool", v)),
        }
    }

    /// An f32 (only an f32: the converter writes f32 for every float key).
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x)),
            Some(v) => Err(Self::wrong_type(key, "f32", v)),
        }
    }

    /// An integer of any stored width and sign whose value fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.get_int(key, "u32")
    }

    /// An integer of any stored width and sign whose value fits in u64.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.get_int(key, "u64")
    }

    /// An integer of any stored width and sign whose value fits in i32.
    pub fn get_i32(&self, key: &str) -> Result<Option<i32>, GgufError> {
        self.get_int(key, "i32")
    }

    fn get_int<T: TryFrom<i128>>(
        &self,
        key: &str,
        expected: &'static str,
    ) -> Result<Option<T>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        int_value(key, v, expected).map(Some)
    }

    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        let Some(items) = self.get_array(key, "arr[str]", ValueType::String)? else {
            return Ok(None);
        };
        Ok(Some(items.iter().filter_map(Value::as_str).collect()))
    }

    pub fn get_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>, GgufError> {
        let Some(items) = self.get_array(key, "arr[f32]", ValueType::F32)? else {
            return Ok(None);
        };
        Ok(Some(
            items
                .iter()
                .filter_map(|v| match v {
                    Value::F32(x) => Some(*x),
                    _ => None,
                })
                .collect(),
        ))
    }

    /// An array of integers of any width and sign, each fitting in u32.
    pub fn get_u32_array(&self, key: &str) -> Result<Option<Vec<u32>>, GgufError> {
        self.get_int_array(key, "arr[u32]", "u32")
    }

    /// An array of integers of any width and sign, each fitting in i32.
    pub fn get_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>, GgufError> {
        self.get_int_array(key, "arr[i32]", "i32")
    }

    fn get_int_array<T: TryFrom<i128>>(
        &self,
        key: &str,
        expected_arr: &'static str,
        expected: &'static str,
    ) -> Result<Option<Vec<T>>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v {
            Value::Array(t, items) if is_int(*t) => items
                .iter()
                .map(|x| int_value(key, x, expected))
                .collect::<Result<Vec<T>, _>>()
                .map(Some),
            v => Err(Self::wrong_type(key, expected_arr, v)),
        }
    }

    fn get_array(
        &self,
        key: &str,
        expected: &'static str,
        elem: ValueType,
    ) -> Result<Option<&[Value]>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(t, items)) if *t == elem => Ok(Some(items)),
            Some(v) => Err(Self::wrong_type(key, expected, v)),
        }
    }

    /// A human-readable dump: header, every key (values abbreviated), and the
    /// tensor table.
    pub fn summary(&self) -> String {
        summary(self)
    }
}

fn is_int(t: ValueType) -> bool {
    use ValueType::*;
    matches!(t, U8 | I8 | U16 | I16 | U32 | I32 | U64 | I64)
}

fn int_value<T: TryFrom<i128>>(
    key: &str,
    v: &Value,
    expected: &'static str,
) -> Result<T, GgufError> {
    let i = v.as_i128().ok_or_else(|| GgufError::WrongType {
        key: key.to_string(),
        expected,
        found: v.type_name(),
    })?;
    T::try_from(i).map_err(|_| GgufError::OutOfRange {
        key: key.to_string(),
        value: i.to_string(),
        expected,
    })
}

/// `gguf-dump`-like text: header, metadata, tensor table.
pub fn summary(g: &Gguf<'_>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "GGUF v{}, {} bytes, alignment {}, {} metadata entries, {} tensors, data at offset {}",
        g.version,
        g.bytes.len(),
        g.alignment,
        g.kv.len(),
        g.tensors.len(),
        g.data_offset
    );
    for w in &g.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    for (k, v) in g.kv() {
        let _ = writeln!(s, "  {k}: {} = {v}", v.type_name());
    }
    let total: u64 = g.tensors.iter().map(|t| t.n_bytes).sum();
    let _ = writeln!(s, "tensors ({total} bytes of data):");
    for t in &g.tensors {
        let _ = writeln!(
            s,
            "  {:<40} {:<24} {:<6} offset {:>12} bytes {:>12}",
            t.name,
            format!("{:?}", t.dims),
            t.dtype.name(),
            t.offset,
            t.n_bytes
        );
    }
    s
}
