//! Maps a model file into memory (memmap2; the weights are never copied) and
//! parses it as GGUF with quant_formats' validating reader.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use quant_formats::gguf::Gguf;

use crate::error::ModelError;

/// A mapped model file. `gguf()` borrows from it.
pub struct ModelFile {
    path: PathBuf,
    map: Mmap,
}

impl ModelFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        let file =
            File::open(&path).map_err(|e| ModelError::File(format!("cannot open {shown}: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| ModelError::File(format!("cannot stat {shown}: {e}")))?;
        if !meta.is_file() {
            return Err(ModelError::File(format!("{shown} is not a regular file")));
        }
        // SAFETY: the map is read-only and lives as long as `ModelFile`; all
        // views into it borrow `self`. Like every mmap-based loader (llama.cpp
        // included) we rely on the file not being truncated or rewritten by
        // another process while it is mapped: that would be undefined
        // behaviour (SIGBUS) that no safe API can rule out.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| ModelError::File(format!("cannot map {shown}: {e}")))?;
        Ok(ModelFile { path, map })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Parses the header, metadata and tensor table (bounds all validated).
    pub fn gguf(&self) -> Result<Gguf<'_>, ModelError> {
        Gguf::parse(&self.map).map_err(|source| ModelError::Gguf {
            path: self.path.display().to_string(),
            source,
        })
    }
}
