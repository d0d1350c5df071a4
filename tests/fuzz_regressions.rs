//! Fuzz inputs replayed as ordinary tests (no cargo-fuzz needed): the committed
//! seeds of fuzz/seeds/{gguf,tokenizer}/ and every input a fuzzing session
//! found a bug with, kept in tests/data/fuzz/{gguf,tokenizer}/. Each goes through
//! the same walk as the fuzz target (fuzz/fuzz_targets/*.rs): the GGUF reader
//! and everything a loader does with a parsed file, or the tokenizer built from
//! the input's vocabulary. Nothing may panic.
//!
//! The safetensors target's inputs are replayed by fuzz/ itself
//! (`scripts/fuzz.sh -r safetensors FILE`): qwen_convert is not a dependency of
//! this crate.

use std::path::{Path, PathBuf};

use quant_formats::gguf::Gguf;
use quant_formats::reference;
use qwen::tokenizer::byte_level;
use qwen::tokenizer::{
    Normalization, PreTokenizer, StreamDecoder, TokenKind, Tokenizer, TokenizerConfig,
};

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in [
        root.join("fuzz/seeds").join(target),
        root.join("tests/data/fuzz").join(target),
    ] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = rd.filter_map(|e| Some(e.ok()?.path())).collect();
        paths.sort();
        for p in paths {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            out.push((p, bytes));
        }
    }
    out
}

/// fuzz/fuzz_targets/gguf.rs without the fuzzing harness.
fn walk_gguf(data: &[u8]) {
    let Ok(g) = Gguf::parse(data) else {
        return;
    };
    let _ = g.summary();
    for (key, value) in g.kv() {
        let _ = (value.type_name(), value.as_i128(), value.as_str());
        let _ = g.get_str(key);
        let _ = g.get_bool(key);
        let _ = g.get_f32(key);
        let _ = g.get_u32(key);
        let _ = g.get_u64(key);
        let _ = g.get_i32(key);
        let _ = g.get_str_array(key);
        let _ = g.get_f32_array(key);
        let _ = g.get_u32_array(key);
        let _ = g.get_i32_array(key);
    }
    for t in &g.tensors {
        let bytes = g.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.n_bytes, "tensor {}", t.name);
        let (bs, ts) = (t.dtype.block_size(), t.dtype.type_size());
        let n_blocks = (bytes.len() / ts).min(4096 / bs);
        let mut out = vec![0f32; n_blocks * bs];
        let _ = reference::dequantize(t.dtype, &bytes[..n_blocks * ts], &mut out);
    }
    let _ = qwen::Config::from_gguf(&g);
    let _ = qwen::Model::load(&g);
    if let Ok(tok) = Tokenizer::from_gguf(&g) {
        if let Ok(tpl) = qwen::chat::ChatTemplate::from_gguf(&g, &tok) {
            let _ = tpl.render(&[qwen::chat::Message::user("hi")], true);
        }
    }
    // The reported scan_non_finite allocation bug is covered by
    // tests/hostile_cli.rs (it aborts the process, which would end this binary).
    let huge_empty_row = g
        .tensors
        .iter()
        .any(|t| t.n_elements() == 0 && t.row_len() > 1 << 24);
    if !huge_empty_row {
        let _ = qwen::weights::scan_non_finite(&g);
    }
}

#[test]
fn gguf_inputs_replay() {
    let all = inputs("gguf");
    assert!(all.len() >= 7, "seeds missing: {} files", all.len());
    for (path, bytes) in &all {
        let r = std::panic::catch_unwind(|| walk_gguf(bytes));
        assert!(r.is_ok(), "{} panicked", path.display());
    }
}

/// fuzz/fuzz_targets/tokenizer.rs's vocabulary from the input (see its docs).
fn tokenizer_from_input(flags: u8, section: &[u8]) -> Option<Tokenizer> {
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
                merges.push(match body.iter().position(|&b| b == b' ') {
                    Some(k) => format!(
                        "{} {}",
                        byte_level::encode(&body[..k]),
                        byte_level::encode(&body[k + 1..])
                    ),
                    None => String::from_utf8_lossy(body).into_owned(),
                });
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
    let config = TokenizerConfig {
        pre: if flags & 1 != 0 {
            PreTokenizer::SmolLm
        } else {
            PreTokenizer::Qwen2
        },
        normalization: match (flags >> 1) & 3 {
            0 => Normalization::None,
            1 => Normalization::Nfc,
            _ => Normalization::NfcBeforeSpecials,
        },
        eos_ids: if tokens.is_empty() { vec![] } else { vec![0] },
    };
    if flags & 0x08 != 0 {
        Tokenizer::from_parts(&tokens, &kinds, Some(&merges[..]), config).ok()
    } else {
        Tokenizer::from_parts::<_, &str>(&tokens, &kinds, None, config).ok()
    }
}

fn exercise(tok: &Tokenizer, complete: bool, text: &str, raw: &[u8], what: &Path) {
    let n = tok.n_tokens();
    let round_trips = complete && tok.normalization() == Normalization::None;
    for ids in [tok.encode(text), tok.encode_ordinary(text)] {
        let back = tok
            .decode_bytes(&ids)
            .expect("encode produced an unknown id");
        if round_trips {
            assert_eq!(back, text.as_bytes(), "{}: round trip", what.display());
        }
    }
    let ids: Vec<u32> = raw
        .chunks(2)
        .map(|c| (u32::from(c[0]) | u32::from(*c.get(1).unwrap_or(&0)) << 8) % (n as u32 + 3))
        .collect();
    let valid: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|&id| (id as usize) < n)
        .collect();
    let mut dec = StreamDecoder::new();
    let mut streamed = String::new();
    for &id in &ids {
        if let Ok(s) = dec.push(tok, id) {
            streamed.push_str(&s);
        }
    }
    streamed.push_str(&dec.finish());
    assert_eq!(
        streamed,
        tok.decode(&valid).expect("valid ids decode"),
        "{}: stream decoder",
        what.display()
    );
}

#[test]
fn tokenizer_inputs_replay() {
    let all = inputs("tokenizer");
    assert!(all.len() >= 6, "seeds missing: {} files", all.len());
    for (path, data) in &all {
        let Some((&flags, rest)) = data.split_first() else {
            continue;
        };
        if flags & 0x80 != 0 {
            // The fixture-vocabulary mode needs the fuzz crate's include; the
            // input-vocabulary mode below covers the same code.
            continue;
        }
        let (section, text_bytes) = match rest.iter().position(|&b| b == 0xff) {
            Some(k) => (&rest[..k], &rest[k + 1..]),
            None => (rest, &rest[..0]),
        };
        let text = String::from_utf8_lossy(text_bytes);
        if let Some(tok) = tokenizer_from_input(flags, section) {
            exercise(&tok, flags & 0x10 == 0, &text, text_bytes, path);
        }
    }
}
