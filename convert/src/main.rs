//! qwen-convert: Hugging Face Qwen-1/Qwen2/Qwen3 checkpoint -> one GGUF v3 file.
//!
//! stdout stays silent; a progress bar (when stderr is a terminal) and the
//! `-v` per-tensor lines go to stderr. Any failure prints one line
//! `error: ...` and exits with code 1 (130 after Ctrl-C), leaving no file.

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quant_formats::GgmlType;
use qwen_convert::convert::{convert, Options, Progress};
use qwen_convert::plan::{parse_type, TensorReport, TypePolicy};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const AFTER_HELP: &str = "\
Types: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_K, q5_K, q6_K (ggml block layouts, ggml's
reference rounding; any case). 1-D tensors (norms, biases) are always f32. For 4/5-bit types the output
matrix (token_embd when the embeddings are tied) is q8_0 unless --output-type says otherwise.
K types are llama.cpp's mixes: q4_K = Q4_K_M (also accepted: q4_K_M), q5_K = Q5_K_M (q5_K_M), q6_K =
Q6_K: output q6_K (q8_0 if its rows are not whole 256-blocks), and for q4_K/q5_K attn_v / attn_qkv /
ffn_down q6_K in llama.cpp's `use_more_bits` layers. A row that is not whole 256-blocks falls back as
llama.cpp does (q4_K -> q5_0, q5_K -> q5_1, q6_K -> q8_0). A row length that is not a multiple of 32
falls back to f16 (f32 if a value exceeds f16's range).

Input: config.json (QWenLMHeadModel, Qwen2ForCausalLM or Qwen3ForCausalLM), model.safetensors or
model.safetensors.index.json + shards (F32/F16/BF16), tokenizer.json + tokenizer_config.json
(Qwen2/3) or qwen.tiktoken (Qwen-1), generation_config.json if present.

The output is written to a temporary file beside OUT and renamed when complete; on error or Ctrl-C
nothing is left behind.";

#[derive(Parser, Debug)]
#[command(
    name = "qwen-convert",
    version,
    about = "Convert a Hugging Face Qwen-1/Qwen2/Qwen3 checkpoint to one quantized GGUF v3 file",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Hugging Face model folder (config.json, safetensors, tokenizer files)
    #[arg(short = 'i', long = "input", value_name = "HF_DIR")]
    input: PathBuf,

    /// Output GGUF file (.qbin / .gguf)
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    output: PathBuf,

    /// Weight type of the 2-D tensors: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_K(_M), q5_K(_M), q6_K
    #[arg(short = 't', long = "type", value_name = "TYPE", default_value = "q4_0", value_parser = type_arg)]
    ty: GgmlType,

    /// Type of the output matrix (token_embd when tied) [default: q8_0 for 4/5-bit TYPE, else TYPE]
    #[arg(long = "output-type", value_name = "TYPE", value_parser = type_arg)]
    output_type: Option<GgmlType>,

    /// Print one line per tensor to stderr: name, shape, type, bytes, quantization RMSE
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,

    /// Do not draw the progress bar
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
}

fn type_arg(s: &str) -> Result<GgmlType, String> {
    parse_type(s).map_err(|e| e.to_string())
}

struct Bar {
    bar: ProgressBar,
    verbose: bool,
}

impl Progress for Bar {
    fn begin(&mut self, total: u64) {
        self.bar.set_length(total);
    }
    fn tensor_start(&mut self, name: &str) {
        self.bar.set_message(name.to_string());
    }
    fn advance(&mut self, n: u64) {
        self.bar.inc(n);
    }
    fn tensor_done(&mut self, r: &TensorReport) {
        if self.verbose {
            self.bar.suspend(|| eprintln!("{r}"));
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // clap's message (up to its usage block) joined into one line.
            let text = e.render().to_string();
            let msg: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let msg = msg.join(" ");
            let msg = msg.trim_start_matches("error: ");
            eprintln!("error: {msg} (see qwen-convert --help)");
            return ExitCode::from(1);
        }
    };

    let cancel = Arc::new(AtomicBool::new(false));
    {
        let c = Arc::clone(&cancel);
        // Without a handler Ctrl-C would kill us before the temp file is removed;
        // if installing fails we still convert, just without that guarantee.
        let _ = ctrlc::set_handler(move || c.store(true, Ordering::SeqCst));
    }

    let target = if cli.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(0), target);
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {percent:>3}% {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut progress = Bar {
        bar,
        verbose: cli.verbose,
    };
    let opts = Options {
        input: cli.input,
        output: cli.output,
        policy: TypePolicy::new(cli.ty, cli.output_type),
        measure_error: cli.verbose,
    };
    let result = convert(&opts, &mut progress, &cancel);
    progress.bar.finish_and_clear();
    match result {
        Ok(summary) => {
            if cli.verbose {
                eprintln!(
                    "wrote {} ({} arch, {} tensors, {} bytes; source dtype {})",
                    opts.output.display(),
                    summary.arch.gguf_name(),
                    summary.reports.len(),
                    summary.n_bytes,
                    summary.config_dtype.as_deref().unwrap_or("not declared")
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            if cancel.load(Ordering::SeqCst) {
                ExitCode::from(130)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
