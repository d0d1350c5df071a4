//! Chat prompts: a file's `tokenizer.chat_template` (Jinja) rendered with minijinja the way Hugging Face's
//! `apply_chat_template` renders it (transformers `utils/chat_template_utils.py`):
//! - `trim_blocks` and `lstrip_blocks` on, loop controls (`break`/`continue`), a single trailing newline of
//!   the template dropped;
//! - globals `raise_exception(msg)` and `strftime_now(fmt)`, the filter `tojson` with Python's
//!   `json.dumps` output (`ensure_ascii=False`, `", "`/`": "` separators, `indent`, `sort_keys`), Python
//!   string and dict methods (`.strip()`, `.startswith()`, `.split()`, `.items()`, ...) via
//!   minijinja-contrib's pycompat;
//! - variables `messages` (a list of `{role, content}` maps in that key order), `add_generation_prompt`,
//!   `tools` = `documents` = none, and `bos_token` / `eos_token` when the file names them.
//!
//! Files without a template (Qwen-1) get standard ChatML ([`CHATML`]). Differences from HF that remain:
//! `strftime_now` uses UTC where Python uses local time; the `{% generation %}` tag is not supported.

use std::fmt;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

/// ChatML as Hugging Face documents it (and as Qwen-1's `make_context` writes it).
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The system prompt used when the user gives none and the template has no default of its own.
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// Step budget of one template render (minijinja fuel).
const TEMPLATE_FUEL: u64 = 5_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
    pub fn system(content: &str) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: &str) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: &str) -> Self {
        Self::new("assistant", content)
    }
}

/// A template that does not compile or fails to render (including its own `raise_exception`).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatError(pub String);

impl fmt::Display for ChatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ChatError {}

const NAME: &str = "chat_template";

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    has_default_system: bool,
    supports_system: bool,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("has_default_system", &self.has_default_system)
            .field("supports_system", &self.supports_system)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`. `bos_token` / `eos_token` are the token strings the template may refer to.
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        // A template is code from the file: bound its work. Real chat templates
        // render a long conversation in well under 10^5 steps.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| ChatError(format!("chat template does not compile: {}", describe(&e))))?;
        let mut t = Self {
            env,
            bos_token: bos_token.map(str::to_string),
            eos_token: eos_token.map(str::to_string),
            has_default_system: false,
            supports_system: false,
        };
        // Probe what the template does with a conversation that has no system message: if a system part
        // appears before the user's text, the template brings its own default system prompt.
        const PROBE: &str = "\u{1}probe\u{1}";
        if let Ok(s) = t.render(&[Message::user(PROBE)], false) {
            if let Some(at) = s.find(PROBE) {
                t.has_default_system = s[..at].to_ascii_lowercase().contains("system");
            }
        }
        t.supports_system = t
            .render(&[Message::system("s"), Message::user("u")], false)
            .is_ok();
        Ok(t)
    }

    /// The file's `tokenizer.chat_template`, or ChatML when it has none (Qwen-1 files). `bos_token` /
    /// `eos_token` are the texts of `tokenizer.ggml.bos_token_id` / `eos_token_id`.
    pub fn from_gguf(
        g: &quant_formats::gguf::Gguf,
        tok: &crate::tokenizer::Tokenizer,
    ) -> Result<Self, ChatError> {
        let key_err = |k: &str, e: quant_formats::gguf::GgufError| {
            ChatError(format!("metadata key '{k}': {e}"))
        };
        let token_text = |k: &str| -> Result<Option<String>, ChatError> {
            match g.get_u32(k).map_err(|e| key_err(k, e))? {
                None => Ok(None),
                Some(id) => tok
                    .decode(&[id])
                    .map(Some)
                    .map_err(|e| ChatError(format!("metadata key '{k}': {e}"))),
            }
        };
        let bos = token_text("tokenizer.ggml.bos_token_id")?;
        let eos = token_text("tokenizer.ggml.eos_token_id")?;
        const K: &str = "tokenizer.chat_template";
        match g.get_str(K).map_err(|e| key_err(K, e))? {
            Some(src) => Self::new(src, bos.as_deref(), eos.as_deref()),
            None => Self::new(CHATML, bos.as_deref(), eos.as_deref()),
        }
    }

    /// Standard ChatML (files without a template of their own).
    pub fn chatml() -> Self {
        // CHATML is a constant known to compile (tested).
        match Self::new(CHATML, None, None) {
            Ok(t) => t,
            Err(e) => unreachable!("built-in ChatML template: {e}"),
        }
    }

    /// True when the template inserts a system prompt of its own if the conversation has none
    /// (Qwen2.5: "You are Qwen, created by Alibaba Cloud. ...", SmolLM2: "You are a helpful AI assistant named SmolLM ...").
    pub fn has_default_system(&self) -> bool {
        self.has_default_system
    }

    /// False for templates that reject a system message (they `raise_exception` on it).
    pub fn supports_system(&self) -> bool {
        self.supports_system
    }

    /// The system message a conversation starts with: the user's `system` if given; else none when the
    /// template has its own default (or rejects system messages); else [`DEFAULT_SYSTEM`].
    pub fn initial_system(&self, system: Option<&str>) -> Result<Option<Message>, ChatError> {
        match system {
            Some(s) if !self.supports_system => Err(ChatError(format!(
                "this chat template does not accept a system message (asked for {:?})",
                truncate(s, 40)
            ))),
            Some(s) => Ok(Some(Message::system(s))),
            None if self.has_default_system || !self.supports_system => Ok(None),
            None => Ok(Some(Message::system(DEFAULT_SYSTEM))),
        }
    }

    /// Renders the conversation. With `add_generation_prompt` the text ends where the assistant's reply
    /// begins (ChatML: `<|im_start|>assistant\n`).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_iter([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", Value::from(msgs)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ];
        if let Some(b) = &self.bos_token {
            ctx.push(("bos_token", Value::from(b.as_str())));
        }
        if let Some(e) = &self.eos_token {
            ctx.push(("eos_token", Value::from(e.as_str())));
        }
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| ChatError(describe(&e)))?;
        tmpl.render(Value::from_iter(ctx))
            .map_err(|e| ChatError(format!("chat template failed: {}", describe(&e))))
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// One line: the error, its detail and the template line.
fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)` as HF's filter.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.kind() {
            ValueKind::Number => Some(" ".repeat(v.as_i64().unwrap_or(0).clamp(0, 64) as usize)),
            ValueKind::String => Some(v.as_str().unwrap_or("").to_string()),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an int or a string",
                ))
            }
        },
    };
    // Python: separators default to (', ', ': '), or (',', ': ') when indent is given.
    let (item_sep, key_sep) = match separators {
        Some(s) if !s.is_none() => {
            let a = s.get_item_by_index(0)?;
            let b = s.get_item_by_index(1)?;
            match (a.as_str(), b.as_str()) {
                (Some(a), Some(b)) => (a.to_string(), b.to_string()),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    ))
                }
            }
        }
        _ => (
            (if indent.is_some() { "," } else { ", " }).to_string(),
            ": ".to_string(),
        ),
    };
    let opts = JsonOpts {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(Value::from(out))
}

struct JsonOpts {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn newline_indent(out: &mut String, opts: &JsonOpts, depth: usize) {
    if let Some(ind) = &opts.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(ind);
        }
    }
}

fn write_json(out: &mut String, v: &Value, opts: &JsonOpts, depth: usize) -> Result<(), Error> {
    if depth > 128 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: nesting deeper than 128",
        ));
    }
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&py_float(f));
            }
        }
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or(""), opts.ensure_ascii),
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if opts.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline_indent(out, opts, depth + 1);
                match k.as_str() {
                    Some(s) => write_json_str(out, s, opts.ensure_ascii),
                    None => write_json_str(out, &k.to_string(), opts.ensure_ascii),
                }
                out.push_str(&opts.key_sep);
                write_json(out, &v.get_item(k)?, opts, depth + 1)?;
            }
            newline_indent(out, opts, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline_indent(out, opts, depth + 1);
                write_json(out, item, opts, depth + 1)?;
            }
            newline_indent(out, opts, depth);
            out.push(']');
        }
        _ => write_json_str(out, &v.to_string(), opts.ensure_ascii),
    }
    Ok(())
}

/// Python's `repr(float)` for JSON: `1.0`, `0.5`, `1e+20`, `NaN`, `Infinity`.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust `{:e}` gives "1e20" / "1.5e-7"; Python gives "1e+20" / "1.5e-07".
        let s = format!("{f:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match e.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', e),
        };
        return format!("{m}e{sign}{digits:0>2}");
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `datetime.now().strftime(fmt)`, in UTC. Knows %Y %y %m %d %e %j %H %I %M %S %p %a %A %b %B %h %%;
/// anything else is copied as is.
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    strftime_utc(&fmt, secs)
}

/// Formats `secs` since the Unix epoch (UTC) with a subset of C's strftime.
pub fn strftime_utc(fmt: &str, secs: i64) -> String {
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (tod / 3600, tod / 60 % 60, tod % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday (index 3 from Monday)
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('H') => out.push_str(&format!("{hh:02}")),
            Some('I') => out.push_str(&format!("{:02}", if hh % 12 == 0 { 12 } else { hh % 12 })),
            Some('M') => out.push_str(&format!("{mm:02}")),
            Some('S') => out.push_str(&format!("{ss:02}")),
            Some('p') => out.push_str(if hh < 12 { "AM" } else { "PM" }),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('b') | Some('h') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 -> (year, month 1..=12, day 1..=31).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
