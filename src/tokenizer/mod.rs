//! Byte-level BPE tokenizer built from the vocabulary stored in the model file.
//!
//! The vocabulary (GGUF `tokenizer.ggml.tokens`, `token_type`, `merges`) is in GPT-2's byte-level
//! form; see [`byte_level`]. Encoding is tiktoken's (tiktoken-rs `CoreBPE`): split the text with the
//! pre-tokenizer regex, look each piece up whole, else merge adjacent parts lowest rank first.
//! With ranks taken from the merges list (the token made by merge `i` has rank `256 + i`, single
//! bytes rank below 256) that is the same BPE as HF `tokenizers` and llama.cpp run on the same
//! file; the goldens in tests/tokenizer.rs hold it against both references.
//!
//! Special tokens (GGUF types 3 control and 4 user-defined) written in the text become their ids,
//! matched leftmost-longest like HF's added tokens. Rows of type 5 (unused, e.g. the `[PAD…]`
//! rows that pad the vocabulary to the embedding size) are never produced and decode to nothing.

pub mod byte_level;
mod gguf;
mod stream;

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, MatchKind};
use rustc_hash::FxHashMap;
use tiktoken_rs::{CoreBPE, Rank};
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

pub use stream::StreamDecoder;

/// Qwen's pre-tokenizer (Qwen-1's `PAT_STR`, the `Split` regex of Qwen2/Qwen3's tokenizer.json).
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// SmolLM2's pre-tokenizer as one regex. llama.cpp (LLAMA_VOCAB_PRE_TYPE_SMOLLM) and SmolLM2's
/// tokenizer.json (Digits(individual) then ByteLevel) first cut out every digit, then split each
/// digit-free run with GPT-2's regex
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
/// In one pass a digit must end a whitespace run as the end of the run's segment would, hence
/// `(?![^\s\p{N}])` in place of `(?!\S)`; ` ?\p{N}+` can no longer match and is dropped.
pub const SMOLLM_PATTERN: &str =
    r"\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+";

/// Errors from building the tokenizer or decoding ids. Display is one line naming the value.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("GGUF key {key}: {msg}")]
    Gguf { key: &'static str, msg: String },
    #[error("GGUF key {0} is missing")]
    MissingKey(&'static str),
    #[error("tokenizer.ggml.model is {0:?}; only \"gpt2\" (byte-level BPE) is supported")]
    UnsupportedModel(String),
    #[error("tokenizer.ggml.pre is {0:?}; supported pre-tokenizers: \"qwen2\", \"smollm\"")]
    UnsupportedPre(String),
    #[error("qwen_rs.tokenizer.normalizer is {0:?}; supported: \"NFC\"")]
    UnsupportedNormalizer(String),
    #[error("invalid vocabulary: {0}")]
    Vocab(String),
    #[error("token id {id} is outside the vocabulary of {n_tokens} tokens")]
    UnknownId { id: u32, n_tokens: usize },
    #[error("pre-tokenizer regex: {0}")]
    Regex(String),
}

/// How a text is split before BPE; chosen by GGUF `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// `qwen2` (also `deepseek-r1-qwen`): [`QWEN2_PATTERN`] (Qwen-1, Qwen2, Qwen2.5, Qwen3).
    Qwen2,
    /// `smollm`: [`SMOLLM_PATTERN`].
    SmolLm,
}

impl PreTokenizer {
    /// Maps a `tokenizer.ggml.pre` value; an unknown one is an error, never a guess.
    pub fn from_gguf_name(name: &str) -> Result<Self, TokenizerError> {
        match name {
            // llama.cpp's converter names the DeepSeek-R1-Distill-Qwen tokenizer by its own
            // hash; llama.cpp splits it as qwen2 (llama-vocab.cpp).
            "qwen2" | "deepseek-r1-qwen" => Ok(Self::Qwen2),
            "smollm" => Ok(Self::SmolLm),
            other => Err(TokenizerError::UnsupportedPre(other.to_string())),
        }
    }

    pub fn pattern(self) -> &'static str {
        match self {
            Self::Qwen2 => QWEN2_PATTERN,
            Self::SmolLm => SMOLLM_PATTERN,
        }
    }
}

/// Unicode normalization applied to the input text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalization {
    None,
    /// NFC on each stretch of text between special tokens (HF `tokenizers`: added tokens are cut
    /// out first, then the `NFC` normalizer runs on the rest). Qwen2 / Qwen3 files.
    Nfc,
    /// NFC on the whole text, then special tokens are matched (Qwen-1's `QWenTokenizer.encode`).
    /// Differs from [`Normalization::Nfc`] only when a combining mark follows a special token and
    /// composes with its last character (`>` + U+0338 = `≯`).
    NfcBeforeSpecials,
}

/// The role of a vocabulary row (GGUF `tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Type 1: a BPE token in byte-level form.
    Normal,
    /// Type 3 (control) or 4 (user-defined): its text is matched in the input and kept verbatim.
    Special,
    /// Type 5: a placeholder row; never produced, decodes to nothing.
    Unused,
}

impl TokenKind {
    /// Maps llama.cpp's token type of token `id`; types 2 (unknown) and 6 (byte) belong to
    /// SentencePiece vocabularies and are rejected.
    pub fn from_gguf_type(id: usize, ty: i32) -> Result<Self, TokenizerError> {
        match ty {
            1 => Ok(Self::Normal),
            3 | 4 => Ok(Self::Special),
            5 => Ok(Self::Unused),
            other => Err(TokenizerError::Vocab(format!(
                "token {id} has type {other}; supported: 1 normal, 3 control, 4 user-defined, 5 unused"
            ))),
        }
    }
}

/// Everything besides the vocabulary rows that [`Tokenizer::from_parts`] needs.
#[derive(Debug, Clone)]
pub struct TokenizerConfig {
    pub pre: PreTokenizer,
    pub normalization: Normalization,
    /// Ids that end generation (checked to be in the vocabulary).
    pub eos_ids: Vec<u32>,
}

/// A byte-level BPE tokenizer (see the module documentation).
pub struct Tokenizer {
    bpe: CoreBPE,
    /// `rank_to_id[rank]` when BPE ranks differ from token ids or some byte has no token
    /// ([`NO_ID`]); None when ranks are ids (every Qwen vocabulary).
    rank_to_id: Option<Vec<u32>>,
    /// Bytes of every row, concatenated: normal tokens decoded from byte-level form, specials as
    /// their UTF-8 text, unused rows empty. Row `id` is `bytes[offsets[id]..offsets[id + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<u32>,     // [n_tokens + 1]
    kinds: Vec<TokenKind>, // [n_tokens]
    /// Leftmost-longest matcher over the special tokens' texts; pattern `i` is `special_ids[i]`.
    specials: Option<AhoCorasick>,
    special_ids: Vec<u32>,
    special_by_text: FxHashMap<String, u32>,
    normalization: Normalization,
    eos_ids: Vec<u32>,
    /// What [`Tokenizer::from_gguf`] had to assume about the file (for the caller to show).
    warnings: Vec<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_tokens", &self.n_tokens())
            .field("n_specials", &self.special_ids.len())
            .field("ranks_are_ids", &self.rank_to_id.is_none())
            .field("normalization", &self.normalization)
            .field("eos_ids", &self.eos_ids)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from vocabulary rows (byte-level strings, one per id), their kinds,
    /// the merges (`"left right"`, best first) if the vocabulary has them, and the config.
    /// Without merges, token ids are the BPE ranks (tiktoken vocabularies).
    pub fn from_parts<T: AsRef<str> + Sync, M: AsRef<str> + Sync>(
        tokens: &[T],
        kinds: &[TokenKind],
        merges: Option<&[M]>,
        config: TokenizerConfig,
    ) -> Result<Tokenizer, TokenizerError> {
        let n = tokens.len();
        if kinds.len() != n {
            return Err(TokenizerError::Vocab(format!(
                "{} token kinds for {n} tokens",
                kinds.len()
            )));
        }
        // Ids and ranks are u32 and u32::MAX is tiktoken's "no rank".
        if n >= u32::MAX as usize / 2 {
            return Err(TokenizerError::Vocab(format!(
                "{n} tokens; the limit is {}",
                u32::MAX / 2
            )));
        }

        // 1. The row table used for decoding (it checks every row), and whether ranks are ids:
        // true when the merges say so (all Qwen vocabularies) or when there are no merges.
        // Both in parallel on rayon's current pool.
        let (follows, rows) = rayon::join(
            || merges.map_or(Ok(true), |m| ranks_follow_ids(tokens, kinds, m)),
            || row_bytes(tokens, kinds),
        );
        let (bytes, offsets) = rows?;

        // 2. The tiktoken encoder (bytes -> rank), whose construction dominates the build time.
        let follows = follows?;
        let (mut encoder, mut rank_to_id) = match merges {
            Some(m) if !follows => {
                let (enc, map) = ranked_encoder(tokens, kinds, m)?;
                (enc, Some(map))
            }
            _ => {
                let limit = merges.map_or(n, |m| (256 + m.len()).min(n));
                (identity_encoder(kinds, &bytes, &offsets, limit), None)
            }
        };
        add_missing_bytes(&mut encoder, &mut rank_to_id);

        // 3. tiktoken's BPE over that encoder with the pre-tokenizer regex.
        let bpe = CoreBPE::new(encoder, FxHashMap::default(), config.pre.pattern())
            .map_err(|e| TokenizerError::Regex(e.to_string()))?;

        // 4. Special tokens, matched leftmost-longest as HF's added-token splitter does.
        let mut special_by_text = FxHashMap::default();
        let mut special_ids = Vec::new();
        let mut special_texts: Vec<&str> = Vec::new();
        for (id, (tok, &kind)) in tokens.iter().zip(kinds).enumerate() {
            let tok = tok.as_ref();
            if kind == TokenKind::Special && !tok.is_empty() && !special_by_text.contains_key(tok) {
                special_by_text.insert(tok.to_string(), id as u32);
                special_ids.push(id as u32);
                special_texts.push(tok);
            }
        }
        let specials = if special_texts.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&special_texts)
                    .map_err(|e| TokenizerError::Vocab(format!("special tokens: {e}")))?,
            )
        };

        for &id in &config.eos_ids {
            if id as usize >= n {
                return Err(TokenizerError::Vocab(format!(
                    "end-of-sequence id {id} is outside the vocabulary of {n} tokens"
                )));
            }
        }

        Ok(Tokenizer {
            bpe,
            rank_to_id,
            bytes,
            offsets,
            kinds: kinds.to_vec(),
            specials,
            special_ids,
            special_by_text,
            normalization: config.normalization,
            eos_ids: config.eos_ids,
            warnings: Vec::new(),
        })
    }

    /// Token ids of `text`: normalized as the file says, special tokens written in the text become
    /// their ids (like Qwen's tokenizers with allowed_special="all"), no BOS/EOS added.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = match self.normalization {
            Normalization::NfcBeforeSpecials => nfc(text),
            Normalization::None | Normalization::Nfc => Cow::Borrowed(text),
        };
        let per_segment = self.normalization == Normalization::Nfc;
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut last = 0;
        if let Some(specials) = &self.specials {
            for m in specials.find_iter(text.as_ref()) {
                self.encode_segment(&text[last..m.start()], per_segment, &mut out);
                out.push(self.special_ids[m.pattern().as_usize()]);
                last = m.end();
            }
        }
        self.encode_segment(&text[last..], per_segment, &mut out);
        out
    }

    /// Token ids of `text` with special tokens treated as plain text.
    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        let text = match self.normalization {
            Normalization::None => Cow::Borrowed(text),
            Normalization::Nfc | Normalization::NfcBeforeSpecials => nfc(text),
        };
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_segment(&text, false, &mut out);
        out
    }

    fn encode_segment(&self, text: &str, normalize: bool, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let text = if normalize {
            nfc(text)
        } else {
            Cow::Borrowed(text)
        };
        // Cut inside whitespace runs too long for the regex engine (see MAX_WHITESPACE_RUN).
        // A run of n chars takes at least n bytes, so short texts skip the scan.
        let mut start = 0;
        if text.len() >= MAX_WHITESPACE_RUN {
            let mut run = 0;
            for (i, c) in text.char_indices() {
                run = if c.is_whitespace() { run + 1 } else { 0 };
                if run == MAX_WHITESPACE_RUN {
                    let end = i + c.len_utf8();
                    self.encode_chunk(&text[start..end], out);
                    start = end;
                    run = 0;
                }
            }
        }
        self.encode_chunk(&text[start..], out);
    }

    /// Pre-tokenizer + BPE of `text`, ids appended to `out`.
    fn encode_chunk(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let ranks: Vec<Rank> = self.bpe.encode_ordinary(text);
        match &self.rank_to_id {
            None => out.extend_from_slice(&ranks),
            Some(map) => out.extend(
                ranks
                    .iter()
                    .map(|&r| map[r as usize])
                    .filter(|&id| id != NO_ID),
            ),
        }
    }

    /// Text of `ids`; bytes that are not valid UTF-8 become U+FFFD. An id outside the vocabulary
    /// is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let bytes = self.decode_bytes(ids)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// Raw bytes of `ids` (a token may hold part of a UTF-8 character).
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, TokenizerError> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id)?);
        }
        Ok(out)
    }

    /// Bytes of one token: byte-level decoded for normal tokens, the text of a special token,
    /// empty for an unused row.
    pub fn token_bytes(&self, id: u32) -> Result<&[u8], TokenizerError> {
        let i = id as usize;
        if i >= self.kinds.len() {
            return Err(TokenizerError::UnknownId {
                id,
                n_tokens: self.kinds.len(),
            });
        }
        Ok(&self.bytes[self.offsets[i] as usize..self.offsets[i + 1] as usize])
    }

    /// Kind of token `id`, None outside the vocabulary.
    pub fn token_kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    /// Id of a special token by its text (`"<|im_end|>"`), or of the normal token whose bytes are
    /// `s` when BPE produces it for `s` alone (`" Hello"`).
    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        if let Some(&id) = self.special_by_text.get(s) {
            return Some(id);
        }
        if s.is_empty() {
            return None;
        }
        let mut ids = Vec::with_capacity(1);
        self.encode_segment(s, false, &mut ids);
        match ids[..] {
            [id] if self.token_bytes(id).ok() == Some(s.as_bytes()) => Some(id),
            _ => None,
        }
    }

    /// Ids that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// What loading had to assume (e.g. a missing `tokenizer.ggml.pre`); the library does not
    /// print them, a binary shows each once as `warning: …`.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Number of vocabulary rows, unused rows included.
    pub fn n_tokens(&self) -> usize {
        self.kinds.len()
    }

    /// Ids of the special tokens matched in text.
    pub fn special_ids(&self) -> &[u32] {
        &self.special_ids
    }

    pub fn normalization(&self) -> Normalization {
        self.normalization
    }

    /// True when BPE ranks are the token ids (no remapping of encoder output).
    pub fn ranks_are_ids(&self) -> bool {
        self.rank_to_id.is_none()
    }
}

/// NFC of `s`, borrowing when the quick check says it is already NFC (the common case).
fn nfc(s: &str) -> Cow<'_, str> {
    if is_nfc_quick(s.chars()) == IsNormalized::Yes {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.nfc().collect())
    }
}

/// Splits a merge line `"left right"`.
fn split_merge(i: usize, m: &str) -> Result<(&str, &str), TokenizerError> {
    match m.split_once(' ') {
        Some((l, r)) if !l.is_empty() && !r.is_empty() && !r.contains(' ') => Ok((l, r)),
        _ => Err(TokenizerError::Vocab(format!(
            "merge {i} {m:?} is not two tokens separated by one space"
        ))),
    }
}

/// Bytes of token `id` in byte-level form `tok`.
fn normal_token_bytes(id: usize, tok: &str, out: &mut Vec<u8>) -> Result<(), TokenizerError> {
    let start = out.len();
    byte_level::decode_into(tok, out).map_err(|c| {
        TokenizerError::Vocab(format!(
            "token {id} {tok:?} has {c:?} (U+{:04X}), which is not in GPT-2's byte-level alphabet",
            c as u32
        ))
    })?;
    if out.len() == start {
        return Err(TokenizerError::Vocab(format!("normal token {id} is empty")));
    }
    Ok(())
}

/// The bytes of every row, concatenated, and the offsets of each row ([n + 1]).
fn row_bytes<T: AsRef<str>>(
    tokens: &[T],
    kinds: &[TokenKind],
) -> Result<(Vec<u8>, Vec<u32>), TokenizerError> {
    let mut bytes = Vec::with_capacity(tokens.len() * 8);
    let mut offsets = Vec::with_capacity(tokens.len() + 1);
    offsets.push(0u32);
    for (id, (tok, &kind)) in tokens.iter().zip(kinds).enumerate() {
        let tok = tok.as_ref();
        match kind {
            TokenKind::Normal => normal_token_bytes(id, tok, &mut bytes)?,
            TokenKind::Special => bytes.extend_from_slice(tok.as_bytes()),
            TokenKind::Unused => {}
        }
        let end = u32::try_from(bytes.len()).map_err(|_| {
            TokenizerError::Vocab(format!("vocabulary text exceeds {} bytes", u32::MAX))
        })?;
        offsets.push(end);
    }
    Ok((bytes, offsets))
}

/// The byte a one-character byte-level token stands for.
fn single_byte(tok: &str) -> Option<u8> {
    let mut chars = tok.chars();
    let c = chars.next()?;
    if chars.next().is_some() {
        return None;
    }
    let mut b = Vec::with_capacity(1);
    byte_level::decode_into(c.encode_utf8(&mut [0; 4]), &mut b).ok()?;
    b.first().copied()
}

/// True when ids are BPE ranks: rows 0..256 are the 256 single bytes and merge `i` joins into
/// row `256 + i` (Qwen vocabularies, whose ids are tiktoken ranks). O(total merge length), no
/// allocation.
fn ranks_follow_ids<T: AsRef<str>, M: AsRef<str>>(
    tokens: &[T],
    kinds: &[TokenKind],
    merges: &[M],
) -> Result<bool, TokenizerError> {
    if tokens.len() < 256 + merges.len() {
        return Ok(false);
    }
    let mut seen = [false; 256];
    for id in 0..256 {
        match single_byte(tokens[id].as_ref()) {
            Some(b) if kinds[id] == TokenKind::Normal && !seen[b as usize] => {
                seen[b as usize] = true
            }
            _ => return Ok(false),
        }
    }
    for (i, m) in merges.iter().enumerate() {
        let (l, r) = split_merge(i, m.as_ref())?;
        let id = 256 + i;
        let t = tokens[id].as_ref();
        if kinds[id] != TokenKind::Normal
            || t.len() != l.len() + r.len()
            || !t.starts_with(l)
            || !t.ends_with(r)
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Encoder with rank = id for normal rows below `limit`, keys copied from the row table
/// (`bytes`, `offsets` from [`row_bytes`]). The keys of the upper half are made on another thread
/// while the lower half is inserted.
fn identity_encoder(kinds: &[TokenKind], bytes: &[u8], offsets: &[u32], limit: usize) -> Encoder {
    let keys = |ids: std::ops::Range<usize>| -> Vec<(Vec<u8>, Rank)> {
        ids.filter(|&id| kinds[id] == TokenKind::Normal)
            .map(|id| {
                (
                    bytes[offsets[id] as usize..offsets[id + 1] as usize].to_vec(),
                    id as Rank,
                )
            })
            .collect()
    };
    let mid = limit / 2;
    let (mut enc, upper) = rayon::join(
        || {
            let mut enc = FxHashMap::with_capacity_and_hasher(limit, Default::default());
            enc.extend(keys(0..mid));
            enc
        },
        || keys(mid..limit),
    );
    enc.extend(upper);
    enc
}

/// Encoder whose ranks come from the merges list (single bytes 0..256 by byte value, the token
/// made by merge `i` gets `256 + i`; a token made again by a later merge keeps its first rank),
/// with the rank -> id map.
fn ranked_encoder<T: AsRef<str>, M: AsRef<str>>(
    tokens: &[T],
    kinds: &[TokenKind],
    merges: &[M],
) -> Result<(Encoder, Vec<u32>), TokenizerError> {
    let mut by_text: FxHashMap<&str, u32> =
        FxHashMap::with_capacity_and_hasher(tokens.len(), Default::default());
    let mut rank_to_id = vec![u32::MAX; 256 + merges.len()];
    for (id, (tok, &kind)) in tokens.iter().zip(kinds).enumerate() {
        if kind != TokenKind::Normal {
            continue;
        }
        by_text.entry(tok.as_ref()).or_insert(id as u32);
        if let Some(b) = single_byte(tok.as_ref()) {
            if rank_to_id[b as usize] == u32::MAX {
                rank_to_id[b as usize] = id as u32;
            }
        }
    }
    let mut has_rank = vec![false; tokens.len()];
    for &id in &rank_to_id[..256] {
        if id != u32::MAX {
            has_rank[id as usize] = true;
        }
    }
    let mut joined = String::new();
    for (i, m) in merges.iter().enumerate() {
        let (l, r) = split_merge(i, m.as_ref())?;
        joined.clear();
        joined.push_str(l);
        joined.push_str(r);
        let &id = by_text.get(joined.as_str()).ok_or_else(|| {
            TokenizerError::Vocab(format!(
                "merge {i} {:?} makes {joined:?}, which is not a normal token",
                m.as_ref()
            ))
        })?;
        if !has_rank[id as usize] {
            has_rank[id as usize] = true;
            rank_to_id[256 + i] = id;
        }
    }
    let mut enc = FxHashMap::with_capacity_and_hasher(rank_to_id.len(), Default::default());
    for (rank, &id) in rank_to_id.iter().enumerate() {
        if id != u32::MAX {
            let mut key = Vec::new();
            normal_token_bytes(id as usize, tokens[id as usize].as_ref(), &mut key)?;
            enc.insert(key, rank as Rank);
        }
    }
    Ok((enc, rank_to_id))
}

/// Longest whitespace run (in chars) handed to the pre-tokenizer regex in one piece; longer runs
/// are cut after every this many chars and the parts encoded separately. fancy-regex (also under
/// Python tiktoken) keeps one backtracking entry per char of a run for `\s+(?!\S)` and `\s*[\r\n]+`
/// and fails at 1,000,000 entries (measured: runs from 999,999 chars fail), which tiktoken turns
/// into a panic. Up to this length results equal the references'; past ~1M they have none.
const MAX_WHITESPACE_RUN: usize = 500_000;

/// tiktoken's map from token bytes to BPE rank.
type Encoder = FxHashMap<Vec<u8>, Rank>;

/// Marks a rank that stands for no token (see [`add_missing_bytes`]).
const NO_ID: u32 = u32::MAX;

/// HF `tokenizers` (BPE without an unknown token) and llama.cpp drop a byte for which the
/// vocabulary has no token (SmolLM2 lacks a few control bytes); tiktoken instead needs a rank for
/// every byte. Each missing byte gets a rank above all others that maps to [`NO_ID`], and
/// `encode` drops it. No merge can contain such a byte, so it never joins a neighbour.
fn add_missing_bytes(encoder: &mut FxHashMap<Vec<u8>, Rank>, rank_to_id: &mut Option<Vec<u32>>) {
    let missing: Vec<u8> = (0..=255u8)
        .filter(|&b| !encoder.contains_key(&[b][..]))
        .collect();
    if missing.is_empty() {
        return;
    }
    let map = rank_to_id.get_or_insert_with(|| {
        let end = encoder.values().max().map_or(0, |&r| r + 1);
        (0..end).collect()
    });
    for b in missing {
        encoder.insert(vec![b], map.len() as Rank);
        map.push(NO_ID);
    }
}
