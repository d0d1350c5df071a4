//! qwen-bench: prefill and decode speed of a model file, measured like llama.cpp's
//! llama-bench so the two can be run on the same file side by side.
//!
//! - pp (prompt processing): one batched `forward` of `-p` random tokens from
//!   position 0, in chunks of at most `-b` tokens (llama-bench's n_ubatch, 512);
//! - tg (text generation): `-n` single-token `forward` calls from position 0,
//!   each on a random token (llama-bench does not sample either).
//!
//! With `-d N` (llama-bench's n_depth) both tests start at position N instead, after
//! N random tokens fill the KV cache untimed before each run: speed at a context depth.
//!
//! Each test runs `-r` times after one untimed warm-up run (unless `--no-warmup`);
//! a run's speed is tokens / seconds and the report is the mean and the sample
//! standard deviation of those speeds, as llama-bench reports `avg_ts ± stddev_ts`.
//! Both tests reuse one State allocated at load: a run from position 0 overwrites
//! the KV cache it reads (like llama-bench clearing its cache between runs).
//!
//! Also reported: load time (open + mmap + GGUF parse + Model::load + State::new;
//! the file's pages are not touched, so this is the warm-cache time) and peak RSS
//! (VmHWM from /proc/self/status at exit: mapped weight pages count once read).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use qwen::model::KvType;
use qwen::Model;

#[derive(Parser, Debug)]
#[command(
    name = "qwen-bench",
    version,
    about = "Prefill (pp) and decode (tg) tokens/s of a GGUF model, like llama-bench",
    after_help = "Example: qwen-bench -f model.qbin -p 128 -n 64 -t 2 -r 3 --json\n\
--json prints {\"pp\":{\"tokens_per_s\":X,\"stddev\":S},\"tg\":{\"tokens_per_s\":Y,\"stddev\":S},...}\n\
(a test skipped with -p 0 / -n 0 is null) followed by load_s, peak_rss_mb, kernels, threads and the sizes\n\
(decode_bytes_per_token: weight bytes one decode step reads; divided into the memory read bandwidth it\n\
gives the decode limit in tokens/s). With --read-bw, also read_gbps (median read bandwidth over the\n\
model's mapping, measured between the tg runs) and tg_pct_of_read_bw (decode's weight bytes per second\n\
as a share of it); null without it. mmap: false with --no-mmap (-mmp 0)."
)]
struct Args {
    /// Model file (GGUF v3, as written by qwen-convert; also -m, as in llama-bench).
    #[arg(short = 'f', short_alias = 'm', long = "model", value_name = "FILE")]
    model: PathBuf,
    /// Prompt tokens evaluated in one batched forward (0 skips the pp test).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 128)]
    n_prompt: usize,
    /// Tokens generated one at a time (0 skips the tg test).
    #[arg(short = 'n', long = "n-gen", default_value_t = 64)]
    n_gen: usize,
    /// Tokens already in the KV cache when each test starts (filled untimed before
    /// every run; llama-bench's n_depth).
    #[arg(short = 'd', long = "n-depth", default_value_t = 0)]
    n_depth: usize,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// Timed repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    repetitions: usize,
    /// Most tokens per forward chunk during pp (llama-bench's n_ubatch).
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch_size: usize,
    /// Kernel level: scalar | avx2 | avx512 | neon (default: QWEN_KERNELS, else the best the CPU has).
    #[arg(long = "kernels", value_name = "LEVEL")]
    kernels: Option<String>,
    /// KV cache type of the keys (also -ctk): f16 | f32 (default: f32 for f32
    /// weight files, else f16).
    #[arg(long = "cache-type-k", value_name = "TYPE", value_parser = parse_kv_type)]
    cache_type_k: Option<KvType>,
    /// KV cache type of the values (also -ctv): f16 | f32 (default: as for the keys).
    #[arg(long = "cache-type-v", value_name = "TYPE", value_parser = parse_kv_type)]
    cache_type_v: Option<KvType>,
    /// Skip the untimed warm-up run of each test.
    #[arg(long = "no-warmup")]
    no_warmup: bool,
    /// After each tg run, time three reads of the whole model file (its mapping, all
    /// threads) and report that read bandwidth and decode's share of it (the same
    /// minutes, the same bytes; the machine's bandwidth drifts over a day).
    #[arg(long = "read-bw")]
    read_bw: bool,
    #[command(flatten)]
    load: qwen::cli::LoadArgs,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long = "json")]
    json: bool,
    /// Print the kernel level, threads and model shape on stderr.
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
}

const MAX_TOKENS: usize = 1 << 20;
const MAX_REPS: usize = 10_000;
const MAX_THREADS: usize = 1024;

type Res<T> = Result<T, String>;

fn parse_kv_type(s: &str) -> Res<KvType> {
    s.parse()
}

fn main() -> ExitCode {
    qwen::cli::install_panic_hook();
    let args: Args = match qwen::cli::parse_args() {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.replace('\n', " "));
            ExitCode::from(1)
        }
    }
}

/// Mean and sample standard deviation (n - 1; 0 for a single value) of speeds.
#[derive(Clone, Copy, Debug)]
struct Stat {
    mean: f64,
    stddev: f64,
}

fn stat(xs: &[f64]) -> Stat {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let stddev = if xs.len() > 1 {
        (xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Stat { mean, stddev }
}

/// splitmix64: reproducible random token ids without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A token id in 0..n (n >= 1).
    fn token(&mut self, n: usize) -> u32 {
        (self.next() % n as u64) as u32
    }
}

fn check_range(flag: &str, v: usize, lo: usize, hi: usize) -> Res<()> {
    if v < lo || v > hi {
        return Err(format!("{flag} {v} is outside {lo}..={hi}"));
    }
    Ok(())
}

/// Peak resident set size in bytes (VmHWM), if /proc says.
fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Seconds of one run of `f`, at least 1 ns so a speed is always finite.
fn timed(f: impl FnOnce() -> Res<()>) -> Res<f64> {
    let t0 = Instant::now();
    f()?;
    Ok(t0.elapsed().as_secs_f64().max(1e-9))
}

fn run(args: &Args) -> Res<()> {
    check_range("-p/--n-prompt", args.n_prompt, 0, MAX_TOKENS)?;
    check_range("-n/--n-gen", args.n_gen, 0, MAX_TOKENS)?;
    check_range("-r/--repetitions", args.repetitions, 1, MAX_REPS)?;
    check_range("-b/--batch-size", args.batch_size, 1, MAX_TOKENS)?;
    check_range("-d/--n-depth", args.n_depth, 0, MAX_TOKENS)?;
    if args.n_prompt == 0 && args.n_gen == 0 {
        return Err("nothing to measure: -p and -n are both 0".into());
    }
    let threads = match args.threads {
        Some(t) => t,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    check_range("-t/--threads", threads, 1, MAX_THREADS)?;
    // Load and measure on a pool worker, as qwen-run decodes (see `run_on_pool`).
    qwen::kernels::run_on_pool(Some(threads), || measure(args, threads))?
}

fn measure(args: &Args, threads: usize) -> Res<()> {
    let level = qwen::kernels::select(args.kernels.as_deref())?;

    // Load: everything a user waits for before the first token.
    let depth = args.n_depth;
    // As llama-bench: room for the depth, the prompt and the generated tokens.
    let n_ctx = (depth + args.n_prompt + args.n_gen).max(1);
    let t_load = Instant::now();
    let file = args.load.open(&args.model).map_err(|e| e.to_string())?;
    let g = file.gguf().map_err(|e| e.to_string())?;
    let model = Model::load(&g).map_err(|e| e.to_string())?;
    let cache_k = args.cache_type_k.unwrap_or(model.default_kv_type());
    let cache_v = args.cache_type_v.unwrap_or(cache_k);
    let mut st = model
        .try_new_state_kv(n_ctx, args.batch_size.min(n_ctx), cache_k, cache_v)
        .map_err(|e| e.to_string())?;
    let load_s = t_load.elapsed().as_secs_f64();

    let cfg = &model.config;
    let file_bytes = file.bytes().len() as u64;
    let n_params: u64 = g
        .tensors
        .iter()
        .map(|t| t.dims.iter().product::<u64>())
        .sum();
    // Weight bytes a decode step streams from memory: every tensor, except that
    // token_embd is only indexed (one row) when a separate output matrix exists.
    let tensor_bytes: u64 = g.tensors.iter().map(|t| t.n_bytes).sum();
    let decode_bytes = match (g.tensor("output.weight"), g.tensor("token_embd.weight")) {
        (Some(_), Some(e)) => tensor_bytes - e.n_bytes,
        _ => tensor_bytes,
    };
    let model_name = cfg
        .name
        .clone()
        .unwrap_or_else(|| cfg.arch.name().to_string());
    // The type holding most bytes of the layers' matrices (a Q4_K_M file mixes
    // q4_K with q6_K for some ffn_down / attn_v; its ffn_down of layer 0 is q6_K).
    let main_type = {
        let mut by_type: Vec<(String, u64)> = Vec::new();
        for t in g
            .tensors
            .iter()
            .filter(|t| t.name.starts_with("blk.") && t.dims.len() >= 2)
        {
            let name = t.dtype.to_string();
            match by_type.iter_mut().find(|(n, _)| *n == name) {
                Some((_, b)) => *b += t.n_bytes,
                None => by_type.push((name, t.n_bytes)),
            }
        }
        by_type
            .into_iter()
            .max_by_key(|&(_, b)| b)
            .map_or_else(|| "?".to_string(), |(n, _)| n)
    };
    if args.verbose {
        eprintln!("kernels: {level}");
        eprintln!("threads: {threads}");
        eprintln!(
            "model: {} arch={} type={} n_vocab={} n_embd={} n_layer={} n_head={} n_head_kv={} head_dim={} n_ff={} file={} bytes params={} decode_bytes_per_token={} kv_cache={} bytes ({cache_k}/{cache_v})",
            model_name,
            cfg.arch.name(),
            main_type,
            cfg.n_vocab,
            cfg.n_embd,
            cfg.n_layer,
            cfg.n_head,
            cfg.n_head_kv,
            cfg.head_dim,
            cfg.n_ff,
            file_bytes,
            n_params,
            decode_bytes,
            st.kv_bytes()
        );
        eprintln!("load: {load_s:.4} s");
    }

    let mut rng = Rng(0x5EED_0000_0000_0001);
    let n_ids = cfg.n_vocab_embd;
    // The untimed context of `-d`: `depth` random tokens from position 0.
    let fill = |st: &mut qwen::State, rng: &mut Rng, what: &str| -> Res<()> {
        if depth > 0 {
            let tokens: Vec<u32> = (0..depth).map(|_| rng.token(n_ids)).collect();
            model
                .forward(st, &tokens, 0, false)
                .map_err(|e| format!("{what}: filling the context to -d {depth}: {e}"))?;
        }
        Ok(())
    };

    let pp = if args.n_prompt > 0 {
        let mut speeds = Vec::with_capacity(args.repetitions);
        let runs = args.repetitions + usize::from(!args.no_warmup);
        for i in 0..runs {
            fill(&mut st, &mut rng, &format!("pp run {i}"))?;
            let tokens: Vec<u32> = (0..args.n_prompt).map(|_| rng.token(n_ids)).collect();
            let s = timed(|| {
                model
                    .forward(&mut st, &tokens, depth, false)
                    .map(|_| ())
                    .map_err(|e| format!("pp run {i}: {e}"))
            })?;
            if i >= runs - args.repetitions {
                speeds.push(args.n_prompt as f64 / s);
            }
        }
        Some(stat(&speeds))
    } else {
        None
    };

    // Median GB/s of the reads --read-bw makes between the tg runs.
    let mut reads = Vec::new();
    let words = if args.read_bw {
        let b = file.bytes();
        bytemuck::try_cast_slice::<u8, u64>(&b[..b.len() & !7])
            .map_err(|e| format!("--read-bw: the model's bytes are not 8-byte aligned: {e}"))?
    } else {
        &[]
    };
    let tg = if args.n_gen > 0 {
        let mut speeds = Vec::with_capacity(args.repetitions);
        let runs = args.repetitions + usize::from(!args.no_warmup);
        for i in 0..runs {
            fill(&mut st, &mut rng, &format!("tg run {i}"))?;
            let tokens: Vec<u32> = (0..args.n_gen).map(|_| rng.token(n_ids)).collect();
            let s = timed(|| {
                for (i, &tok) in tokens.iter().enumerate() {
                    let pos = depth + i;
                    model
                        .forward(&mut st, &[tok], pos, false)
                        .map_err(|e| format!("tg run {i} position {pos}: {e}"))?;
                }
                Ok(())
            })?;
            if i >= runs - args.repetitions {
                speeds.push(args.n_gen as f64 / s);
            }
            if args.read_bw && !words.is_empty() {
                for _ in 0..3 {
                    reads.push(read_gbps(words));
                }
            }
        }
        Some(stat(&speeds))
    } else {
        None
    };

    let read_bw = (!reads.is_empty()).then(|| {
        reads.sort_by(f64::total_cmp);
        reads[reads.len() / 2]
    });
    // Decode's weight bytes per second as a share of the read bandwidth.
    let tg_pct = match (tg, read_bw) {
        (Some(t), Some(bw)) => Some(100.0 * t.mean * decode_bytes as f64 / 1e9 / bw),
        _ => None,
    };
    let peak_rss = peak_rss_bytes();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    if args.json {
        let js = |s: Option<Stat>| match s {
            Some(s) => format!(
                "{{\"tokens_per_s\":{},\"stddev\":{}}}",
                json_num(s.mean),
                json_num(s.stddev)
            ),
            None => "null".to_string(),
        };
        println!(
            "{{\"pp\":{},\"tg\":{},\"load_s\":{},\"peak_rss_mb\":{},\"kernels\":\"{}\",\"threads\":{},\"n_prompt\":{},\"n_gen\":{},\"n_depth\":{},\"repetitions\":{},\"file_bytes\":{},\"n_params\":{},\"decode_bytes_per_token\":{},\"type\":{},\"kv_cache_bytes\":{},\"cache_type_k\":\"{cache_k}\",\"cache_type_v\":\"{cache_v}\",\"read_gbps\":{},\"tg_pct_of_read_bw\":{},\"mmap\":{}}}",
            js(pp),
            js(tg),
            json_num(load_s),
            peak_rss.map_or_else(|| "null".to_string(), |b| json_num(mib(b))),
            level,
            threads,
            args.n_prompt,
            args.n_gen,
            depth,
            args.repetitions,
            file_bytes,
            n_params,
            decode_bytes,
            serde_json::Value::String(main_type.clone()),
            st.kv_bytes(),
            read_bw.map_or_else(|| "null".to_string(), json_num),
            tg_pct.map_or_else(|| "null".to_string(), json_num),
            !file.is_copy(),
        );
    } else {
        let model_col = format!("{} {}", model_name, main_type);
        let size_col = if file_bytes >= 1 << 30 {
            format!("{:.2} GiB", mib(file_bytes) / 1024.0)
        } else {
            format!("{:.2} MiB", mib(file_bytes))
        };
        let params_col = if n_params >= 1_000_000_000 {
            format!("{:.2} B", n_params as f64 / 1e9)
        } else {
            format!("{:.2} M", n_params as f64 / 1e6)
        };
        let backend = format!("CPU ({level})");
        println!(
            "| {:<28} | {:>10} | {:>8} | {:>14} | {:>7} | {:>6} | {:>20} |",
            "model", "size", "params", "backend", "threads", "test", "t/s"
        );
        println!(
            "| {:-<28} | {:->10} | {:->8} | {:->14} | {:->7} | {:->6} | {:->20} |",
            ":", ":", ":", ":", ":", ":", ":"
        );
        for (name, n, s) in [("pp", args.n_prompt, pp), ("tg", args.n_gen, tg)] {
            if let Some(s) = s {
                println!(
                    "| {:<28} | {:>10} | {:>8} | {:>14} | {:>7} | {:>6} | {:>20} |",
                    model_col,
                    size_col,
                    params_col,
                    backend,
                    threads,
                    if depth > 0 {
                        format!("{name}{n} @ d{depth}")
                    } else {
                        format!("{name}{n}")
                    },
                    format!("{:.2} ± {:.2}", s.mean, s.stddev)
                );
            }
        }
        println!();
        println!(
            "load {:.1} ms (open + {} + parse + Model::load + State::new), peak RSS {} (file {:.1} MiB, KV cache {:.1} MiB {cache_k}/{cache_v})",
            load_s * 1e3,
            if file.is_copy() { "read into huge pages" } else { "mmap" },
            peak_rss.map_or_else(|| "unknown".to_string(), |b| format!("{:.1} MiB", mib(b))),
            mib(file_bytes),
            mib(st.kv_bytes() as u64)
        );
        if let (Some(bw), Some(pct)) = (read_bw, tg_pct) {
            println!(
                "read bandwidth {bw:.1} GB/s ({threads} threads, the model's {}, between the tg runs): decode limit {:.1} t/s, tg at {pct:.0}% of it",
                if file.is_copy() { "copy" } else { "mapping" },
                bw * 1e9 / decode_bytes.max(1) as f64
            );
        }
    }
    Ok(())
}

/// One timed read of `words` by the pool's threads ([`qwen::kernels::par_stream_sum`]),
/// in GB/s.
fn read_gbps(words: &[u64]) -> f64 {
    let t0 = Instant::now();
    std::hint::black_box(qwen::kernels::par_stream_sum(words));
    (words.len() * 8) as f64 / t0.elapsed().as_secs_f64().max(1e-9) / 1e9
}

/// A finite number as JSON (null otherwise: JSON has no NaN/Inf).
fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".to_string()
    }
}
