//! Metadata values as the converter builds them, independent of the GGUF
//! writer; `convert.rs` turns them into `quant_formats::gguf::Value`.

#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    ArrStr(Vec<String>),
    ArrI32(Vec<i32>),
    ArrU32(Vec<u32>),
}

/// Ordered key/value list (GGUF keeps file order; we write in this order).
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub entries: Vec<(String, MetaValue)>,
}

impl Meta {
    pub fn push(&mut self, key: impl Into<String>, value: MetaValue) {
        let key = key.into();
        // A later value for the same key replaces the earlier one in place.
        if let Some(e) = self.entries.iter_mut().find(|(k, _)| *k == key) {
            e.1 = value;
        } else {
            self.entries.push((key, value));
        }
    }
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}
