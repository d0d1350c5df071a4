//! Tokenizer, chat template and generation defaults -> GGUF `tokenizer.*` keys
//! (llama.cpp's "gpt2" byte-level BPE convention) and our `qwen_rs.*` extras.
//!
//! - Qwen2/3: `tokenizer.json` (vocab, merges, added tokens, pre-tokenizer,
//!   normalizer) + `tokenizer_config.json` (special tokens, chat template).
//! - Qwen-1: `qwen.tiktoken` (base64 token + rank per line) and Qwen-1's fixed
//!   special tokens; tokens are written in GPT-2 byte-to-unicode form and the
//!   merges are reconstructed from the ranks as llama.cpp's `QwenModel.bpe`
//!   does (each multi-byte token splits into exactly two lower-ranked parts).
//! - Either: `generation_config.json` -> `qwen_rs.generation.*` (+ llama.cpp's
//!   `general.sampling.min_p`); with `do_sample` true the keys it leaves out get
//!   transformers' defaults, with `do_sample` false or absent temperature is 0.
//!
//! Ids below `vocab_size` (the rows of the output matrix) that no token uses
//! become `[PAD{id}]` with type UNUSED, as llama.cpp's converter does.

use crate::arch::{Arch, Hparams};
use crate::hf::{read_json, read_text, short, Config};
use crate::meta::{Meta, MetaValue};
use crate::{bail, Error, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;
pub const TOKEN_UNUSED: i32 = 5;

/// The pre-tokenizer regex of Qwen2/2.5/3 (and Qwen-1's tiktoken PAT_STR).
pub const QWEN2_PRE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The usual ChatML template, written for Qwen-1 (whose files carry none).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Qwen-1 special tokens, in id order from `n_ranks` (tokenization_qwen.py).
pub const QWEN1_NAMED_SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
pub const QWEN1_N_EXTRAS: usize = 205;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generation {
    pub eos_token_ids: Vec<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    /// Written as llama.cpp's `general.sampling.min_p` (the runtime reads it there).
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Vocab {
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    pub merges: Vec<String>,
    /// `tokenizer.ggml.pre`: "qwen2" or "smollm".
    pub pre: String,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    pub chat_template: Option<String>,
    /// Input must be NFC-normalized before pre-tokenization.
    pub nfc: bool,
    pub generation: Generation,
}

impl Vocab {
    pub fn load(dir: &Path, hp: &Hparams, cfg: &Config) -> Result<Vocab> {
        let mut v = match hp.arch {
            Arch::Qwen => load_qwen1(dir, hp.n_vocab)?,
            Arch::Qwen2 | Arch::Qwen3 => load_hf(dir, hp.n_vocab, cfg)?,
        };
        v.generation = load_generation(dir, &v, hp.arch)?;
        Ok(v)
    }

    /// Append the tokenizer keys; consumes the vocabulary (no copies of the
    /// 150k-entry token and merge lists).
    pub fn into_metadata(self, meta: &mut Meta) {
        meta.push("tokenizer.ggml.model", MetaValue::Str("gpt2".into()));
        meta.push("tokenizer.ggml.pre", MetaValue::Str(self.pre));
        meta.push("tokenizer.ggml.tokens", MetaValue::ArrStr(self.tokens));
        meta.push("tokenizer.ggml.token_type", MetaValue::ArrI32(self.types));
        meta.push("tokenizer.ggml.merges", MetaValue::ArrStr(self.merges));
        if let Some(id) = self.bos {
            meta.push("tokenizer.ggml.bos_token_id", MetaValue::U32(id));
        }
        if let Some(id) = self.eos {
            meta.push("tokenizer.ggml.eos_token_id", MetaValue::U32(id));
        }
        if let Some(id) = self.pad {
            meta.push("tokenizer.ggml.padding_token_id", MetaValue::U32(id));
        }
        meta.push("tokenizer.ggml.add_bos_token", MetaValue::Bool(false));
        if let Some(t) = self.chat_template {
            meta.push("tokenizer.chat_template", MetaValue::Str(t));
        }
        if self.nfc {
            meta.push("qwen_rs.tokenizer.normalizer", MetaValue::Str("NFC".into()));
        }
        let g = self.generation;
        if !g.eos_token_ids.is_empty() {
            meta.push(
                "qwen_rs.generation.eos_token_ids",
                MetaValue::ArrU32(g.eos_token_ids),
            );
        }
        if let Some(x) = g.temperature {
            meta.push("qwen_rs.generation.temperature", MetaValue::F32(x));
        }
        if let Some(x) = g.top_p {
            meta.push("qwen_rs.generation.top_p", MetaValue::F32(x));
        }
        if let Some(x) = g.top_k {
            meta.push("qwen_rs.generation.top_k", MetaValue::U32(x));
        }
        if let Some(x) = g.min_p {
            meta.push("general.sampling.min_p", MetaValue::F32(x));
        }
        if let Some(x) = g.repetition_penalty {
            meta.push("qwen_rs.generation.repetition_penalty", MetaValue::F32(x));
        }
    }
}

/// GPT-2's byte -> printable char table (`bytes_to_unicode` in transformers).
pub fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut n = 0u32;
    for b in 0..256u32 {
        let cp = if printable(b) {
            b
        } else {
            n += 1;
            255 + n
        };
        table[b as usize] = char::from_u32(cp).unwrap_or('\u{FFFD}');
    }
    table
}

fn bytes_to_token(table: &[char; 256], bytes: &[u8]) -> String {
    bytes.iter().map(|&b| table[b as usize]).collect()
}

/// Fill ids below `n_vocab` that have no token with `[PAD{id}]` / UNUSED.
fn finish_table(slots: Vec<Option<(String, i32)>>) -> (Vec<String>, Vec<i32>) {
    let mut tokens = Vec::with_capacity(slots.len());
    let mut types = Vec::with_capacity(slots.len());
    for (i, s) in slots.into_iter().enumerate() {
        match s {
            Some((t, ty)) => {
                tokens.push(t);
                types.push(ty);
            }
            None => {
                tokens.push(format!("[PAD{i}]"));
                types.push(TOKEN_UNUSED);
            }
        }
    }
    (tokens, types)
}

// ---------------------------------------------------------------- Qwen-1 --

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.as_bytes();
    if s.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (ci, chunk) in s.chunks(4).enumerate() {
        let last = ci + 1 == s.len() / 4;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut acc = 0u32;
        for &c in &chunk[..4 - pad] {
            acc = (acc << 6) | val(c)?;
        }
        acc <<= 6 * pad as u32;
        let bytes = [(acc >> 16) as u8, (acc >> 8) as u8, acc as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// Split `token` by repeatedly merging the lowest-ranked adjacent pair, with
/// ranks below `max_rank` only (llama.cpp `QwenModel.bpe`).
fn bpe_split(ranks: &HashMap<Vec<u8>, u32>, token: &[u8], max_rank: u32) -> Vec<Vec<u8>> {
    let mut parts: Vec<Vec<u8>> = token.iter().map(|&b| vec![b]).collect();
    let mut joined = Vec::new();
    loop {
        let mut best: Option<(usize, u32)> = None;
        for i in 0..parts.len().saturating_sub(1) {
            joined.clear();
            joined.extend_from_slice(&parts[i]);
            joined.extend_from_slice(&parts[i + 1]);
            if let Some(&r) = ranks.get(&joined) {
                if best.map_or(true, |(_, br)| r < br) {
                    best = Some((i, r));
                }
            }
        }
        match best {
            Some((i, r)) if r < max_rank => {
                let next = parts.remove(i + 1);
                parts[i].extend_from_slice(&next);
            }
            _ => return parts,
        }
    }
}

fn load_qwen1(dir: &Path, n_vocab: usize) -> Result<Vocab> {
    let path = dir.join("qwen.tiktoken");
    if !path.is_file() {
        bail!(
            "{}: no such file (Qwen-1 checkpoints carry their tokenizer there)",
            path.display()
        );
    }
    let text = read_text(&path)?;
    let mut by_rank: Vec<Option<Vec<u8>>> = Vec::new();
    let mut ranks: HashMap<Vec<u8>, u32> = HashMap::new();
    for (ln, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let mut it = line.split(' ');
        let (Some(b64), Some(rank), None) = (it.next(), it.next(), it.next()) else {
            bail!(
                "{}:{}: expected `<base64> <rank>`, found {:?}",
                path.display(),
                ln + 1,
                line
            );
        };
        let Some(bytes) = base64_decode(b64) else {
            bail!("{}:{}: invalid base64 {:?}", path.display(), ln + 1, b64);
        };
        let Ok(rank) = rank.parse::<u32>() else {
            bail!("{}:{}: invalid rank {:?}", path.display(), ln + 1, rank);
        };
        if rank as usize >= n_vocab {
            bail!(
                "{}:{}: rank {rank} is not below vocab_size {n_vocab}",
                path.display(),
                ln + 1
            );
        }
        if bytes.is_empty() {
            bail!("{}:{}: empty token", path.display(), ln + 1);
        }
        if ranks.insert(bytes.clone(), rank).is_some() {
            bail!(
                "{}:{}: token {:?} appears twice",
                path.display(),
                ln + 1,
                b64
            );
        }
        if by_rank.len() <= rank as usize {
            by_rank.resize(rank as usize + 1, None);
        }
        if by_rank[rank as usize].is_some() {
            bail!("{}:{}: rank {rank} appears twice", path.display(), ln + 1);
        }
        by_rank[rank as usize] = Some(bytes);
    }
    let n_ranks = ranks.len();
    if n_ranks == 0 {
        bail!("{}: no tokens", path.display());
    }
    let table = byte_to_unicode();
    let mut slots: Vec<Option<(String, i32)>> = vec![None; n_vocab];
    let mut merges = Vec::new();
    for (rank, bytes) in by_rank.iter().enumerate() {
        let Some(bytes) = bytes else { continue };
        slots[rank] = Some((bytes_to_token(&table, bytes), TOKEN_NORMAL));
        if bytes.len() == 1 {
            continue;
        }
        let parts = bpe_split(&ranks, bytes, rank as u32);
        if parts.len() != 2 {
            bail!(
                "{}: token of rank {rank} ({:?}) does not split into two lower-ranked tokens (got {} parts)",
                path.display(),
                bytes_to_token(&table, bytes),
                parts.len()
            );
        }
        merges.push(format!(
            "{} {}",
            bytes_to_token(&table, &parts[0]),
            bytes_to_token(&table, &parts[1])
        ));
    }
    // Specials follow the ranks: <|endoftext|>, <|im_start|>, <|im_end|>, <|extra_0|>...
    let specials: Vec<String> = QWEN1_NAMED_SPECIALS
        .iter()
        .map(|s| s.to_string())
        .chain((0..QWEN1_N_EXTRAS).map(|i| format!("<|extra_{i}|>")))
        .collect();
    for (i, s) in specials.iter().enumerate() {
        let id = n_ranks + i;
        if id >= n_vocab {
            if i < QWEN1_NAMED_SPECIALS.len() {
                bail!(
                    "{}: special token {s} would get id {id}, not below vocab_size {n_vocab}",
                    path.display()
                );
            }
            break; // extras past the output matrix can never be produced
        }
        if slots[id].is_some() {
            bail!(
                "{}: special token {s} id {id} collides with a rank",
                path.display()
            );
        }
        slots[id] = Some((s.clone(), TOKEN_CONTROL));
    }
    let (tokens, types) = finish_table(slots);
    let eot = n_ranks as u32;
    Ok(Vocab {
        tokens,
        types,
        merges,
        pre: "qwen2".into(),
        bos: Some(eot),
        eos: Some(eot),
        pad: Some(eot),
        chat_template: Some(CHATML_TEMPLATE.into()),
        nfc: true, // tokenization_qwen.py NFC-normalizes every input
        generation: Generation::default(),
    })
}

// ------------------------------------------------------------- Qwen2 / 3 --

/// `tokenizer.ggml.pre` from tokenizer.json's `pre_tokenizer`.
pub fn detect_pre(path: &Path, pre: Option<&Value>) -> Result<&'static str> {
    let unknown = |v: Option<&Value>| {
        Error::new(format!(
            "{}: unsupported pre_tokenizer {}; supported: Qwen2 regex split + ByteLevel (\"qwen2\"), Digits + ByteLevel (\"smollm\")",
            path.display(),
            v.map(short).unwrap_or_else(|| "null".into())
        ))
    };
    let Some(pre) = pre else {
        return Err(unknown(None));
    };
    let steps: Vec<&Value> = match pre.get("type").and_then(Value::as_str) {
        Some("Sequence") => match pre.get("pretokenizers").and_then(Value::as_array) {
            Some(a) => a.iter().collect(),
            None => return Err(unknown(Some(pre))),
        },
        _ => vec![pre],
    };
    let ty = |v: &Value| {
        v.get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let flag = |v: &Value, k: &str| v.get(k).and_then(Value::as_bool);
    match steps.as_slice() {
        [split, bl] if ty(split) == "Split" && ty(bl) == "ByteLevel" => {
            let re = split
                .get("pattern")
                .and_then(|p| p.get("Regex"))
                .and_then(Value::as_str);
            let isolated = split.get("behavior").and_then(Value::as_str) == Some("Isolated");
            if re == Some(QWEN2_PRE_REGEX)
                && isolated
                && flag(split, "invert") != Some(true)
                && flag(bl, "use_regex") == Some(false)
            {
                return Ok("qwen2");
            }
            Err(unknown(Some(pre)))
        }
        [digits, bl] if ty(digits) == "Digits" && ty(bl) == "ByteLevel" => {
            if flag(digits, "individual_digits") == Some(true)
                && flag(bl, "use_regex") != Some(false)
            {
                return Ok("smollm");
            }
            Err(unknown(Some(pre)))
        }
        _ => Err(unknown(Some(pre))),
    }
}

/// True when the normalizer is NFC (alone or in a Sequence of NFCs); false
/// when there is none; an error for anything else.
pub fn detect_nfc(path: &Path, norm: Option<&Value>) -> Result<bool> {
    let Some(n) = norm.filter(|v| !v.is_null()) else {
        return Ok(false);
    };
    let ty = n.get("type").and_then(Value::as_str);
    match ty {
        Some("NFC") => Ok(true),
        Some("Sequence") => {
            let parts = n.get("normalizers").and_then(Value::as_array);
            match parts {
                Some(p) if p.is_empty() => Ok(false),
                Some(p)
                    if p.iter()
                        .all(|x| x.get("type").and_then(Value::as_str) == Some("NFC")) =>
                {
                    Ok(true)
                }
                _ => bail!("{}: unsupported normalizer {}", path.display(), short(n)),
            }
        }
        _ => bail!(
            "{}: unsupported normalizer {} (only NFC)",
            path.display(),
            short(n)
        ),
    }
}

/// Whether an added token that is not marked special still gets llama.cpp's CONTROL
/// type (its converter's `does_token_look_special`): `<|…|>` and `<｜…｜>` forms,
/// `<unused…>`, and `<pad>`, `<mask>`, `<2mass>`, `[@BOS@]`. Qwen2.5 marks its
/// `<|fim_prefix|>`… tokens `"special": false`; llama.cpp files have them as control.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// A special-token field of tokenizer_config.json: "text", {"content": "text"} or null.
fn token_text(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

/// An id field of config.json / generation_config.json: n or [n, ...].
fn id_list(path: &Path, key: &str, v: Option<&Value>) -> Result<Vec<u32>> {
    let as_id = |x: &Value| {
        x.as_u64()
            .filter(|&n| n <= u32::MAX as u64)
            .map(|n| n as u32)
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                as_id(x).ok_or_else(|| {
                    Error::new(format!(
                        "{}: `{key}` holds {} (not a token id)",
                        path.display(),
                        short(x)
                    ))
                })
            })
            .collect(),
        Some(x) => match as_id(x) {
            Some(id) => Ok(vec![id]),
            None => bail!(
                "{}: `{key}` = {} is not a token id",
                path.display(),
                short(x)
            ),
        },
    }
}

fn load_hf(dir: &Path, n_vocab: usize, cfg: &Config) -> Result<Vocab> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        bail!(
            "{}: no such file (Qwen2/Qwen3 checkpoints need tokenizer.json)",
            path.display()
        );
    }
    let tj = read_json(&path)?;
    // Borrowed, not cloned: a 151k-token vocabulary is ~100 MB as serde_json values.
    let model = tj.get("model").unwrap_or(&Value::Null);
    let mtype = model.get("type").and_then(Value::as_str);
    if mtype != Some("BPE") {
        bail!(
            "{}: model.type is {:?}; only byte-level BPE is supported",
            path.display(),
            mtype.unwrap_or("missing")
        );
    }
    let pre = detect_pre(&path, tj.get("pre_tokenizer"))?;
    let nfc = detect_nfc(&path, tj.get("normalizer"))?;

    let mut slots: Vec<Option<(String, i32)>> = vec![None; n_vocab];
    let mut by_text: HashMap<String, u32> = HashMap::new();
    let Some(vocab) = model.get("vocab").and_then(Value::as_object) else {
        bail!(
            "{}: model.vocab must be an object of token -> id",
            path.display()
        );
    };
    for (tok, id) in vocab {
        let Some(id) = id.as_u64() else {
            bail!(
                "{}: token {tok:?} has id {} (not an integer)",
                path.display(),
                short(id)
            );
        };
        if id as usize >= n_vocab {
            bail!(
                "{}: token {tok:?} has id {id}, not below vocab_size {n_vocab} of config.json",
                path.display()
            );
        }
        if slots[id as usize].is_some() {
            bail!(
                "{}: id {id} is used by two tokens (one is {tok:?})",
                path.display()
            );
        }
        slots[id as usize] = Some((tok.clone(), TOKEN_NORMAL));
        by_text.insert(tok.clone(), id as u32);
    }

    // Added tokens: tokenizer.json `added_tokens`, then any extra ones in
    // tokenizer_config.json `added_tokens_decoder`. special (or looking special,
    // see `looks_special`) -> CONTROL, otherwise USER_DEFINED. They are stored as
    // raw text, as llama.cpp does.
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.is_file() {
        Some(read_json(&tc_path)?)
    } else {
        None
    };
    let mut added: Vec<(u64, String, bool)> = Vec::new();
    if let Some(list) = tj.get("added_tokens") {
        let Some(list) = list.as_array() else {
            bail!("{}: added_tokens must be a list", path.display());
        };
        for t in list {
            let (Some(id), Some(content)) = (
                t.get("id").and_then(Value::as_u64),
                t.get("content").and_then(Value::as_str),
            ) else {
                bail!(
                    "{}: added token {} lacks an integer `id` or a string `content`",
                    path.display(),
                    short(t)
                );
            };
            added.push((
                id,
                content.to_string(),
                t.get("special").and_then(Value::as_bool).unwrap_or(false),
            ));
        }
    }
    if let Some(dec) = tc
        .as_ref()
        .and_then(|c| c.get("added_tokens_decoder"))
        .and_then(Value::as_object)
    {
        for (id, t) in dec {
            let (Ok(id), Some(content)) =
                (id.parse::<u64>(), t.get("content").and_then(Value::as_str))
            else {
                bail!(
                    "{}: added_tokens_decoder entry {id:?} is malformed",
                    tc_path.display()
                );
            };
            if !added.iter().any(|(i, _, _)| *i == id) {
                added.push((
                    id,
                    content.to_string(),
                    t.get("special").and_then(Value::as_bool).unwrap_or(false),
                ));
            }
        }
    }
    for (id, content, special) in added {
        if id as usize >= n_vocab {
            bail!(
                "{}: added token {content:?} has id {id}, not below vocab_size {n_vocab}",
                path.display()
            );
        }
        let ty = if special || looks_special(&content) {
            TOKEN_CONTROL
        } else {
            TOKEN_USER_DEFINED
        };
        by_text.insert(content.clone(), id as u32);
        slots[id as usize] = Some((content, ty));
    }

    let mut merges = Vec::new();
    if let Some(list) = model.get("merges") {
        let Some(list) = list.as_array() else {
            bail!("{}: model.merges must be a list", path.display());
        };
        merges.reserve(list.len());
        for (i, m) in list.iter().enumerate() {
            let s = match m {
                Value::String(s) if s.split(' ').count() == 2 => s.clone(),
                Value::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                    (Some(a), Some(b)) if !a.contains(' ') && !b.contains(' ') => {
                        format!("{a} {b}")
                    }
                    _ => bail!(
                        "{}: merge #{i} {} cannot be written as \"a b\"",
                        path.display(),
                        short(m)
                    ),
                },
                _ => bail!(
                    "{}: merge #{i} {} is neither \"a b\" nor [a, b]",
                    path.display(),
                    short(m)
                ),
            };
            merges.push(s);
        }
    }

    // Special ids: tokenizer_config.json names, then config.json ids.
    let lookup = |field: &str| -> Result<Option<u32>> {
        let Some(text) = token_text(tc.as_ref().and_then(|c| c.get(field))) else {
            return Ok(None);
        };
        match by_text.get(text) {
            Some(&id) => Ok(Some(id)),
            None => bail!(
                "{}: {field} {text:?} is not a token of {}",
                tc_path.display(),
                path.display()
            ),
        }
    };
    let from_cfg = |key: &str| -> Result<Option<u32>> {
        let ids = id_list(&cfg.path, key, cfg.raw.get(key))?;
        Ok(ids.first().copied())
    };
    let bos = match lookup("bos_token")? {
        Some(id) => Some(id),
        None => from_cfg("bos_token_id")?,
    };
    let eos = match lookup("eos_token")? {
        Some(id) => Some(id),
        None => from_cfg("eos_token_id")?,
    };
    let pad = match lookup("pad_token")? {
        Some(id) => Some(id),
        None => from_cfg("pad_token_id")?,
    };
    for (name, id) in [("bos", bos), ("eos", eos), ("pad", pad)] {
        if let Some(id) = id {
            if id as usize >= n_vocab {
                bail!(
                    "{}: {name} token id {id} is not below vocab_size {n_vocab}",
                    cfg.path.display()
                );
            }
        }
    }

    let chat_template = match tc.as_ref().and_then(|c| c.get("chat_template")) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => {
            let named: Vec<(&str, &str)> = list
                .iter()
                .filter_map(|t| Some((t.get("name")?.as_str()?, t.get("template")?.as_str()?)))
                .collect();
            match named.iter().find(|(n, _)| *n == "default") {
                Some((_, t)) => Some(t.to_string()),
                None => bail!(
                    "{}: chat_template list has no \"default\" entry (names: {:?})",
                    tc_path.display(),
                    named.iter().map(|(n, _)| *n).collect::<Vec<_>>()
                ),
            }
        }
        None | Some(Value::Null) => {
            let jinja = dir.join("chat_template.jinja");
            let json = dir.join("chat_template.json");
            if jinja.is_file() {
                Some(read_text(&jinja)?)
            } else if json.is_file() {
                read_json(&json)?
                    .get("chat_template")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            } else {
                None
            }
        }
        Some(v) => bail!(
            "{}: chat_template must be a string or a list, found {}",
            tc_path.display(),
            short(v)
        ),
    };

    let (tokens, types) = finish_table(slots);
    Ok(Vocab {
        tokens,
        types,
        merges,
        pre: pre.into(),
        bos,
        eos,
        pad,
        chat_template,
        nfc,
        generation: Generation::default(),
    })
}

fn load_generation(dir: &Path, v: &Vocab, arch: Arch) -> Result<Generation> {
    let path = dir.join("generation_config.json");
    let mut g = Generation::default();
    if path.is_file() {
        let j = read_json(&path)?;
        if !j.is_object() {
            bail!(
                "{}: expected a JSON object, found {}",
                path.display(),
                crate::hf::kind(&j)
            );
        }
        g.eos_token_ids = id_list(&path, "eos_token_id", j.get("eos_token_id"))?;
        let num = |key: &str| -> Result<Option<f64>> {
            match j.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => match x.as_f64() {
                    Some(f) if (f as f32).is_finite() => Ok(Some(f)),
                    _ => bail!(
                        "{}: `{key}` = {} is not a number within f32 range",
                        path.display(),
                        short(x)
                    ),
                },
            }
        };
        g.temperature = num("temperature")?.map(|x| x as f32);
        g.top_p = num("top_p")?.map(|x| x as f32);
        g.min_p = num("min_p")?.map(|x| x as f32);
        g.repetition_penalty = num("repetition_penalty")?.map(|x| x as f32);
        g.top_k = match num("top_k")? {
            None => None,
            Some(k) if k >= 0.0 && k <= u32::MAX as f64 && k.fract() == 0.0 => Some(k as u32),
            Some(k) => bail!(
                "{}: `top_k` = {k} is not a non-negative integer",
                path.display()
            ),
        };
        // transformers samples only with do_sample = true (its default is false, i.e.
        // greedy, whatever temperature/top_p/top_k say): store that as temperature 0.
        match j.get("do_sample") {
            // transformers fills what the file leaves out from
            // GenerationConfig._get_default_generation_params(): temperature 1.0,
            // top_k 50, top_p 1.0, and no min_p. Written out, so the runtime does
            // not fall back to llama.cpp's defaults (0.8, 40, 0.95, min_p 0.05).
            Some(Value::Bool(true)) => {
                g.temperature.get_or_insert(1.0);
                g.top_k.get_or_insert(50);
                g.top_p.get_or_insert(1.0);
                g.min_p.get_or_insert(0.0);
            }
            None | Some(Value::Null) | Some(Value::Bool(false)) => {
                g.temperature = Some(0.0);
                g.top_p = None;
                g.top_k = None;
                g.min_p = None;
            }
            Some(v) => bail!(
                "{}: `do_sample` must be true or false, found {}",
                path.display(),
                short(v)
            ),
        }
    }
    // The runtime's ranges (src/sampler.rs SamplerParams::validate): a value it
    // would refuse when sampling is refused here, naming the key.
    use quant_formats::limits::{MIN_P, REPETITION_PENALTY, TEMPERATURE, TOP_P};
    for (key, v, range) in [
        ("temperature", g.temperature, TEMPERATURE),
        ("top_p", g.top_p, TOP_P),
        ("min_p", g.min_p, MIN_P),
        (
            "repetition_penalty",
            g.repetition_penalty,
            REPETITION_PENALTY,
        ),
    ] {
        if let Some(v) = v.filter(|&v| !range.contains(v)) {
            bail!(
                "{}: `{key}` = {v} is outside {range}, the range the qwen-rs runtime accepts",
                path.display()
            );
        }
    }
    if g.eos_token_ids.is_empty() {
        g.eos_token_ids.extend(v.eos);
    }
    if arch == Arch::Qwen {
        // Qwen-1 chat stops on <|im_end|> and <|im_start|> (stop_words_ids of
        // its chat() for chat_format "chatml"), besides <|endoftext|>.
        for name in ["<|im_end|>", "<|im_start|>"] {
            if let Some(id) = v.tokens.iter().position(|t| t == name) {
                if !g.eos_token_ids.contains(&(id as u32)) {
                    g.eos_token_ids.push(id as u32);
                }
            }
        }
    }
    for &id in &g.eos_token_ids {
        if id as usize >= v.tokens.len() {
            bail!(
                "{}: eos_token_id {id} is not below vocab_size {}",
                path.display(),
                v.tokens.len()
            );
        }
    }
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = byte_to_unicode();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[0xad], 'Ń');
        let mut seen: Vec<char> = t.to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 256);
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("IQ==").unwrap(), b"!");
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGk/").unwrap(), [b'h', b'i', 0x3f]);
        assert!(base64_decode("a=bc").is_none());
        assert!(base64_decode("abc").is_none());
    }

    #[test]
    fn bpe_split_finds_two_parts() {
        let mut ranks = HashMap::new();
        for (i, t) in [&b"a"[..], b"b", b"c", b"ab", b"abc"].iter().enumerate() {
            ranks.insert(t.to_vec(), i as u32);
        }
        assert_eq!(
            bpe_split(&ranks, b"abc", 4),
            vec![b"ab".to_vec(), b"c".to_vec()]
        );
        assert_eq!(
            bpe_split(&ranks, b"ab", 3),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
    }
}
