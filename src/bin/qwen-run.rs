//! qwen-run: evaluate, generate with, tokenize for, or chat with a qbin/GGUF model.
//!
//! Every failure is one line `error: …` on stderr and exit code 1.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use quant_formats::gguf::Gguf;

use qwen::model::{KvType, Model};
use qwen::sampler::{GenerationDefaults, Sampler, SamplerParams};
use qwen::tokenizer::{StreamDecoder, Tokenizer};
use qwen::ModelFile;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Raw completion of -p without a chat template.
    Generate,
    /// One chat turn with -p, or an interactive chat with -i.
    Chat,
}

#[derive(Parser, Debug)]
#[command(
    name = "qwen-run",
    version,
    about = "Run Qwen models stored as qbin/GGUF files on the CPU"
)]
struct Args {
    /// Model file (qbin/GGUF v3).
    #[arg(short = 'f', long = "model", visible_short_alias = 'm')]
    model: PathBuf,
    /// Evaluate these comma-separated ids as one sequence from position 0 (with --dump-logits).
    #[arg(long, value_name = "ID,ID,...")]
    token_ids: Option<String>,
    /// Write the logits of every --token-ids position as float32 .npy [n_ids, n_vocab].
    #[arg(long, value_name = "OUT.npy")]
    dump_logits: Option<PathBuf>,
    /// With --token-ids: also write every named intermediate (inp_embd,
    /// attn_norm-N, Qcur-N, Kcur-N, Vcur-N, kqv_out-N, ffn_inp-N, ffn_out-N,
    /// l_out-N, result_norm) as DIR/NAME.npy [n_ids, width], for comparing
    /// layer by layer with a PyTorch dump.
    #[arg(long, value_name = "DIR", requires = "token_ids")]
    dump_layers: Option<PathBuf>,
    /// generate = raw completion; chat = chat template (default).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Prompt (raw text with --mode generate, the user message otherwise).
    #[arg(short = 'p', long)]
    prompt: Option<String>,
    /// Interactive chat.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// System prompt for chat.
    #[arg(long)]
    system: Option<String>,
    /// Tokens to generate at most (default, -1 or -2: until end of text or a full context).
    #[arg(short = 'n', long = "n-predict", allow_negative_numbers = true)]
    n_predict: Option<i64>,
    /// Sampling temperature; 0 or negative = greedy (as llama.cpp).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_temp)]
    temp: Option<f32>,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    min_p: Option<f32>,
    /// Repetition penalty, in (0, 100]; 1 = off.
    #[arg(long, allow_negative_numbers = true)]
    repeat_penalty: Option<f32>,
    /// Tokens the repeat penalty looks back over (0 = off, -1 = the whole context;
    /// default 64, or the whole context for a penalty from the file's HF generation config).
    #[arg(long, allow_negative_numbers = true)]
    repeat_last_n: Option<i64>,
    /// Stop generating when this text appears (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Random seed for sampling (default or -1: a random one; -v prints it).
    #[arg(short = 's', long, allow_negative_numbers = true)]
    seed: Option<i64>,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Context size in tokens (default: min(4096, training context); 0 = training context).
    #[arg(short = 'c', long = "ctx-size")]
    ctx_size: Option<usize>,
    /// Tokens per prefill chunk (128: prefill at full GEMM speed, ~15 MB more
    /// activations than 32 on a 1.5B model; llama.cpp's n_ubatch is 512).
    #[arg(short = 'b', long = "batch-size", default_value_t = 128)]
    batch_size: usize,
    /// Kernel level: scalar, avx2, avx512, neon (default: the best this CPU has).
    #[arg(long)]
    kernels: Option<String>,
    /// KV cache type of the keys (also -ctk): f16 | f32 (default: f32 for f32
    /// weight files, whose logits are held to 1e-3 of transformers; else f16).
    #[arg(long = "cache-type-k", value_name = "TYPE", value_parser = parse_kv_type)]
    cache_type_k: Option<KvType>,
    /// KV cache type of the values (also -ctv): f16 | f32 (default: as for the keys).
    #[arg(long = "cache-type-v", value_name = "TYPE", value_parser = parse_kv_type)]
    cache_type_v: Option<KvType>,
    /// Read stdin as UTF-8 text and print its token ids as a JSON array.
    #[arg(long, conflicts_with_all = ["detokenize", "token_ids"])]
    tokenize: bool,
    /// Read a JSON array of token ids from stdin and print the text.
    #[arg(long, conflicts_with_all = ["tokenize", "token_ids"])]
    detokenize: bool,
    /// Scan every tensor for NaN/Inf and report; exit 1 if any holds one.
    #[arg(long)]
    check_tensors: bool,
    #[command(flatten)]
    load: qwen::cli::LoadArgs,
    /// Print the kernel level and the model config on stderr.
    #[arg(short = 'v', long)]
    verbose: bool,
}

type Res<T> = Result<T, String>;

/// The file's tokenizer; what it had to assume is shown once on stderr.
fn load_tokenizer(g: &Gguf) -> Res<Tokenizer> {
    let tok = Tokenizer::from_gguf(g).map_err(|e| e.to_string())?;
    for w in tok.warnings() {
        eprintln!("warning: {w}");
    }
    Ok(tok)
}

fn parse_kv_type(s: &str) -> Res<KvType> {
    s.parse()
}

/// `--temp`: a negative temperature is 0 (greedy), as llama.cpp's
/// `temp = std::max(temp, 0.0f)` in common/arg.cpp; NaN is left to the range check.
fn parse_temp(s: &str) -> Res<f32> {
    let v: f32 = s
        .trim()
        .parse()
        .map_err(|e| format!("'{s}' is not a number: {e}"))?;
    Ok(if v < 0.0 { 0.0 } else { v })
}

fn main() -> ExitCode {
    qwen::cli::install_panic_hook();
    let args: Args = match qwen::cli::parse_args() {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", e.replace('\n', " "));
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Res<ExitCode> {
    if let Some(t) = args.threads {
        if t == 0 || t > 1024 {
            return Err(format!("--threads {t} is outside 1..=1024"));
        }
    }
    // Everything runs on a pool worker, so each parallel call of decode is taken up
    // by the pool directly (see `run_on_pool`).
    qwen::kernels::run_on_pool(args.threads, || run_in_pool(args))?
}

fn run_in_pool(args: Args) -> Res<ExitCode> {
    let level = qwen::kernels::select(args.kernels.as_deref())?;

    let t_load = Instant::now();
    let file = args.load.open(&args.model).map_err(|e| e.to_string())?;
    let g = file.gguf().map_err(|e| e.to_string())?;

    if args.check_tensors {
        let bad = qwen::weights::scan_non_finite(&g).map_err(|e| e.to_string())?;
        for b in &bad {
            eprintln!(
                "tensor {} ({}): {} NaN and {} Inf among {} values",
                b.name, b.dtype, b.n_nan, b.n_inf, b.n_elements
            );
        }
        if !bad.is_empty() {
            return Err(format!(
                "{} of {} tensors hold NaN/Inf values",
                bad.len(),
                g.tensors.len()
            ));
        }
        eprintln!("all {} tensors are finite", g.tensors.len());
        let other = args.token_ids.is_some()
            || args.prompt.is_some()
            || args.interactive
            || args.tokenize
            || args.detokenize;
        if !other {
            return Ok(ExitCode::SUCCESS);
        }
    }

    if args.tokenize || args.detokenize {
        let tok = load_tokenizer(&g)?;
        return tokenize_mode(&tok, args.tokenize).map(|()| ExitCode::SUCCESS);
    }

    let model = Model::load(&g).map_err(|e| e.to_string())?;
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let cfg = &model.config;
    if args.verbose {
        eprintln!("kernels: {level}");
        eprintln!(
            "loaded {} ({} MiB, {} tensors, {}) in {load_ms:.1} ms",
            file.path().display(),
            file.bytes().len() >> 20,
            g.tensors.len(),
            if file.is_copy() {
                "read into huge pages"
            } else {
                "mmap"
            }
        );
        eprintln!(
            "model: {} arch={} n_vocab={} n_embd={} n_layer={} n_head={} n_head_kv={} head_dim={} n_ff={} n_ctx_train={} rope_dim={} rope_base={} eps={} tied_output={}{}",
            cfg.name.as_deref().unwrap_or("(unnamed)"),
            cfg.arch.name(),
            cfg.n_vocab,
            cfg.n_embd,
            cfg.n_layer,
            cfg.n_head,
            cfg.n_head_kv,
            cfg.head_dim,
            cfg.n_ff,
            cfg.n_ctx_train,
            cfg.rope_dim,
            cfg.rope_base,
            cfg.norm_eps,
            model.weights.tied,
            if cfg.use_dynamic_ntk || cfg.use_logn_attn {
                format!(
                    " dynamic_ntk={} logn_attn={} seq_length={}",
                    cfg.use_dynamic_ntk, cfg.use_logn_attn, cfg.qwen_seq_length
                )
            } else {
                String::new()
            }
        );
    }
    if args.batch_size == 0 || args.batch_size > 4096 {
        return Err(format!(
            "--batch-size {} is outside 1..=4096",
            args.batch_size
        ));
    }

    if let Some(ids) = &args.token_ids {
        let out = args
            .dump_logits
            .as_ref()
            .ok_or("--token-ids needs --dump-logits OUT.npy")?;
        // Before any work: writing there would destroy the mapped model.
        file.refuse_as_output(out, "--dump-logits")?;
        let ids = parse_ids(ids, cfg.n_vocab_embd)?;
        let n_ctx = context_size(&args, cfg.n_ctx_train, ids.len())?;
        let to = DumpTo {
            model_file: &file,
            logits: out,
            layers: args.dump_layers.as_deref(),
        };
        return dump_logits(
            &model,
            &ids,
            n_ctx,
            args.batch_size,
            to,
            kv_types(&args, &model),
        )
        .map(|()| ExitCode::SUCCESS);
    }
    if args.dump_logits.is_some() {
        return Err("--dump-logits needs --token-ids".into());
    }

    let mode = args.mode.unwrap_or(Mode::Chat);
    if mode == Mode::Generate {
        if args.interactive {
            return Err("--mode generate does not take -i (use --mode chat)".into());
        }
        let prompt = args
            .prompt
            .as_deref()
            .ok_or("--mode generate needs -p PROMPT")?;
        let tok = load_tokenizer(&g)?;
        let n_ctx = context_size(&args, cfg.n_ctx_train, 0)?;
        let params = sampler_params(&args, &g, n_ctx)?;
        return generate(&model, &tok, &g, &args, prompt, n_ctx, params)
            .map(|()| ExitCode::SUCCESS);
    }

    if !args.interactive && args.prompt.is_none() {
        return Err(
            "nothing to do: give -p PROMPT, -i, --token-ids, --tokenize, --detokenize or --check-tensors"
                .into(),
        );
    }
    let tok = load_tokenizer(&g)?;
    let n_ctx = context_size(&args, cfg.n_ctx_train, 0)?;
    let params = sampler_params(&args, &g, n_ctx)?;
    chat(&model, &tok, &g, &args, n_ctx, params).map(|()| ExitCode::SUCCESS)
}

/// The context size: -c (0 = training context) or min(4096, training context),
/// at least `min_needed` when -c is not given. Asking more than the model was
/// trained on is allowed but said.
fn context_size(args: &Args, n_ctx_train: usize, min_needed: usize) -> Res<usize> {
    const MAX: usize = 1 << 20;
    let n = match args.ctx_size {
        Some(0) => n_ctx_train,
        Some(c) => c,
        None => n_ctx_train.min(4096).max(min_needed),
    };
    if n > MAX {
        return Err(format!("--ctx-size {n} is above the limit {MAX}"));
    }
    if n > n_ctx_train {
        eprintln!(
            "warning: context size {n} exceeds the model's training context {n_ctx_train}; quality may drop past it"
        );
    }
    Ok(n)
}

fn parse_ids(s: &str, n_vocab: usize) -> Res<Vec<u32>> {
    let ids: Vec<u32> = s
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<u32>()
                .map_err(|_| format!("--token-ids: '{x}' is not a token id"))
        })
        .collect::<Res<_>>()?;
    if ids.is_empty() {
        return Err("--token-ids: no ids given".into());
    }
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= n_vocab) {
        return Err(format!(
            "--token-ids: id {bad} is out of range (the model has {n_vocab} embeddings)"
        ));
    }
    Ok(ids)
}

/// Where `--token-ids` writes, and the model file none of it may overwrite.
struct DumpTo<'p> {
    model_file: &'p ModelFile,
    /// --dump-logits OUT.npy
    logits: &'p std::path::Path,
    /// --dump-layers DIR
    layers: Option<&'p std::path::Path>,
}

fn dump_logits(
    model: &Model,
    ids: &[u32],
    n_ctx: usize,
    batch: usize,
    to: DumpTo,
    (k, v): (KvType, KvType),
) -> Res<()> {
    let (file, out, layers) = (to.model_file, to.logits, to.layers);
    let mut st = model
        .try_new_state_kv(n_ctx, batch, k, v)
        .map_err(|e| e.to_string())?;
    if layers.is_some() {
        st.trace = Some(Vec::new());
    }
    let t0 = Instant::now();
    model
        .forward(&mut st, ids, 0, true)
        .map_err(|e| e.to_string())?;
    let dt = t0.elapsed().as_secs_f64();
    if let (Some(dir), Some(traces)) = (layers, st.trace.take()) {
        write_layers(file, dir, &traces)?;
    }
    let logits = &st.logits[..ids.len() * model.config.n_vocab];
    qwen::npy::write_f32_file(out, &[ids.len(), model.config.n_vocab], logits)?;
    eprintln!(
        "evaluated {} tokens in {:.3} s ({:.1} tokens/s); logits [{}, {}] -> {}",
        ids.len(),
        dt,
        ids.len() as f64 / dt.max(1e-9),
        ids.len(),
        model.config.n_vocab,
        out.display()
    );
    Ok(())
}

/// Writes each traced intermediate as DIR/NAME.npy, the chunks of one name
/// concatenated in position order.
fn write_layers(file: &ModelFile, dir: &std::path::Path, traces: &[qwen::model::Trace]) -> Res<()> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut names: Vec<&str> = Vec::new();
    for t in traces {
        if !names.contains(&t.name.as_str()) {
            names.push(&t.name);
        }
    }
    for name in names {
        let parts: Vec<&qwen::model::Trace> = traces.iter().filter(|t| t.name == name).collect();
        let rows: usize = parts.iter().map(|t| t.rows).sum();
        let data: Vec<f32> = parts.iter().flat_map(|t| t.data.iter().copied()).collect();
        let width = data.len() / rows.max(1);
        let path = dir.join(format!("{name}.npy"));
        file.refuse_as_output(&path, "--dump-layers")?;
        let f = std::fs::File::create(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        qwen::npy::write_f32(io::BufWriter::new(f), &[rows, width], &data)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn tokenize_mode(tok: &Tokenizer, encode: bool) -> Res<()> {
    let mut input = Vec::new();
    io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("cannot read stdin: {e}"))?;
    let mut out = io::stdout().lock();
    if encode {
        let text = String::from_utf8(input).map_err(|e| {
            format!(
                "stdin is not valid UTF-8 (byte {})",
                e.utf8_error().valid_up_to()
            )
        })?;
        let ids = tok.encode(&text);
        let json = serde_json::to_string(&ids).map_err(|e| e.to_string())?;
        writeln!(out, "{json}").map_err(|e| format!("cannot write stdout: {e}"))?;
    } else {
        let ids: Vec<u32> = serde_json::from_slice(&input)
            .map_err(|e| format!("stdin is not a JSON array of token ids: {e}"))?;
        let text = tok.decode(&ids).map_err(|e| e.to_string())?;
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot write stdout: {e}"))?;
    }
    Ok(())
}

/// File defaults overridden by the command line; `n_ctx` bounds the penalty window.
fn sampler_params(args: &Args, g: &Gguf, n_ctx: usize) -> Res<SamplerParams> {
    let d = GenerationDefaults::from_gguf(g)?;
    // A file default no option overrides must be in range; the error names the key it
    // came from (qwen-convert's `qwen_rs.generation.*`, else llama.cpp's `general.sampling.*`).
    type Set = fn(&mut SamplerParams, f32);
    let file_values: [(Option<f32>, bool, &str, &str, Set); 4] = [
        (
            d.temperature,
            args.temp.is_some(),
            "qwen_rs.generation.temperature",
            "general.sampling.temp",
            |p, v| p.temperature = v,
        ),
        (
            d.top_p,
            args.top_p.is_some(),
            "qwen_rs.generation.top_p",
            "general.sampling.top_p",
            |p, v| p.top_p = v,
        ),
        (
            d.min_p,
            args.min_p.is_some(),
            "general.sampling.min_p",
            "general.sampling.min_p",
            |p, v| p.min_p = v,
        ),
        (
            d.repetition_penalty,
            args.repeat_penalty.is_some(),
            "qwen_rs.generation.repetition_penalty",
            "general.sampling.penalty_repeat",
            |p, v| p.repeat_penalty = v,
        ),
    ];
    for (v, overridden, ours, theirs, set) in file_values {
        let Some(v) = v.filter(|_| !overridden) else {
            continue;
        };
        let mut one = SamplerParams::default();
        set(&mut one, v);
        one.validate().map_err(|e| {
            let key = if g.get(ours).is_some() { ours } else { theirs };
            format!("metadata key '{key}': {e} (override it on the command line)")
        })?;
    }
    let mut p = SamplerParams::with_file_defaults(&d);
    if let Some(v) = args.temp {
        p.temperature = v;
    }
    if let Some(v) = args.top_k {
        p.top_k = v;
    }
    if let Some(v) = args.top_p {
        p.top_p = v;
    }
    if let Some(v) = args.min_p {
        p.min_p = v;
    }
    if let Some(v) = args.repeat_penalty {
        p.repeat_penalty = v;
    }
    match args.repeat_last_n {
        None => {}
        Some(-1) => p.repeat_last_n = n_ctx,
        Some(n) => {
            p.repeat_last_n = usize::try_from(n).map_err(|_| {
                format!("--repeat-last-n {n}: use 0 (off), -1 (whole context) or a count")
            })?
        }
    }
    p.repeat_last_n = p.repeat_last_n.min(n_ctx);
    p.seed = match args.seed {
        None | Some(-1) => random_seed(),
        Some(s) => {
            u64::try_from(s).map_err(|_| format!("--seed {s}: use -1 (random) or a number >= 0"))?
        }
    };
    if args.verbose {
        eprintln!("seed: {}", p.seed);
    }
    p.validate().map_err(|e| e.to_string())?;
    Ok(p)
}

/// A seed from the clock and the process id (llama.cpp's default seed is random too).
fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut h = t ^ (u64::from(std::process::id()) << 32);
    // splitmix64 finaliser: nearby clocks give unrelated seeds.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (h ^ (h >> 31)) & 0xffff_ffff
}

/// -n: None = no limit (-1 and -2, llama.cpp's "infinite" and "until the context is full").
fn n_predict(args: &Args) -> Res<Option<usize>> {
    match args.n_predict {
        None | Some(-1) | Some(-2) => Ok(None),
        Some(n) => usize::try_from(n).map(Some).map_err(|_| {
            format!("-n {n}: use a count, -1 (no limit) or -2 (until the context is full)")
        }),
    }
}

/// Ids that end generation: the tokenizer's eos ids (the file's eos and
/// qwen_rs.generation.eos_token_ids), <|im_end|> and <|endoftext|>.
fn stop_ids(tok: &Tokenizer) -> Vec<u32> {
    let mut ids = tok.eos_ids().to_vec();
    for s in ["<|im_end|>", "<|endoftext|>"] {
        if let Some(id) = tok.token_to_id(s) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// Prints generated text as it completes, holding back any tail that may be
/// the start of a --stop string. Returns true once a stop string appeared.
struct StopWriter<'s> {
    stops: &'s [String],
    text: String,
    printed: usize,
}

impl<'s> StopWriter<'s> {
    fn push(&mut self, piece: &str, out: &mut impl Write) -> io::Result<bool> {
        self.text.push_str(piece);
        let search_from = self.printed;
        let hit = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| {
                self.text[search_from..]
                    .find(s.as_str())
                    .map(|k| search_from + k)
            })
            .min();
        if let Some(k) = hit {
            out.write_all(&self.text.as_bytes()[self.printed..k])?;
            self.printed = k;
            out.flush()?;
            return Ok(true);
        }
        // Longest suffix of the unprinted text that is a proper prefix of a stop string.
        let tail = &self.text[self.printed..];
        let mut hold = 0;
        for s in self.stops {
            for (i, _) in tail.char_indices() {
                let suffix = &tail[i..];
                if s.starts_with(suffix) && suffix.len() > hold {
                    hold = suffix.len();
                    break;
                }
            }
        }
        let upto = self.text.len() - hold;
        out.write_all(&self.text.as_bytes()[self.printed..upto])?;
        self.printed = upto;
        out.flush()?;
        Ok(false)
    }

    fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(&self.text.as_bytes()[self.printed..])?;
        self.printed = self.text.len();
        out.flush()
    }
}

fn generate(
    model: &Model,
    tok: &Tokenizer,
    g: &Gguf,
    args: &Args,
    prompt: &str,
    n_ctx: usize,
    params: SamplerParams,
) -> Res<()> {
    let mut ids = Vec::new();
    // Files from llama.cpp may ask for a BOS token (ours say add_bos_token=false).
    let add_bos = g
        .get_bool("tokenizer.ggml.add_bos_token")
        .map_err(|e| format!("metadata key 'tokenizer.ggml.add_bos_token': {e}"))?
        .unwrap_or(false);
    if add_bos {
        let bos = g
            .get_u32("tokenizer.ggml.bos_token_id")
            .map_err(|e| format!("metadata key 'tokenizer.ggml.bos_token_id': {e}"))?
            .ok_or("the file asks for a BOS token but has no tokenizer.ggml.bos_token_id")?;
        ids.push(bos);
    }
    ids.extend(tok.encode(prompt));
    if ids.is_empty() {
        return Err("the prompt is empty".into());
    }
    if ids.len() >= n_ctx {
        return Err(format!(
            "the prompt has {} tokens, the context holds {n_ctx} (raise --ctx-size)",
            ids.len()
        ));
    }
    let mut sampler = Sampler::new(params).map_err(|e| e.to_string())?;
    let eos = stop_ids(tok);
    let (k, v) = kv_types(args, model);
    let mut st = model
        .try_new_state_kv(n_ctx, args.batch_size, k, v)
        .map_err(|e| e.to_string())?;

    let t0 = Instant::now();
    let mut logits = qwen::progress::forward_with_progress(model, &mut st, &ids, 0)
        .map_err(|e| e.to_string())?;
    let t_prompt = t0.elapsed().as_secs_f64();
    for &id in &ids {
        sampler.accept(id);
    }

    let mut out = io::stdout().lock();
    let mut dec = StreamDecoder::new();
    let mut sw = StopWriter {
        stops: &args.stop,
        text: String::new(),
        printed: 0,
    };
    let max_new = n_predict(args)?.unwrap_or(usize::MAX);
    let mut pos = ids.len();
    let mut n_gen = 0usize;
    let t1 = Instant::now();
    let mut reason = "limit -n";
    while n_gen < max_new {
        let id = sampler.sample(logits);
        if eos.contains(&id) {
            reason = "end of text";
            break;
        }
        sampler.accept(id);
        n_gen += 1;
        let piece = dec.push(tok, id).map_err(|e| e.to_string())?;
        if sw
            .push(&piece, &mut out)
            .map_err(|e| format!("cannot write stdout: {e}"))?
        {
            reason = "stop string";
            break;
        }
        if n_gen == max_new {
            break;
        }
        if pos >= n_ctx {
            reason = "context full";
            break;
        }
        logits = model
            .forward(&mut st, &[id], pos, false)
            .map_err(|e| e.to_string())?;
        pos += 1;
    }
    if reason != "stop string" {
        let rest = dec.finish();
        sw.text.push_str(&rest);
        sw.finish(&mut out)
            .map_err(|e| format!("cannot write stdout: {e}"))?;
    }
    let t_gen = t1.elapsed().as_secs_f64();
    eprintln!();
    eprintln!(
        "prompt: {} tokens in {:.3} s ({:.1} tokens/s); generation: {} tokens in {:.3} s ({:.1} tokens/s); stopped: {reason}",
        ids.len(),
        t_prompt,
        ids.len() as f64 / t_prompt.max(1e-9),
        n_gen,
        t_gen,
        n_gen as f64 / t_gen.max(1e-9),
    );
    Ok(())
}

/// Chat mode (-i, or -p without --mode generate): helper "chat"'s session loop
/// over the file's chat template (ChatML when it has none).
fn chat(
    model: &Model,
    tok: &Tokenizer,
    g: &Gguf,
    args: &Args,
    n_ctx: usize,
    params: SamplerParams,
) -> Res<()> {
    // The session allocates its own State; find out first whether it fits.
    let (k, v) = kv_types(args, model);
    drop(
        model
            .try_new_state_kv(n_ctx, args.batch_size.min(n_ctx), k, v)
            .map_err(|e| e.to_string())?,
    );
    let template = qwen::chat::ChatTemplate::from_gguf(g, tok).map_err(|e| e.to_string())?;
    let opts = qwen::interactive::ChatOptions {
        template,
        system: args.system.clone(),
        prompt: args.prompt.clone(),
        interactive: args.interactive,
        n_predict: n_predict(args)?,
        stop: args.stop.clone(),
        sampler: params,
        n_ctx,
        batch_size: args.batch_size,
        verbose: args.verbose,
    };
    qwen::interactive::run_kv(model, tok, &opts, (k, v))
}

/// The KV cache types: the flags, else the model's default (f32 for f32 files).
fn kv_types(args: &Args, model: &Model) -> (KvType, KvType) {
    let k = args.cache_type_k.unwrap_or(model.default_kv_type());
    (k, args.cache_type_v.unwrap_or(k))
}
