//! Test helper shared by tests/tokenizer*.rs and benches/tokenizer.rs: builds the vocabulary rows
//! the way qwen-convert writes them into a file (GGUF tokenizer.ggml.tokens / token_type / merges),
//! straight from the reference tokenizer files in assets/ (fetched by scripts/setup.sh).
//!
//! * Qwen3 (tokenizer.json): model.vocab by id, then added_tokens (type 4 user-defined / 3 control
//!   in the file; both are specials here), `[PAD{id}]` unused rows up to the embedding size; merges
//!   `"left right"` in file order.
//! * Qwen-1 (qwen.tiktoken): each rank's bytes in GPT-2 byte-level form, the 208 specials from
//!   151643, `[PAD{id}]` rows; merges rebuilt from the ranks as llama.cpp's converter does
//!   (`bpe(mergeable_ranks, token, max_rank=rank)` must give two parts).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use qwen::tokenizer::{
    byte_level, Normalization, PreTokenizer, TokenKind, Tokenizer, TokenizerConfig,
};

/// Rows of the token embedding of Qwen-1 / Qwen2 / Qwen3 checkpoints (vocab padded to 151936).
pub const N_ROWS: usize = 151_936;
pub const QWEN_SPECIAL_START: usize = 151_643;

pub struct Vocab {
    pub tokens: Vec<String>,
    pub kinds: Vec<TokenKind>,
    pub merges: Option<Vec<String>>,
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of an asset; a missing asset fails the test (never a silent skip).
pub fn asset(rel: &str) -> PathBuf {
    let p = root().join("assets").join(rel);
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh",
        p.display()
    );
    p
}

fn pad(v: &mut Vocab) {
    while v.tokens.len() < N_ROWS {
        v.tokens.push(format!("[PAD{}]", v.tokens.len()));
        v.kinds.push(TokenKind::Unused);
    }
}

/// Vocabulary rows of assets/qwen3/tokenizer.json.
pub fn qwen3_vocab() -> Vocab {
    let path = asset("qwen3/tokenizer.json");
    let text = std::fs::read_to_string(&path).expect("read tokenizer.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("parse tokenizer.json");
    let model = &json["model"];
    let vocab = model["vocab"].as_object().expect("model.vocab");
    let added = json["added_tokens"].as_array().expect("added_tokens");
    let n = vocab.len() + added.len();
    let mut tokens = vec![String::new(); n];
    let mut kinds = vec![TokenKind::Unused; n];
    for (s, id) in vocab {
        let id = id.as_u64().expect("vocab id") as usize;
        tokens[id] = s.clone();
        kinds[id] = TokenKind::Normal;
    }
    for a in added {
        let id = a["id"].as_u64().expect("added id") as usize;
        tokens[id] = a["content"].as_str().expect("content").to_string();
        kinds[id] = TokenKind::Special;
    }
    let merges = model["merges"]
        .as_array()
        .expect("merges")
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(p) => {
                format!(
                    "{} {}",
                    p[0].as_str().expect("merge left"),
                    p[1].as_str().expect("merge right")
                )
            }
            other => panic!("unexpected merge {other}"),
        })
        .collect();
    let mut v = Vocab {
        tokens,
        kinds,
        merges: Some(merges),
    };
    pad(&mut v);
    v
}

fn base64_decode(s: &[u8]) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c}"),
        }
    };
    let s: Vec<u8> = s.iter().copied().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// Qwen-1's ranks: bytes of rank i at index i.
pub fn qwen1_ranks() -> Vec<Vec<u8>> {
    let path = asset("qwen.tiktoken");
    let text = std::fs::read(&path).expect("read qwen.tiktoken");
    let mut ranks: Vec<Vec<u8>> = Vec::new();
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let mut it = line.split(|&b| b == b' ');
        let tok = base64_decode(it.next().expect("token"));
        let rank: usize = std::str::from_utf8(it.next().expect("rank"))
            .unwrap()
            .parse()
            .unwrap();
        if ranks.len() <= rank {
            ranks.resize(rank + 1, Vec::new());
        }
        ranks[rank] = tok;
    }
    ranks
}

/// llama.cpp convert_hf_to_gguf.py `QwenModel.bpe`: merge lowest rank first, stop at `max_rank`.
fn bpe_parts(ranks: &HashMap<&[u8], usize>, token: &[u8], max_rank: usize) -> Vec<(usize, usize)> {
    let mut parts: Vec<(usize, usize)> = (0..token.len()).map(|i| (i, i + 1)).collect();
    loop {
        let mut best: Option<(usize, usize)> = None;
        for i in 0..parts.len().saturating_sub(1) {
            if let Some(&r) = ranks.get(&token[parts[i].0..parts[i + 1].1]) {
                if best.is_none_or(|(_, br)| r < br) {
                    best = Some((i, r));
                }
            }
        }
        match best {
            Some((i, r)) if r < max_rank => {
                parts[i].1 = parts[i + 1].1;
                parts.remove(i + 1);
            }
            _ => return parts,
        }
    }
}

/// Vocabulary rows of assets/qwen.tiktoken with Qwen-1's specials and rebuilt merges.
pub fn qwen1_vocab() -> Vocab {
    let ranks = qwen1_ranks();
    let by_bytes: HashMap<&[u8], usize> =
        ranks.iter().enumerate().map(|(i, b)| (&b[..], i)).collect();
    let mut tokens: Vec<String> = ranks.iter().map(|b| byte_level::encode(b)).collect();
    let mut kinds = vec![TokenKind::Normal; tokens.len()];
    let mut merges = Vec::new();
    for (rank, b) in ranks.iter().enumerate() {
        if b.len() < 2 {
            continue;
        }
        let parts = bpe_parts(&by_bytes, b, rank);
        assert_eq!(parts.len(), 2, "rank {rank} does not split into two parts");
        merges.push(format!(
            "{} {}",
            byte_level::encode(&b[parts[0].0..parts[0].1]),
            byte_level::encode(&b[parts[1].0..parts[1].1])
        ));
    }
    assert_eq!(tokens.len(), QWEN_SPECIAL_START);
    for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(s.to_string());
        kinds.push(TokenKind::Special);
    }
    for i in 0..205 {
        tokens.push(format!("<|extra_{i}|>"));
        kinds.push(TokenKind::Special);
    }
    let mut v = Vocab {
        tokens,
        kinds,
        merges: Some(merges),
    };
    pad(&mut v);
    v
}

pub fn build(v: &Vocab, normalization: Normalization, eos_ids: Vec<u32>) -> Tokenizer {
    let config = TokenizerConfig {
        pre: PreTokenizer::Qwen2,
        normalization,
        eos_ids,
    };
    Tokenizer::from_parts(&v.tokens, &v.kinds, v.merges.as_deref(), config)
        .expect("build tokenizer")
}

pub fn qwen3_tokenizer() -> Tokenizer {
    build(&qwen3_vocab(), Normalization::Nfc, vec![151_645, 151_643])
}

pub fn qwen1_tokenizer() -> Tokenizer {
    build(
        &qwen1_vocab(),
        Normalization::NfcBeforeSpecials,
        vec![151_643],
    )
}

/// Reads a JSON-lines file under tests/.
pub fn read_jsonl(rel: &str) -> Vec<serde_json::Value> {
    let p = root().join("tests").join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", p.display())))
        .collect()
}

pub fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("ids array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}
