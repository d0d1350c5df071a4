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
    /// (device, inode) of the mapped file, to refuse writing output onto it.
    id: Option<(u64, u64)>,
}

/// What a path that is not a regular file is, for the error message.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "not a regular file"
}

/// (device, inode) of a file's metadata; None where the platform has none.
fn file_id(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

impl ModelFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        // Stat before opening: opening a FIFO for reading blocks until a writer
        // comes, and a directory or a device is no model either. Symlinks are
        // followed, so a link to a regular file is fine.
        let meta = std::fs::metadata(&path)
            .map_err(|e| ModelError::File(format!("cannot open {shown}: {e}")))?;
        if !meta.is_file() {
            return Err(ModelError::File(format!(
                "{shown} is {} (the model must be a regular file)",
                kind_of(&meta)
            )));
        }
        let file =
            File::open(&path).map_err(|e| ModelError::File(format!("cannot open {shown}: {e}")))?;
        // Again on the opened file: the path may have been replaced in between.
        let meta = file
            .metadata()
            .map_err(|e| ModelError::File(format!("cannot stat {shown}: {e}")))?;
        if !meta.is_file() {
            return Err(ModelError::File(format!(
                "{shown} is {} (the model must be a regular file)",
                kind_of(&meta)
            )));
        }
        let id = file_id(&meta);
        // SAFETY: the map is read-only and lives as long as `ModelFile`; all
        // views into it borrow `self`. Like every mmap-based loader (llama.cpp
        // included) we rely on the file not being truncated or rewritten by
        // another process while it is mapped: that would be undefined
        // behaviour (SIGBUS) that no safe API can rule out.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| ModelError::File(format!("cannot map {shown}: {e}")))?;
        Ok(ModelFile { path, map, id })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when `other` names this very file (same device and inode: through a
    /// symlink, a hard link or another spelling of the path). Writing output
    /// there would destroy the model while it is mapped. A path that does not
    /// exist yet is not the model.
    pub fn is_same_file(&self, other: &Path) -> bool {
        match (self.id, std::fs::metadata(other)) {
            (Some(id), Ok(m)) => file_id(&m) == Some(id),
            (None, Ok(_)) => match (self.path.canonicalize(), other.canonicalize()) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            },
            (_, Err(_)) => false,
        }
    }

    /// Err naming `what` (a flag) when `out` is the model file itself.
    pub fn refuse_as_output(&self, out: &Path, what: &str) -> Result<(), String> {
        if self.is_same_file(out) {
            return Err(format!(
                "{what} {} is the model file {}; refusing to overwrite it",
                out.display(),
                self.path.display()
            ));
        }
        Ok(())
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
