//! The chat loop behind `qwen-run -i` (and single-turn `-p` in chat mode).
//!
//! Every turn renders the whole conversation with the chat template and tokenizes it; the tokens
//! whose keys and values already sit in the KV cache (the longest common prefix with what was
//! evaluated before) are kept and only the rest is evaluated. Normally that is just the new user
//! message: the previous reply was evaluated while it was generated. When the rendered history differs
//! from what was generated (a template that drops `<think>` blocks from old replies, a reply cut at a
//! `--stop` string, a reply whose text tokenizes differently), evaluation restarts at the first
//! difference. When the context fills, the oldest turns are dropped (the system prompt stays) and the
//! conversation is re-evaluated from the end of the system prompt.
//!
//! [`Session`] is the engine (no terminal I/O, testable); [`run`] wires it to stdin/stdout.

use std::io::{self, BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use crate::chat::{ChatTemplate, Message};
use crate::model::Model;
use crate::sampler::{Sampler, SamplerParams};
use crate::state::{KvType, State};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// Everything `run` needs besides the model and the tokenizer.
#[derive(Debug)]
pub struct ChatOptions {
    /// The file's template (`ChatTemplate::from_gguf`): ChatML for files without one.
    pub template: ChatTemplate,
    /// `--system`; None = the template's own default, else "You are a helpful assistant.".
    pub system: Option<String>,
    /// `-p`: the first user message. Without `interactive`, the only one.
    pub prompt: Option<String>,
    /// `-i`.
    pub interactive: bool,
    /// `-n`: most tokens per reply (None = until an end token or a full context).
    pub n_predict: Option<usize>,
    /// `--stop`: a reply ends before the first of these texts (not printed).
    pub stop: Vec<String>,
    pub sampler: SamplerParams,
    /// KV cache size in tokens.
    pub n_ctx: usize,
    /// Prompt tokens per forward call.
    pub batch_size: usize,
    /// `-v`: per-turn cache statistics on stderr.
    pub verbose: bool,
}

/// Why a reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-turn / end-of-text token.
    EndToken,
    /// A `--stop` string.
    StopString,
    /// `-n` tokens.
    Limit,
    /// The context is full and no older turn is left to drop.
    ContextFull,
    /// Ctrl-C.
    Interrupted,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndToken => "end of turn",
            StopReason::StopString => "stop string",
            StopReason::Limit => "limit -n",
            StopReason::ContextFull => "context full",
            StopReason::Interrupted => "interrupted",
        }
    }
}

/// What one turn cost.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnStats {
    /// 1-based number of this turn in the current conversation.
    pub turn: usize,
    /// Tokens of the rendered conversation that were already in the cache.
    pub cached: usize,
    /// Tokens the cache held before the turn (cached == this: nothing was re-evaluated).
    pub cache_before: usize,
    /// Prompt tokens evaluated for this turn (the rest of the rendered conversation).
    pub evaluated: usize,
    /// Tokens evaluated again after dropping old turns mid-reply.
    pub reevaluated: usize,
    pub prompt_secs: f64,
    pub generated: usize,
    pub gen_secs: f64,
    /// Old turns dropped to make room.
    pub dropped_turns: usize,
    /// Cache positions in use after the turn.
    pub ctx_used: usize,
    pub n_ctx: usize,
    pub stop: StopReason,
}

/// Text that may end in the start of a stop string is held back until it is known not to.
#[derive(Debug, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    text: String,
    printed: usize,
    stopped_at: Option<usize>,
}

impl StopFilter {
    pub fn new(stops: &[String]) -> Self {
        let stops = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        Self {
            stops,
            text: String::new(),
            printed: 0,
            stopped_at: None,
        }
    }

    /// Adds generated text; returns the part that can be shown now and whether a stop string appeared
    /// (then everything before it has been returned and nothing after it ever will be).
    pub fn push(&mut self, piece: &str) -> (&str, bool) {
        if self.stopped_at.is_some() {
            return ("", true);
        }
        let from = self.printed;
        self.text.push_str(piece);
        // A stop string may start inside the held-back tail, so search from the first unprinted byte.
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|k| from + k))
            .min();
        if let Some(k) = hit {
            self.stopped_at = Some(k);
            self.printed = k;
            return (&self.text[from..k], true);
        }
        // Hold back the longest unprinted suffix that is a proper prefix of some stop string.
        let tail = &self.text[from..];
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in tail.char_indices() {
                let suffix = &tail[i..];
                if suffix.len() > hold && s.starts_with(suffix) {
                    hold = suffix.len();
                    break;
                }
            }
        }
        let upto = self.text.len() - hold;
        self.printed = upto;
        (&self.text[from..upto], false)
    }

    /// The held-back rest (the reply ended without a stop string).
    pub fn finish(&mut self) -> &str {
        if self.stopped_at.is_some() {
            return "";
        }
        let from = self.printed;
        self.printed = self.text.len();
        &self.text[from..]
    }

    /// The reply: everything generated, cut before the stop string if one appeared.
    pub fn reply(&self) -> &str {
        &self.text[..self.stopped_at.unwrap_or(self.text.len())]
    }
}

/// A conversation with its KV cache.
pub struct Session<'a, 'm> {
    model: &'a Model<'m>,
    tok: &'a Tokenizer,
    template: &'a ChatTemplate,
    state: State,
    sampler: Sampler,
    system: Option<Message>,
    /// Finished (user, assistant) exchanges, oldest first.
    turns: Vec<(Message, Message)>,
    /// Tokens whose K/V are in the cache at positions 0..len.
    evaluated: Vec<u32>,
    stop_ids: Vec<u32>,
    stops: Vec<String>,
    n_predict: Option<usize>,
    n_ctx: usize,
    batch: usize,
    /// Turns in the current conversation (reset by `reset`).
    turn_no: usize,
}

impl<'a, 'm> Session<'a, 'm> {
    /// A session over a KV cache of the model's default type ([`Model::default_kv_type`]).
    pub fn new(
        model: &'a Model<'m>,
        tok: &'a Tokenizer,
        opts: &'a ChatOptions,
    ) -> Result<Self, String> {
        let kv = model.default_kv_type();
        Self::new_kv(model, tok, opts, (kv, kv))
    }

    /// As [`Session::new`] with the KV cache's element types (keys, values).
    pub fn new_kv(
        model: &'a Model<'m>,
        tok: &'a Tokenizer,
        opts: &'a ChatOptions,
        (kt, vt): (KvType, KvType),
    ) -> Result<Self, String> {
        if opts.n_ctx < 2 {
            return Err(format!(
                "context size {} is too small for a chat (at least 2)",
                opts.n_ctx
            ));
        }
        if opts.batch_size == 0 {
            return Err("batch size 0: at least 1 token per forward call".into());
        }
        let system = opts
            .template
            .initial_system(opts.system.as_deref())
            .map_err(|e| e.to_string())?;
        let mut stop_ids: Vec<u32> = tok.eos_ids().to_vec();
        for s in ["<|im_end|>", "<|endoftext|>"] {
            if let Some(id) = tok.token_to_id(s) {
                if tok
                    .token_kind(id)
                    .is_some_and(|k| k != crate::tokenizer::TokenKind::Normal)
                {
                    stop_ids.push(id);
                }
            }
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Ok(Self {
            model,
            tok,
            template: &opts.template,
            state: model
                .try_new_state_kv(opts.n_ctx, opts.batch_size.min(opts.n_ctx), kt, vt)
                .map_err(|e| e.to_string())?,
            sampler: Sampler::new(opts.sampler).map_err(|e| e.to_string())?,
            system,
            turns: Vec::new(),
            evaluated: Vec::new(),
            stop_ids,
            stops: opts.stop.clone(),
            n_predict: opts.n_predict,
            n_ctx: opts.n_ctx,
            batch: opts.batch_size,
            turn_no: 0,
        })
    }

    /// Forgets the conversation (the system prompt stays; its cache entries are reused).
    pub fn reset(&mut self) {
        self.turns.clear();
        self.turn_no = 0;
    }

    /// Replaces the system prompt (the history stays; it is re-evaluated on the next turn).
    pub fn set_system(&mut self, text: &str) -> Result<(), String> {
        self.system = self
            .template
            .initial_system(Some(text))
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    pub fn history(&self) -> &[(Message, Message)] {
        &self.turns
    }

    /// Token ids whose K/V are in the cache.
    pub fn evaluated(&self) -> &[u32] {
        &self.evaluated
    }

    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Tokens of the conversation (system + kept turns + `user`) up to the assistant's reply.
    fn prompt_tokens(&self, user: &str) -> Result<Vec<u32>, String> {
        let mut msgs: Vec<Message> = Vec::with_capacity(2 * self.turns.len() + 2);
        msgs.extend(self.system.iter().cloned());
        for (u, a) in &self.turns {
            msgs.push(u.clone());
            msgs.push(a.clone());
        }
        msgs.push(Message::user(user));
        let text = self
            .template
            .render(&msgs, true)
            .map_err(|e| e.to_string())?;
        Ok(self.tok.encode(&text))
    }

    /// Makes the cache hold exactly `target`: keeps the common prefix, evaluates the rest in chunks
    /// (stopping between chunks on Ctrl-C). Returns the number of tokens evaluated, or None when
    /// interrupted (the cache then holds a prefix of `target`). The last token is always evaluated so
    /// its logits are in `state`.
    fn sync(&mut self, target: &[u32], interrupt: &AtomicBool) -> Result<Option<usize>, String> {
        let lcp = self
            .evaluated
            .iter()
            .zip(target)
            .take_while(|(a, b)| a == b)
            .count();
        let keep = lcp.min(target.len().saturating_sub(1));
        self.evaluated.truncate(keep);
        let mut pos = keep;
        let bar = crate::progress::PromptBar::new(target.len() - keep);
        while pos < target.len() {
            if interrupt.load(Ordering::Relaxed) {
                bar.finish();
                return Ok(None);
            }
            let end = (pos + self.batch).min(target.len());
            if let Err(e) = self
                .model
                .forward(&mut self.state, &target[pos..end], pos, false)
            {
                bar.finish();
                return Err(e.to_string());
            }
            self.evaluated.extend_from_slice(&target[pos..end]);
            bar.inc(end - pos);
            pos = end;
        }
        bar.finish();
        Ok(Some(target.len() - keep))
    }

    /// Room kept free for the reply when deciding whether old turns must go.
    fn reserve(&self) -> usize {
        self.n_predict
            .unwrap_or(self.n_ctx / 4)
            .clamp(1, self.n_ctx / 2)
    }

    /// Drops the oldest turns until `fits(len)` (or none is left). Returns how many went and the
    /// prompt tokens of what is left.
    fn drop_until_fits(
        &mut self,
        user: &str,
        extra: usize,
        room: usize,
    ) -> Result<(usize, Vec<u32>), String> {
        let mut dropped = 0;
        loop {
            let ids = self.prompt_tokens(user)?;
            if ids.len() + extra + room <= self.n_ctx || self.turns.is_empty() {
                return Ok((dropped, ids));
            }
            self.turns.remove(0);
            dropped += 1;
        }
    }

    /// One exchange: evaluates the conversation with `user` appended, streams the reply into `out`
    /// (flushed per token) and records it. `interrupt` (Ctrl-C) ends the reply early; a reply
    /// interrupted before its first token is not recorded.
    pub fn turn(
        &mut self,
        user: &str,
        out: &mut dyn Write,
        interrupt: &AtomicBool,
    ) -> Result<TurnStats, String> {
        let t0 = Instant::now();
        let cache_before = self.evaluated.len();
        let (dropped, prompt) = self.drop_until_fits(user, 0, self.reserve())?;
        if prompt.is_empty() {
            return Err("the chat template rendered no tokens for this conversation".into());
        }
        if prompt.len() >= self.n_ctx {
            return Err(format!(
                "the conversation needs {} tokens for this message alone, the context holds {} (raise --ctx-size)",
                prompt.len(),
                self.n_ctx
            ));
        }
        if dropped > 0 {
            eprintln!(
                "[context: dropped the {dropped} oldest turn(s) to stay within {} tokens; the system prompt stays]",
                self.n_ctx
            );
        }
        let cached = self
            .evaluated
            .iter()
            .zip(&prompt)
            .take_while(|(a, b)| a == b)
            .count();
        let evaluated = self.sync(&prompt, interrupt)?;
        let prompt_secs = t0.elapsed().as_secs_f64();
        self.turn_no += 1;
        let mut stats = TurnStats {
            turn: self.turn_no,
            cached: cached.min(prompt.len() - 1),
            cache_before,
            evaluated: evaluated.unwrap_or(0),
            reevaluated: 0,
            prompt_secs,
            generated: 0,
            gen_secs: 0.0,
            dropped_turns: dropped,
            ctx_used: self.evaluated.len(),
            n_ctx: self.n_ctx,
            stop: StopReason::Interrupted,
        };
        if evaluated.is_none() {
            self.turn_no -= 1;
            return Ok(stats);
        }

        // The repeat penalty looks at the last tokens of the conversation, prompt included (as
        // llama.cpp and HF's repetition_penalty do).
        self.sampler.reset();
        let window = self.sampler.params().repeat_last_n;
        for &t in &prompt[prompt.len().saturating_sub(window)..] {
            self.sampler.accept(t);
        }

        let t1 = Instant::now();
        let mut dec = StreamDecoder::new();
        let mut filter = StopFilter::new(&self.stops);
        let mut generated: Vec<u32> = Vec::new();
        let max_new = self.n_predict.unwrap_or(usize::MAX);
        let write = |out: &mut dyn Write, s: &str| -> Result<(), String> {
            out.write_all(s.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot write the reply: {e}"))
        };
        let stop = loop {
            if interrupt.load(Ordering::Relaxed) {
                break StopReason::Interrupted;
            }
            if generated.len() >= max_new {
                break StopReason::Limit;
            }
            // Logits of the last evaluated token ([n_vocab]).
            let v = self.model.config.n_vocab;
            let id = self.sampler.sample(&self.state.logits[..v]);
            if self.stop_ids.contains(&id) {
                break StopReason::EndToken;
            }
            self.sampler.accept(id);
            generated.push(id);
            let piece = dec.push(self.tok, id).map_err(|e| e.to_string())?;
            let (show, hit) = filter.push(&piece);
            write(out, show)?;
            if hit {
                break StopReason::StopString;
            }
            if generated.len() >= max_new {
                break StopReason::Limit;
            }
            if self.evaluated.len() < self.n_ctx {
                let pos = self.evaluated.len();
                self.model
                    .forward(&mut self.state, &[id], pos, false)
                    .map_err(|e| e.to_string())?;
                self.evaluated.push(id);
                continue;
            }
            // The context is full: drop old turns and re-evaluate from the end of the system prompt.
            if self.turns.is_empty() {
                break StopReason::ContextFull;
            }
            let (n, mut target) = self.drop_until_fits(user, generated.len(), self.n_ctx / 4)?;
            target.extend_from_slice(&generated);
            if target.len() > self.n_ctx {
                break StopReason::ContextFull;
            }
            eprintln!(
                "\n[context full: dropped the {n} oldest turn(s); the system prompt stays, re-evaluating the rest]"
            );
            stats.dropped_turns += n;
            match self.sync(&target, interrupt)? {
                Some(k) => stats.reevaluated += k,
                None => break StopReason::Interrupted,
            }
        };
        if stop != StopReason::StopString {
            let rest = dec.finish();
            let (show, _) = filter.push(&rest);
            write(out, show)?;
            write(out, filter.finish())?;
        }
        stats.generated = generated.len();
        stats.gen_secs = t1.elapsed().as_secs_f64();
        stats.ctx_used = self.evaluated.len();
        stats.stop = stop;
        let reply = filter.reply().to_string();
        if stop == StopReason::Interrupted && reply.is_empty() {
            self.turn_no -= 1;
        } else {
            self.turns
                .push((Message::user(user), Message::assistant(&reply)));
        }
        Ok(stats)
    }
}

/// "[prompt: 17 tokens in 0.12 s, 141.7 tokens/s | reply: 42 tokens in 1.90 s, 22.1 tokens/s | context: 104/4096]"
pub fn format_stats(s: &TurnStats) -> String {
    let rate = |n: usize, t: f64| if t > 0.0 { n as f64 / t } else { 0.0 };
    let mut line = format!(
        "[prompt: {} tokens in {:.2} s, {:.1} tokens/s | reply: {} tokens in {:.2} s, {:.1} tokens/s | context: {}/{}",
        s.evaluated,
        s.prompt_secs,
        rate(s.evaluated, s.prompt_secs),
        s.generated,
        s.gen_secs,
        rate(s.generated, s.gen_secs),
        s.ctx_used,
        s.n_ctx
    );
    if s.stop != StopReason::EndToken {
        line.push_str(&format!(" | stopped: {}", s.stop.as_str()));
    }
    line.push(']');
    line
}

/// "turn 2: evaluated 17 new tokens (cached 45 of the 45 already evaluated)"
pub fn format_cache_stats(s: &TurnStats) -> String {
    format!(
        "turn {}: evaluated {} new tokens (cached {} of the {} already evaluated)",
        s.turn, s.evaluated, s.cached, s.cache_before
    )
}

/// Set by Ctrl-C while a turn runs.
static INTERRUPT: AtomicBool = AtomicBool::new(false);
/// True while a turn runs (prompt evaluation or generation).
static BUSY: AtomicBool = AtomicBool::new(false);

/// Installs the SIGINT handler once per process: during a turn the first Ctrl-C ends the reply, a
/// second one (or one outside a turn, e.g. while reading a line from a pipe) ends the program.
fn install_ctrl_c() -> Result<(), String> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            ctrlc::set_handler(|| {
                if BUSY.load(Ordering::SeqCst) && !INTERRUPT.swap(true, Ordering::SeqCst) {
                    return;
                }
                let _ = io::stdout().flush();
                eprintln!();
                std::process::exit(130);
            })
            .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))
        })
        .clone()
}

/// A user line: a command or a message.
enum Input<'s> {
    Exit,
    Reset,
    System(&'s str),
    Message(&'s str),
}

fn parse_input(line: &str) -> Input<'_> {
    let t = line.trim();
    match t {
        "/exit" | "/quit" => Input::Exit,
        "/reset" => Input::Reset,
        _ => match t.strip_prefix("/system") {
            Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => {
                Input::System(rest.trim())
            }
            _ => Input::Message(line),
        },
    }
}

/// Why a turn failed: the turn alone (the chat can go on) or the output (it cannot).
enum TurnError {
    /// A message too long for the context, a template or model error, a bad line.
    Turn(String),
    /// stdout could not be written: no later reply could be shown either.
    Output(String),
}

impl TurnError {
    fn into_message(self) -> String {
        match self {
            TurnError::Turn(e) | TurnError::Output(e) => e,
        }
    }
}

/// stdout that remembers whether a write failed, so that a failed turn can be told apart from
/// a closed output.
struct TrackedStdout<'a> {
    inner: io::StdoutLock<'a>,
    failed: bool,
}

impl Write for TrackedStdout<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.inner.write(buf);
        self.failed |= r.is_err();
        r
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.inner.flush();
        self.failed |= r.is_err();
        r
    }
}

/// Runs one turn with the Ctrl-C flags set up, then prints the statistics on stderr.
fn run_turn(session: &mut Session, user: &str, verbose: bool) -> Result<(), TurnError> {
    INTERRUPT.store(false, Ordering::SeqCst);
    BUSY.store(true, Ordering::SeqCst);
    let mut out = TrackedStdout {
        inner: io::stdout().lock(),
        failed: false,
    };
    let r = session.turn(user, &mut out, &INTERRUPT);
    BUSY.store(false, Ordering::SeqCst);
    let stats = match r {
        Ok(s) => s,
        Err(e) if out.failed => return Err(TurnError::Output(e)),
        Err(e) => return Err(TurnError::Turn(e)),
    };
    out.write_all(b"\n")
        .and_then(|()| out.flush())
        .map_err(|e| TurnError::Output(format!("cannot write the reply: {e}")))?;
    drop(out);
    if verbose {
        eprintln!("{}", format_cache_stats(&stats));
    }
    eprintln!("{}", format_stats(&stats));
    INTERRUPT.store(false, Ordering::SeqCst);
    Ok(())
}

/// The chat: `-p` without `-i` runs one turn; otherwise turns are read from stdin, with line editing and
/// history when stdin is a terminal, one line per turn when it is not (only replies go to stdout).
/// A turn that fails (a message too long for the context, a line that is not UTF-8) prints
/// `error: …` on stderr and the chat goes on with the next line; through a pipe the result at EOF
/// (or `/exit`) is then an error counting the failed turns (exit code 1), else Ok. A reply that
/// cannot be written to stdout ends the chat. Commands: `/exit`, `/reset`, `/system TEXT`.
pub fn run(model: &Model, tokenizer: &Tokenizer, opts: &ChatOptions) -> Result<(), String> {
    let kv = model.default_kv_type();
    run_kv(model, tokenizer, opts, (kv, kv))
}

/// As [`run`] with the KV cache's element types (keys, values) (`-ctk` / `-ctv`).
pub fn run_kv(
    model: &Model,
    tokenizer: &Tokenizer,
    opts: &ChatOptions,
    kv: (KvType, KvType),
) -> Result<(), String> {
    let mut session = Session::new_kv(model, tokenizer, opts, kv)?;
    if let Err(e) = install_ctrl_c() {
        eprintln!("warning: {e}; Ctrl-C will end the program");
    }
    if !opts.interactive {
        let prompt = opts
            .prompt
            .as_deref()
            .ok_or("single-turn chat needs -p PROMPT")?;
        return run_turn(&mut session, prompt, opts.verbose).map_err(TurnError::into_message);
    }
    let mut failed = Failed::default();
    if let Some(p) = opts.prompt.as_deref() {
        failed.check(run_turn(&mut session, p, opts.verbose))?;
    }
    if io::stdin().is_terminal() {
        run_terminal(&mut session, opts.verbose)
    } else {
        run_pipe(&mut session, opts.verbose, &mut failed)?;
        failed.result()
    }
}

/// Counts the turns of a chat and those that failed.
#[derive(Default)]
struct Failed {
    turns: usize,
    failed: usize,
}

impl Failed {
    /// A failed turn is reported and counted; only a failed output is returned as an error.
    fn check<T>(&mut self, r: Result<T, TurnError>) -> Result<Option<T>, String> {
        self.turns += 1;
        match r {
            Ok(v) => Ok(Some(v)),
            Err(TurnError::Turn(e)) => {
                eprintln!("error: {e}");
                self.failed += 1;
                Ok(None)
            }
            Err(TurnError::Output(e)) => Err(e),
        }
    }

    fn result(&self) -> Result<(), String> {
        match self.failed {
            0 => Ok(()),
            n => Err(format!(
                "{n} of {} chat inputs failed (each reported above)",
                self.turns
            )),
        }
    }
}

/// Handles a command; returns false for `/exit`.
fn handle(
    session: &mut Session,
    line: &str,
    verbose: bool,
    terminal: bool,
) -> Result<bool, TurnError> {
    match parse_input(line) {
        Input::Exit => return Ok(false),
        Input::Reset => {
            session.reset();
            if terminal {
                eprintln!("[conversation cleared]");
            }
        }
        Input::System("") => eprintln!("usage: /system TEXT"),
        Input::System(text) => {
            session.set_system(text).map_err(TurnError::Turn)?;
            if terminal {
                eprintln!("[system prompt replaced]");
            }
        }
        Input::Message(m) if m.trim().is_empty() => {}
        Input::Message(m) => run_turn(session, m, verbose)?,
    }
    Ok(true)
}

/// One line per turn. A line that is not UTF-8 fails as a turn of its own.
fn run_pipe(session: &mut Session, verbose: bool, failed: &mut Failed) -> Result<(), String> {
    let stdin = io::stdin();
    let mut line = Vec::new();
    let mut line_no = 0usize;
    loop {
        line.clear();
        line_no += 1;
        let n = stdin
            .lock()
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        let r = match std::str::from_utf8(&line) {
            Ok(text) => handle(session, text.trim_end_matches(['\n', '\r']), verbose, false),
            Err(e) => Err(TurnError::Turn(format!(
                "input line {} is not valid UTF-8 (byte {}); skipped",
                line_no,
                e.valid_up_to()
            ))),
        };
        if failed.check(r)? == Some(false) {
            return Ok(());
        }
    }
}

fn run_terminal(session: &mut Session, verbose: bool) -> Result<(), String> {
    use rustyline::error::ReadlineError;
    let mut rl =
        rustyline::DefaultEditor::new().map_err(|e| format!("cannot set up line editing: {e}"))?;
    eprintln!("[chat: /exit or Ctrl-D to leave, /reset to clear, /system TEXT to replace the system prompt; Ctrl-C stops a reply]");
    loop {
        match rl.readline("> ") {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = rl.add_history_entry(line.as_str());
                }
                // A failed turn (a message too long for the context, a template error) is
                // reported and the chat goes on.
                match handle(session, &line, verbose, true) {
                    Ok(true) => {}
                    Ok(false) => return Ok(()),
                    Err(e) => eprintln!("error: {}", e.into_message()),
                }
            }
            Err(ReadlineError::Interrupted) | Err(ReadlineError::Eof) => return Ok(()),
            Err(e) => return Err(format!("cannot read the terminal: {e}")),
        }
    }
}
