//! Maps a model file into memory (memmap2; the weights are never copied) and
//! parses it as GGUF with quant_formats' validating reader. [`ModelFile::read`]
//! instead reads the file into anonymous memory backed by 2 MiB pages
//! (`--no-mmap`): decode then misses the TLB once per 2 MiB of weights instead of
//! once per 4 KiB.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut, MmapOptions};
use quant_formats::gguf::Gguf;

use crate::error::ModelError;

/// A mapped (or read) model file. `gguf()` borrows from it.
pub struct ModelFile {
    path: PathBuf,
    map: Backing,
    /// (device, inode) of the mapped file, to refuse writing output onto it.
    id: Option<(u64, u64)>,
    /// What the user should know about how the file was brought in.
    warnings: Vec<String>,
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

/// Where the file's bytes live.
enum Backing {
    /// The file mapped read-only: pages shared with the page cache.
    Mapped(Mmap),
    /// A copy in anonymous memory: the file's `len` bytes from `off`, the first
    /// 2 MiB boundary of `buf` (so huge pages cover the data from its first byte).
    Read {
        buf: MmapMut,
        off: usize,
        len: usize,
    },
}

/// Size (and alignment) of an x86-64 / aarch64 huge page.
const HUGE_PAGE: usize = 2 << 20;

/// Bytes of the file each reading thread asks for at once.
const READ_PIECE: usize = 8 << 20;

impl ModelFile {
    /// Maps the file read-only (the default: loads in milliseconds, shares pages
    /// with every other process that maps it).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        Self::open_with(path.as_ref(), false)
    }

    /// Reads the whole file into anonymous memory advised for transparent huge
    /// pages (`madvise(MADV_HUGEPAGE)`, Linux), with the current rayon pool's
    /// threads. Slower to load than [`ModelFile::open`] (a copy of the file), but a
    /// file mapping is backed by 4 KiB pages unless the page cache happens to hold
    /// it in 2 MiB folios, and decode streams every weight once per token: one TLB
    /// miss per 4 KiB cost a sixth of decode speed here (0.5B q4_0, 2 threads).
    /// Resident memory is the copy; the file is not kept mapped.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        Self::open_with(path.as_ref(), true)
    }

    fn open_with(path: &Path, copy: bool) -> Result<Self, ModelError> {
        let path = path.to_path_buf();
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
        if copy {
            let map = read_huge(&file, meta.len(), &shown)?;
            let warnings = match thp_setting().as_deref() {
                Some("never") => vec![format!(
                    "transparent huge pages are off ({THP_ENABLED}: never): --no-mmap copies the model into 4 KiB pages, which decodes no faster than the mapping"
                )],
                _ => Vec::new(),
            };
            return Ok(ModelFile {
                path,
                map,
                id,
                warnings,
            });
        }
        // SAFETY: the map is read-only and lives as long as `ModelFile`; all
        // views into it borrow `self`. Like every mmap-based loader (llama.cpp
        // included) we rely on the file not being truncated or rewritten by
        // another process while it is mapped: that would be undefined
        // behaviour (SIGBUS) that no safe API can rule out.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| ModelError::File(format!("cannot map {shown}: {e}")))?;
        Ok(ModelFile {
            path,
            map: Backing::Mapped(map),
            id,
            warnings: Vec::new(),
        })
    }

    /// Notes for the user about how the file was brought in (e.g. `--no-mmap` without
    /// transparent huge pages), one line each, without the `warning: ` prefix.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// True when the bytes are a copy in anonymous memory ([`ModelFile::read`]).
    pub fn is_copy(&self) -> bool {
        matches!(self.map, Backing::Read { .. })
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
        match &self.map {
            Backing::Mapped(m) => m,
            Backing::Read { buf, off, len } => &buf[*off..*off + *len],
        }
    }

    /// Parses the header, metadata and tensor table (bounds all validated).
    pub fn gguf(&self) -> Result<Gguf<'_>, ModelError> {
        Gguf::parse(self.bytes()).map_err(|source| ModelError::Gguf {
            path: self.path.display().to_string(),
            source,
        })
    }
}

/// The `len` bytes of `file` in anonymous memory that starts on a 2 MiB boundary
/// and is advised for huge pages, read in pieces of [`READ_PIECE`] bytes by the
/// current rayon pool's threads.
fn read_huge(file: &File, len: u64, shown: &str) -> Result<Backing, ModelError> {
    use rayon::prelude::*;
    let len = usize::try_from(len).map_err(|_| {
        ModelError::File(format!(
            "{shown} is {len} bytes, more than this machine can address"
        ))
    })?;
    let total = len
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| ModelError::File(format!("{shown} is {len} bytes, too large to read")))?;
    let mut buf = MmapOptions::new().len(total).map_anon().map_err(|e| {
        ModelError::File(format!(
            "cannot allocate {total} bytes to read {shown} into (--no-mmap): {e}"
        ))
    })?;
    // Best effort: without transparent huge pages (other kernels, THP "never")
    // the copy is still correct, only not faster.
    #[cfg(target_os = "linux")]
    let _ = buf.advise(memmap2::Advice::HugePage);
    let off = (buf.as_ptr() as usize).next_multiple_of(HUGE_PAGE) - buf.as_ptr() as usize;
    let dst = &mut buf[off..off + len];
    #[cfg(unix)]
    let done = {
        use std::os::unix::fs::FileExt;
        dst.par_chunks_mut(READ_PIECE)
            .enumerate()
            .try_for_each(|(i, piece)| file.read_exact_at(piece, (i * READ_PIECE) as u64))
    };
    #[cfg(not(unix))]
    let done = {
        use std::io::Read;
        (&*file).read_exact(dst)
    };
    done.map_err(|e| ModelError::File(format!("cannot read {shown}: {e}")))?;
    Ok(Backing::Read { buf, off, len })
}

/// Where Linux says whether anonymous memory may get transparent huge pages.
const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// The selected transparent-huge-page mode (`always`, `madvise` or `never`), if the
/// system says.
fn thp_setting() -> Option<String> {
    parse_thp_setting(&std::fs::read_to_string(THP_ENABLED).ok()?).map(str::to_string)
}

/// The bracketed word of a `transparent_hugepage/enabled` line
/// ("always [madvise] never" -> "madvise").
fn parse_thp_setting(s: &str) -> Option<&str> {
    let start = s.find('[')? + 1;
    let len = s[start..].find(']')?;
    Some(&s[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::parse_thp_setting;

    #[test]
    fn thp_setting_is_the_bracketed_word() {
        assert_eq!(
            parse_thp_setting("always [madvise] never\n"),
            Some("madvise")
        );
        assert_eq!(parse_thp_setting("[always] madvise never"), Some("always"));
        assert_eq!(parse_thp_setting("always madvise [never]"), Some("never"));
        assert_eq!(parse_thp_setting("always madvise never"), None);
        assert_eq!(parse_thp_setting("[unterminated"), None);
    }
}
