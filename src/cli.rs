//! What every binary does at its boundary with the user: one-line errors, never a panic trace.

use std::process::ExitCode;

/// A panic is a bug; still keep the one-line `error: …` contract and an exit code below 128.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info.to_string().replace('\n', " ");
        eprintln!("error: internal error (a bug, please report): {msg}");
        std::process::exit(1);
    }));
}

/// Parses the command line. `--help`/`--version` print and give `Err(SUCCESS)`; a usage error
/// prints one `error: … (see --help)` line and gives `Err(1)`.
pub fn parse_args<A: clap::Parser>() -> Result<A, ExitCode> {
    A::try_parse().map_err(|e| {
        use clap::error::ErrorKind;
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        let text = e.to_string();
        let first = text.lines().next().unwrap_or("invalid arguments");
        let first = first.strip_prefix("error: ").unwrap_or(first);
        eprintln!("error: {first} (see --help)");
        ExitCode::from(1)
    })
}
