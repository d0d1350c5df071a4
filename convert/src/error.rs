//! One error type for the whole converter: a single line naming the file and
//! the value at fault (STYLE habit 9). The binary prints it as `error: {msg}`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    pub fn new(msg: impl Into<String>) -> Self {
        // Keep the message on one line whatever the source text contained.
        let msg: String = msg.into();
        Error(msg.replace(['\n', '\r'], " "))
    }
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// `bail!("...{}", x)` returns `Err(Error::new(format!(...)))`.
#[macro_export]
macro_rules! bail {
    ($($t:tt)*) => { return Err($crate::Error::new(format!($($t)*))) };
}
