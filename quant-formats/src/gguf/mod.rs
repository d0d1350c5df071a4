//! GGUF v3 (and v2) files: a zero-copy validating reader and a streaming writer.
//!
//! Layout (spec: ggml-org/ggml `docs/gguf.md`; reference reader
//! `ggml/src/gguf.cpp`), all little-endian:
//! ```text
//! magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
//! n_kv × (key: string, type: u32, value)          string = u64 length + bytes
//! n_tensors × (name: string, n_dims u32, dims: u64 × n_dims, type u32, offset u64)
//! zero padding to `general.alignment` (u32, default 32)
//! data section: tensor bytes at their offsets (each a multiple of the alignment)
//! ```
//! What the reader accepts, beyond ggml's own checks, is documented on [`Gguf::parse`].

mod read;
mod write;

pub use read::{summary, Gguf, MAX_ARRAY_DEPTH, MAX_ARRAY_LEN, MAX_KEY_LEN, MAX_STRING_LEN};
pub use write::{GgufWriter, TensorStream};

use crate::GgmlType;
use std::fmt;

/// "GGUF" read as a little-endian u32.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The version we write.
pub const GGUF_VERSION: u32 = 3;
/// Data alignment when `general.alignment` is absent, and the one we write.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Largest `general.alignment` we accept (ggml takes any power of two; anything
/// above a large page is not a real file).
pub const MAX_ALIGNMENT: u64 = 1 << 20;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// ggml's `GGML_MAX_NAME`: tensor names are shorter than this many bytes.
pub const MAX_TENSOR_NAME: usize = 64;

/// The type tag of a metadata value (`enum gguf_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub const ALL: [ValueType; 13] = [
        Self::U8,
        Self::I8,
        Self::U16,
        Self::I16,
        Self::U32,
        Self::I32,
        Self::F32,
        Self::Bool,
        Self::String,
        Self::Array,
        Self::U64,
        Self::I64,
        Self::F64,
    ];

    pub fn from_tag(tag: u32) -> Option<Self> {
        Self::ALL.get(tag as usize).copied()
    }

    pub const fn tag(self) -> u32 {
        self as u32
    }

    /// gguf.cpp's short names ("u32", "str", "arr", …).
    pub const fn name(self) -> &'static str {
        match self {
            Self::U8 => "u8",
            Self::I8 => "i8",
            Self::U16 => "u16",
            Self::I16 => "i16",
            Self::U32 => "u32",
            Self::I32 => "i32",
            Self::F32 => "f32",
            Self::Bool => "bool",
            Self::String => "str",
            Self::Array => "arr",
            Self::U64 => "u64",
            Self::I64 => "i64",
            Self::F64 => "f64",
        }
    }

    /// Fewest bytes one value of this type takes on disk (a string is at least
    /// its u64 length, an array its u32 type and u64 count).
    pub(crate) const fn min_size(self) -> u64 {
        match self {
            Self::U8 | Self::I8 | Self::Bool => 1,
            Self::U16 | Self::I16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 | Self::String => 8,
            Self::Array => 12,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value. Arrays carry their element type so an empty array can be
/// written; every element must have that type (the writer checks).
///
/// Build values with `From`: `Value::from(32u32)`, `Value::from("gpt2")`,
/// `Value::from(vec!["a".to_string()])`, `Value::from(vec![1u32, 2])`, …
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::F32(_) => ValueType::F32,
            Self::Bool(_) => ValueType::Bool,
            Self::String(_) => ValueType::String,
            Self::Array(..) => ValueType::Array,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F64(_) => ValueType::F64,
        }
    }

    /// Short description of the type for messages: "u32", "arr[str]".
    pub fn type_name(&self) -> String {
        match self {
            Self::Array(t, _) => format!("arr[{t}]"),
            v => v.value_type().name().to_string(),
        }
    }

    /// The value as an integer when it is one (any width or sign).
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v as i128,
            Self::I8(v) => v as i128,
            Self::U16(v) => v as i128,
            Self::I16(v) => v as i128,
            Self::U32(v) => v as i128,
            Self::I32(v) => v as i128,
            Self::U64(v) => v as i128,
            Self::I64(v) => v as i128,
            _ => return None,
        })
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// Array elements, or `None` for a scalar.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Self::Array(_, v) => Some(v),
            _ => None,
        }
    }
}

/// How many array elements `Display` shows before eliding the rest.
const DISPLAY_ITEMS: usize = 8;
/// How many chars of a string `Display` shows before eliding the rest.
const DISPLAY_CHARS: usize = 160;

fn write_str_abbrev(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    let n = s.chars().count();
    if n <= DISPLAY_CHARS {
        write!(f, "{s:?}")
    } else {
        let head: String = s.chars().take(DISPLAY_CHARS).collect();
        write!(f, "{head:?}… ({n} chars)")
    }
}

/// A one-line rendering for dumps: long strings and arrays are abbreviated,
/// e.g. `[str; 151643] ["!", "\"", "#", …]`.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::U8(v) => write!(f, "{v}"),
            Self::I8(v) => write!(f, "{v}"),
            Self::U16(v) => write!(f, "{v}"),
            Self::I16(v) => write!(f, "{v}"),
            Self::U32(v) => write!(f, "{v}"),
            Self::I32(v) => write!(f, "{v}"),
            Self::U64(v) => write!(f, "{v}"),
            Self::I64(v) => write!(f, "{v}"),
            Self::F32(v) => write!(f, "{v:?}"),
            Self::F64(v) => write!(f, "{v:?}"),
            Self::Bool(v) => write!(f, "{v}"),
            Self::String(s) => write_str_abbrev(f, s),
            Self::Array(t, items) => {
                write!(f, "[{t}; {}] [", items.len())?;
                for (i, v) in items.iter().take(DISPLAY_ITEMS).enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                if items.len() > DISPLAY_ITEMS {
                    f.write_str(", …")?;
                }
                f.write_str("]")
            }
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::$variant(v)
            }
        }
        impl From<Vec<$t>> for Value {
            fn from(v: Vec<$t>) -> Self {
                Value::Array(ValueType::$variant, v.into_iter().map(Value::$variant).collect())
            }
        }
        impl From<&[$t]> for Value {
            fn from(v: &[$t]) -> Self {
                Value::Array(ValueType::$variant, v.iter().copied().map(Value::$variant).collect())
            }
        }
    )*};
}
value_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
    bool => Bool, u64 => U64, i64 => I64, f64 => F64);

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::String(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(v.to_string())
    }
}
impl From<Vec<String>> for Value {
    fn from(v: Vec<String>) -> Self {
        Value::Array(
            ValueType::String,
            v.into_iter().map(Value::String).collect(),
        )
    }
}
impl From<Vec<&str>> for Value {
    fn from(v: Vec<&str>) -> Self {
        Value::Array(ValueType::String, v.into_iter().map(Value::from).collect())
    }
}
impl From<&[String]> for Value {
    fn from(v: &[String]) -> Self {
        Value::Array(
            ValueType::String,
            v.iter().map(|s| Value::String(s.clone())).collect(),
        )
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (contiguous), e.g. a
    /// `[n_vocab, n_embd]` matrix has dims `[n_embd, n_vocab]`.
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Byte offset inside the data section (a multiple of the alignment).
    pub offset: u64,
    /// Bytes of tensor data (no padding).
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements (product of dims; 1 for zero dims).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Row length, `dims[0]` (1 for a 0-dim tensor).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }
}

/// Elements and bytes of a tensor of `dims` and `dtype`, or why not: the
/// element count must fit in i64 (as ggml requires) and a row must be a whole
/// number of blocks.
pub(crate) fn tensor_size(name: &str, dims: &[u64], dtype: GgmlType) -> Result<u64, GgufError> {
    if dims.len() > MAX_DIMS {
        return Err(GgufError::TooManyDims {
            tensor: name.to_string(),
            n_dims: dims.len() as u64,
        });
    }
    let mut n: u64 = 1;
    for &d in dims {
        n = n
            .checked_mul(d)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| GgufError::ElementCountOverflow {
                tensor: name.to_string(),
                dims: dims.to_vec(),
            })?;
    }
    let row = dims.first().copied().unwrap_or(1);
    let bs = dtype.block_size() as u64;
    if row % bs != 0 {
        return Err(GgufError::RowNotBlockMultiple {
            tensor: name.to_string(),
            dtype,
            row,
            block_size: bs,
        });
    }
    (n / bs)
        .checked_mul(dtype.type_size() as u64)
        .ok_or_else(|| GgufError::ElementCountOverflow {
            tensor: name.to_string(),
            dims: dims.to_vec(),
        })
}

/// Everything that can be wrong with a GGUF file, a metadata lookup, or a write.
/// Messages name the value and the limit.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("file truncated: {what} at offset {offset} needs {need} bytes, file has {left} left")]
    Truncated {
        what: String,
        offset: u64,
        need: u64,
        left: u64,
    },
    #[error(
        "not a GGUF file: magic bytes {found:02x?} ({}), expected \"GGUF\"",
        String::from_utf8_lossy(found)
    )]
    BadMagic { found: [u8; 4] },
    #[error("GGUF version 1 is not supported (only versions 2 and 3); re-convert the model with a current tool")]
    VersionOne,
    #[error("GGUF version {0:#x} looks byte-swapped: big-endian GGUF files are not supported")]
    BigEndian(u32),
    #[error("unsupported GGUF version {0} (this reader knows versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error(
        "header declares {count} {what}, but the {left} bytes after it can hold at most {max}"
    )]
    CountTooLarge {
        what: &'static str,
        count: u64,
        left: u64,
        max: u64,
    },
    #[error("{what}: string length {len} exceeds the limit of {limit} bytes")]
    StringTooLong { what: String, len: u64, limit: u64 },
    #[error("{what}: string is not valid UTF-8 ({detail})")]
    InvalidUtf8 { what: String, detail: String },
    #[error("metadata key #{index} is empty")]
    EmptyKey { index: u64 },
    #[error("duplicate metadata key '{0}'")]
    DuplicateKey(String),
    #[error("key '{key}': unknown value type tag {tag} (known: 0..=12)")]
    UnknownValueType { key: String, tag: u32 },
    #[error("key '{key}': array of {len} elements exceeds the limit of {limit}")]
    ArrayTooLong { key: String, len: u64, limit: u64 },
    #[error("key '{key}': arrays nested {depth} deep exceed the limit of {limit}")]
    ArrayTooDeep {
        key: String,
        depth: usize,
        limit: usize,
    },
    #[error("key '{key}': bool byte {byte:#04x} at offset {offset} is neither 0 nor 1")]
    BadBool { key: String, byte: u8, offset: u64 },
    #[error("general.alignment must be a u32, found {found}")]
    AlignmentType { found: String },
    #[error("general.alignment {0} is not a power of two in 1..={MAX_ALIGNMENT}")]
    BadAlignment(u64),
    #[error("tensor #{index} '{name}': name is {len} bytes, ggml's limit is {} bytes", MAX_TENSOR_NAME - 1)]
    TensorNameTooLong {
        index: u64,
        name: String,
        len: usize,
    },
    #[error("duplicate tensor name '{0}'")]
    DuplicateTensor(String),
    #[error("tensor '{tensor}' has {n_dims} dimensions, ggml's limit is {MAX_DIMS}")]
    TooManyDims { tensor: String, n_dims: u64 },
    #[error("tensor '{tensor}' with dims {dims:?} has more than 2^63-1 elements or bytes")]
    ElementCountOverflow { tensor: String, dims: Vec<u64> },
    #[error("tensor '{tensor}': unknown ggml type tag {tag}")]
    UnknownTensorType { tensor: String, tag: u32 },
    #[error("tensor '{tensor}' of type {dtype}: row length {row} is not a multiple of the block size {block_size}")]
    RowNotBlockMultiple {
        tensor: String,
        dtype: GgmlType,
        row: u64,
        block_size: u64,
    },
    #[error("tensor '{tensor}': offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error("tensor {tensor} needs {need} bytes at offset {offset}, file has {left} left")]
    OutOfBounds {
        tensor: String,
        need: u64,
        offset: u64,
        left: u64,
    },
    #[error("data section starts at offset {offset} (after padding to {alignment}), past the end of the {len}-byte file")]
    DataSectionPastEnd {
        offset: u64,
        alignment: u64,
        len: u64,
    },
    #[error(
        "tensors '{a}' (data bytes {a_start}..{a_end}) and '{b}' (from byte {b_start}) overlap"
    )]
    Overlap {
        a: String,
        a_start: u64,
        a_end: u64,
        b: String,
        b_start: u64,
    },
    #[error("key '{key}' is {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("key '{key}': value {value} does not fit in {expected}")]
    OutOfRange {
        key: String,
        value: String,
        expected: &'static str,
    },
    #[error("key '{key}': array element {index} is {found}, but the array holds {expected}")]
    MixedArray {
        key: String,
        index: usize,
        expected: ValueType,
        found: String,
    },
    #[error("key '{key}' is {len} bytes long, the limit is {limit}")]
    KeyTooLong { key: String, len: usize, limit: u64 },
    #[error("tensor '{name}' was already declared")]
    DuplicateDeclaration { name: String },
    #[error("expected tensor '{expected}' next (declared order), got '{got}'")]
    WrongTensorOrder { expected: String, got: String },
    #[error("tensor '{name}' was declared as {expected} bytes, got {got} bytes")]
    WrongTensorSize {
        name: String,
        expected: u64,
        got: u64,
    },
    #[error("all {declared} declared tensors were already written; got an extra tensor '{name}'")]
    ExtraTensor { declared: usize, name: String },
    #[error("tensor '{name}' is incomplete: {written} of {expected} bytes written")]
    IncompleteTensor {
        name: String,
        written: u64,
        expected: u64,
    },
    #[error("{} declared tensor(s) were never written: {}", missing.len(), missing.join(", "))]
    MissingTensors { missing: Vec<String> },
    #[error("I/O error while writing GGUF: {0}")]
    Io(#[from] std::io::Error),
}
