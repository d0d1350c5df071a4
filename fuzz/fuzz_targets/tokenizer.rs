//! Tokenizer: `Tokenizer::from_parts` on vocabularies built from the input, and
//! `encode` / `encode_ordinary` / `decode` / `StreamDecoder` on arbitrary text
//! and ids, with both the input's vocabulary and the fixture vocabulary of
//! tests/fixtures/hf/qwen2_gqa2 (256 bytes + 48 merges + 8 specials).
//!
//! Input layout: byte 0 = flags, then `vocab section 0xFF text section` (0xFF
//! never occurs in UTF-8, so the text section is any string).
//! flags bit 0: SmolLM pre-tokenizer (else Qwen2); bits 1-2: 0 none, 1 NFC,
//! 2 NFC before specials; bit 3: use the `=` lines as merges; bit 4: leave out
//! the 256 single-byte rows; bit 5: normal lines are raw text (else their bytes
//! are written in byte-level form); bit 7: use the fixture vocabulary instead.
//! Vocab lines: `!text` special, `?` unused, `=left right` merge, else normal.
//!
//! Properties checked (beyond "no panic"): without normalization and with all
//! 256 single-byte rows (bytes with no token are dropped by design, as HF and
//! llama.cpp do), decode(encode(text)) == text and the same for encode_ordinary; the
//! concatenated StreamDecoder output equals decode of the same ids; an id
//! outside the vocabulary is an error, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qwen::tokenizer::byte_level;
use qwen::tokenizer::{
    Normalization, PreTokenizer, StreamDecoder, TokenKind, Tokenizer, TokenizerConfig,
};

const FIXTURE: &str = include_str!("../../tests/fixtures/hf/qwen2_gqa2/tokenizer.json");

/// (tokens in id order, kinds, merges) of the fixture's tokenizer.json.
fn fixture_parts() -> (Vec<String>, Vec<TokenKind>, Vec<String>) {
    let v: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture tokenizer.json");
    let vocab = v["model"]["vocab"].as_object().expect("model.vocab");
    let added = v["added_tokens"].as_array().expect("added_tokens");
    let n = vocab.len() + added.len();
    let mut tokens = vec![String::new(); n];
    let mut kinds = vec![TokenKind::Unused; n];
    for (t, id) in vocab {
        let id = id.as_u64().expect("id") as usize;
        tokens[id] = t.clone();
        kinds[id] = TokenKind::Normal;
    }
    for a in added {
        let id = a["id"].as_u64().expect("id") as usize;
        tokens[id] = a["content"].as_str().expect("content").to_string();
        kinds[id] = TokenKind::Special;
    }
    let merges = v["model"]["merges"]
        .as_array()
        .expect("merges")
        .iter()
        .map(|m| m.as_str().expect("merge").to_string())
        .collect();
    (tokens, kinds, merges)
}

/// The fixture vocabulary without normalization, with each pre-tokenizer.
fn fixture(pre: PreTokenizer) -> &'static Tokenizer {
    static QWEN2: OnceLock<Tokenizer> = OnceLock::new();
    static SMOLLM: OnceLock<Tokenizer> = OnceLock::new();
    let cell = match pre {
        PreTokenizer::Qwen2 => &QWEN2,
        PreTokenizer::SmolLm => &SMOLLM,
    };
    cell.get_or_init(|| {
        let (tokens, kinds, merges) = fixture_parts();
        let config = TokenizerConfig {
            pre,
            normalization: Normalization::None,
            eos_ids: vec![],
        };
        Tokenizer::from_parts(&tokens, &kinds, Some(&merges[..]), config)
            .expect("fixture vocabulary builds")
    })
}

/// Builds a tokenizer from the vocab section; None when from_parts refuses it.
fn from_input(flags: u8, section: &[u8]) -> Option<Tokenizer> {
    let mut tokens: Vec<String> = Vec::new();
    let mut kinds = Vec::new();
    if flags & 0x10 == 0 {
        for b in 0..=255u8 {
            tokens.push(byte_level::encode(&[b]));
            kinds.push(TokenKind::Normal);
        }
    }
    let mut merges: Vec<String> = Vec::new();
    for line in section.split(|&b| b == b'\n') {
        match line.first() {
            Some(b'!') => {
                tokens.push(String::from_utf8_lossy(&line[1..]).into_owned());
                kinds.push(TokenKind::Special);
            }
            Some(b'?') => {
                tokens.push(String::new());
                kinds.push(TokenKind::Unused);
            }
            Some(b'=') => {
                let body = &line[1..];
                let merge = match body.iter().position(|&b| b == b' ') {
                    Some(k) => format!(
                        "{} {}",
                        byte_level::encode(&body[..k]),
                        byte_level::encode(&body[k + 1..])
                    ),
                    None => String::from_utf8_lossy(body).into_owned(),
                };
                merges.push(merge);
            }
            _ => {
                tokens.push(if flags & 0x20 != 0 {
                    String::from_utf8_lossy(line).into_owned()
                } else {
                    byte_level::encode(line)
                });
                kinds.push(TokenKind::Normal);
            }
        }
    }
    let pre = if flags & 1 != 0 {
        PreTokenizer::SmolLm
    } else {
        PreTokenizer::Qwen2
    };
    let normalization = match (flags >> 1) & 3 {
        0 => Normalization::None,
        1 => Normalization::Nfc,
        _ => Normalization::NfcBeforeSpecials,
    };
    let eos_ids = if tokens.is_empty() { vec![] } else { vec![0] };
    let config = TokenizerConfig {
        pre,
        normalization,
        eos_ids,
    };
    let built = if flags & 0x08 != 0 {
        Tokenizer::from_parts(&tokens, &kinds, Some(&merges[..]), config)
    } else {
        Tokenizer::from_parts::<_, &str>(&tokens, &kinds, None, config)
    };
    built.ok()
}

/// `complete`: the vocabulary has a row for each of the 256 bytes.
fn exercise(tok: &Tokenizer, complete: bool, text: &str, raw: &[u8]) {
    let n = tok.n_tokens();
    let round_trips = complete && tok.normalization() == Normalization::None;

    let ids = tok.encode(text);
    let back = tok
        .decode_bytes(&ids)
        .expect("encode produced an unknown id");
    if round_trips {
        assert_eq!(
            back,
            text.as_bytes(),
            "decode(encode(text)) != text, ids {ids:?}"
        );
    }
    let ids = tok.encode_ordinary(text);
    let back = tok
        .decode_bytes(&ids)
        .expect("encode_ordinary produced an unknown id");
    if round_trips {
        assert_eq!(
            back,
            text.as_bytes(),
            "decode(encode_ordinary(text)) != text"
        );
    }
    if let Some(id) = tok.token_to_id(text) {
        assert_eq!(tok.token_bytes(id).ok(), Some(text.as_bytes()));
    }

    // Arbitrary ids (some past the end): decode and the stream decoder agree.
    let ids: Vec<u32> = raw
        .chunks(2)
        .map(|c| {
            let v = u32::from(c[0]) | u32::from(*c.get(1).unwrap_or(&0)) << 8;
            v % (n as u32 + 3)
        })
        .collect();
    let whole = tok.decode(&ids);
    assert_eq!(whole.is_err(), ids.iter().any(|&id| id as usize >= n));
    let valid: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|&id| (id as usize) < n)
        .collect();
    let mut dec = StreamDecoder::new();
    let mut streamed = String::new();
    for &id in &ids {
        match dec.push(tok, id) {
            Ok(s) => streamed.push_str(&s),
            Err(_) => assert!(id as usize >= n, "push refused id {id} of {n}"),
        }
    }
    streamed.push_str(&dec.finish());
    assert_eq!(streamed, tok.decode(&valid).expect("valid ids decode"));
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (section, text_bytes) = match rest.iter().position(|&b| b == 0xff) {
        Some(k) => (&rest[..k], &rest[k + 1..]),
        None => (rest, &rest[..0]),
    };
    let text = String::from_utf8_lossy(text_bytes);
    if flags & 0x80 != 0 {
        let pre = if flags & 1 != 0 {
            PreTokenizer::SmolLm
        } else {
            PreTokenizer::Qwen2
        };
        // The whole input after the flags is text here.
        exercise(fixture(pre), true, &String::from_utf8_lossy(rest), rest);
    } else if let Some(tok) = from_input(flags, section) {
        exercise(&tok, flags & 0x10 == 0, &text, text_bytes);
    }
});
