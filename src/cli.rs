//! What every binary does at its boundary with the user: one-line errors, never a panic trace.

use std::path::Path;
use std::process::ExitCode;

use crate::error::ModelError;
use crate::loader::ModelFile;

/// A panic is a bug; still keep the one-line `error: …` contract and an exit code below 128.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info.to_string().replace('\n', " ");
        eprintln!("error: internal error (a bug, please report): {msg}");
        std::process::exit(1);
    }));
}

/// llama.cpp spells some flags with one dash and several letters (`-ctk` / `-ctv`,
/// llama-bench's `-mmp` and `-lm`), which a clap parser reads as `-c tk`. Returns
/// `args` with those words spelled `--cache-type-k` / `--cache-type-v` / `--mmap` /
/// `--load-mode`; everything else, and anything after a `--`, unchanged.
pub fn expand_llama_flag_aliases(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let mut rest = false;
    args.into_iter()
        .map(|a| match a.to_str() {
            _ if rest => a,
            Some("--") => {
                rest = true;
                a
            }
            Some("-ctk") => "--cache-type-k".into(),
            Some("-ctv") => "--cache-type-v".into(),
            Some("-mmp") => "--mmap".into(),
            Some("-lm") => "--load-mode".into(),
            _ => a,
        })
        .collect()
}

/// Parses the command line (with llama.cpp's `-ctk`/`-ctv`/`-mmp`/`-lm`, see
/// [`expand_llama_flag_aliases`]). `--help`/`--version` print and give `Err(SUCCESS)`;
/// a usage error prints one `error: … (see --help)` line and gives `Err(1)`.
pub fn parse_args<A: clap::Parser>() -> Result<A, ExitCode> {
    A::try_parse_from(expand_llama_flag_aliases(std::env::args_os())).map_err(|e| {
        use clap::error::ErrorKind;
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        eprintln!("error: {} (see --help)", usage_error_line(&e.to_string()));
        ExitCode::from(1)
    })
}

/// clap's usage error as one line: its first paragraph, with the indented
/// lines that continue it (the names of missing arguments) joined on.
/// "error: the following required arguments were not provided:\n  --model <MODEL>\n\nUsage: …"
/// becomes "the following required arguments were not provided: --model <MODEL>".
pub fn usage_error_line(text: &str) -> String {
    let mut lines = text.lines().take_while(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    let mut out = first.strip_prefix("error: ").unwrap_or(first).to_string();
    let rest: Vec<&str> = lines.map(str::trim).collect();
    if !rest.is_empty() {
        out.push_str(if out.ends_with(':') { " " } else { ": " });
        out.push_str(&rest.join(", "));
    }
    if out.is_empty() {
        out.push_str("invalid arguments");
    }
    out
}

/// How qwen-run and qwen-bench bring the model file in: mapped (the default) or
/// read into memory on 2 MiB pages ([`ModelFile::read`]), in llama.cpp's three
/// spellings.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LoadArgs {
    /// Read the model into memory backed by 2 MiB pages instead of mapping the file
    /// (as llama.cpp's --no-mmap): slower to load, faster to decode.
    #[arg(long = "no-mmap", conflicts_with_all = ["mmap", "load_mode"])]
    pub no_mmap: bool,
    /// 1: map the model file (the default); 0: as --no-mmap (also -mmp, as in llama-bench).
    #[arg(long = "mmap", value_name = "0|1", value_parser = clap::value_parser!(u8).range(0..=1))]
    pub mmap: Option<u8>,
    /// mmap or auto: map the model file (the default); none: as --no-mmap (also -lm,
    /// llama-bench's newer spelling of -mmp).
    #[arg(long = "load-mode", value_name = "MODE", conflicts_with = "mmap",
          value_parser = ["auto", "mmap", "none"])]
    pub load_mode: Option<String>,
}

impl LoadArgs {
    /// True when the flags ask for a copy instead of a mapping.
    pub fn copy(&self) -> bool {
        self.no_mmap || self.mmap == Some(0) || self.load_mode.as_deref() == Some("none")
    }

    /// Opens `path` as the flags say; prints the file's warnings on stderr.
    pub fn open(&self, path: &Path) -> Result<ModelFile, ModelError> {
        let file = if self.copy() {
            ModelFile::read(path)
        } else {
            ModelFile::open(path)
        }?;
        for w in file.warnings() {
            eprintln!("warning: {w}");
        }
        Ok(file)
    }
}
