//! Tokenizer against its references: llama.cpp's Qwen2 cases (tests/peer/), goldens from Python
//! tiktoken (Qwen-1) and HF `tokenizers` (Qwen3) on our corpus (scripts/tokenizer_golden.py), and
//! the streaming decoder's property. Vocabularies come from assets/ (scripts/setup.sh).

mod tokenizer_vocab;

use qwen::tokenizer::{
    byte_level, Normalization, PreTokenizer, StreamDecoder, TokenKind, Tokenizer, TokenizerConfig,
    TokenizerError,
};
use std::sync::OnceLock;
use tokenizer_vocab as tv;

fn qwen3() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(tv::qwen3_tokenizer)
}

fn qwen1() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(tv::qwen1_tokenizer)
}

fn corpus() -> Vec<String> {
    tv::read_jsonl("data/tokenizer/corpus.jsonl")
        .iter()
        .map(|v| v["text"].as_str().expect("text").to_string())
        .collect()
}

fn goldens(file: &str) -> Vec<Vec<u32>> {
    tv::read_jsonl(&format!("data/tokenizer/{file}"))
        .iter()
        .map(|v| tv::ids_of(&v["ids"]))
        .collect()
}

/// Encodes every text and reports all mismatches at once.
fn check_all(t: &Tokenizer, texts: &[String], want: &[Vec<u32>], what: &str) {
    assert_eq!(
        texts.len(),
        want.len(),
        "{what}: corpus and goldens differ in length"
    );
    let mut bad = Vec::new();
    for (i, (s, w)) in texts.iter().zip(want).enumerate() {
        let got = t.encode(s);
        if &got != w {
            bad.push(format!("#{i} {s:?}\n   got  {got:?}\n   want {w:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: {} of {} differ:\n{}",
        bad.len(),
        texts.len(),
        bad.join("\n")
    );
}

#[test]
fn peer_llama_cpp_qwen2_cases() {
    let cases = tv::read_jsonl("peer/llama-cpp-tokenizer-qwen2.jsonl");
    assert_eq!(cases.len(), 46);
    let texts: Vec<String> = cases
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<Vec<u32>> = cases.iter().map(|c| tv::ids_of(&c["ids_hf"])).collect();
    check_all(qwen3(), &texts, &want, "llama.cpp qwen2 cases");
}

#[test]
fn corpus_is_big_and_varied() {
    let c = corpus();
    assert!(c.len() >= 1000, "corpus has {} strings", c.len());
    let has = |f: &dyn Fn(&str) -> bool| c.iter().any(|s| f(s));
    assert!(has(&|s| s.contains('\u{200d}')), "ZWJ emoji");
    assert!(has(&|s| s.contains("\r\n")) && has(&|s| s.contains("\r") && !s.contains("\r\n")));
    assert!(has(&|s| s.contains("<|extra_205|>")) && has(&|s| s.contains("<|im_start|>")));
    assert!(
        has(&|s| s.chars().any(|ch| ('\u{300}'..='\u{36f}').contains(&ch))),
        "NFD marks"
    );
}

#[test]
fn corpus_matches_hf_tokenizers_qwen3() {
    check_all(
        qwen3(),
        &corpus(),
        &goldens("golden_qwen3.jsonl"),
        "Qwen3 (HF tokenizers)",
    );
}

#[test]
fn corpus_matches_tiktoken_qwen1() {
    check_all(
        qwen1(),
        &corpus(),
        &goldens("golden_qwen1.jsonl"),
        "Qwen-1 (tiktoken)",
    );
}

#[test]
fn decode_inverts_encode_up_to_nfc() {
    use unicode_normalization::UnicodeNormalization;
    for t in [qwen1(), qwen3()] {
        for s in corpus() {
            let ids = t.encode(&s);
            let nfc: String = s.nfc().collect();
            let back = t.decode(&ids).unwrap();
            // Qwen-1 normalizes across a special token's end; compare with both forms allowed.
            assert!(
                back == nfc || back.nfc().collect::<String>() == nfc,
                "{s:?} -> {back:?}"
            );
        }
    }
}

#[test]
fn ids_are_ranks_for_qwen_vocabularies() {
    assert!(qwen3().ranks_are_ids());
    assert!(qwen1().ranks_are_ids());
    assert_eq!(qwen3().n_tokens(), tv::N_ROWS);
    assert_eq!(qwen1().n_tokens(), tv::N_ROWS);
}

#[test]
fn specials_in_text_and_as_plain_text() {
    let t = qwen3();
    assert_eq!(t.encode("<|im_start|>user\n"), vec![151644, 872, 198]);
    assert_eq!(t.token_to_id("<|im_end|>"), Some(151645));
    assert_eq!(t.token_to_id("<think>"), Some(151667));
    assert_eq!(t.token_to_id(" Hello"), Some(21927));
    assert_eq!(t.token_to_id("<|im_start|"), None);
    let plain = t.encode_ordinary("<|im_start|>");
    assert!(plain.len() > 1 && !plain.contains(&151644), "{plain:?}");
    assert_eq!(t.decode(&plain).unwrap(), "<|im_start|>");
    // Qwen-1's extras exist only in its own vocabulary.
    assert_eq!(qwen1().encode("<|extra_204|>"), vec![151850]);
    assert_eq!(qwen1().token_to_id("<|extra_0|>"), Some(151646));
    assert!(qwen3().encode("<|extra_0|>").len() > 1);
    // Unused rows: never produced, decode to nothing, in range.
    assert_eq!(t.token_kind(151_935), Some(TokenKind::Unused));
    assert_eq!(t.decode(&[151_935]).unwrap(), "");
    assert!(t.encode("[PAD151935]").iter().all(|&id| id < 151_643));
}

#[test]
fn nfc_order_differs_only_after_a_special() {
    // '>' + U+0338 composes to U+226F: Qwen-1 normalizes first, so the special is gone; HF cuts
    // the special out first. Both match their reference goldens above; pin the difference here.
    let s = "<|im_end|>\u{338}";
    assert_eq!(qwen3().encode(s)[0], 151645);
    assert!(!qwen1().encode(s).contains(&151645));
    assert_eq!(qwen1().normalization(), Normalization::NfcBeforeSpecials);
}

#[test]
fn decode_unknown_id_is_an_error() {
    let e = qwen3().decode(&[1, 151_936]).unwrap_err();
    assert!(matches!(
        e,
        TokenizerError::UnknownId {
            id: 151_936,
            n_tokens: 151_936
        }
    ));
    assert_eq!(
        e.to_string(),
        "token id 151936 is outside the vocabulary of 151936 tokens"
    );
    let mut sd = StreamDecoder::new();
    assert!(sd.push(qwen3(), u32::MAX).is_err());
}

#[test]
fn stream_holds_split_characters() {
    let t = qwen3();
    // "🦙" is three tokens in llama.cpp's cases: F0 9F A6 | 99 | ... ; nothing prints until complete.
    let ids = t.encode(" 🦙x");
    let mut sd = StreamDecoder::new();
    let pieces: Vec<String> = ids.iter().map(|&id| sd.push(t, id).unwrap()).collect();
    assert!(pieces.iter().all(|p| !p.contains('\u{fffd}')), "{pieces:?}");
    assert!(
        pieces.iter().filter(|p| p.is_empty()).count() >= 1,
        "{pieces:?}"
    );
    assert_eq!(pieces.concat() + &sd.finish(), " 🦙x");
    // An incomplete character at the end becomes one U+FFFD at finish.
    let mut sd = StreamDecoder::new();
    let first = t.encode(" 🦙")[0]; // b" \xf0\x9f"
    assert_eq!(sd.push(t, first).unwrap(), " ");
    assert!(sd.has_pending());
    assert_eq!(sd.finish(), "\u{fffd}");
}

/// xorshift64*: seeded, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn stream_concatenation_equals_decode() {
    let t = qwen3();
    let n = t.n_tokens();
    // Tokens that are not whole UTF-8 text: the ones that split characters.
    let partial: Vec<u32> = (0..151_643u32)
        .filter(|&id| std::str::from_utf8(t.token_bytes(id).unwrap()).is_err())
        .collect();
    assert!(partial.len() > 1000, "{} partial tokens", partial.len());
    let texts = corpus();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..3000 {
        let len = 1 + rng.below(40);
        let ids: Vec<u32> = match case % 3 {
            // Any row, specials and unused included.
            0 => (0..len).map(|_| rng.below(n) as u32).collect(),
            // Mostly character fragments.
            1 => (0..len)
                .map(|_| {
                    if rng.below(4) == 0 {
                        rng.below(151_643) as u32
                    } else {
                        partial[rng.below(partial.len())]
                    }
                })
                .collect(),
            // Real text cut at a random point (ends mid-character at times).
            _ => {
                let ids = t.encode(&texts[rng.below(texts.len())]);
                ids[..rng.below(ids.len() + 1)].to_vec()
            }
        };
        let mut sd = StreamDecoder::new();
        let mut out = String::new();
        for &id in &ids {
            out.push_str(&sd.push(t, id).unwrap());
        }
        out.push_str(&sd.finish());
        let whole = t.decode(&ids).unwrap();
        assert_eq!(out, whole, "case {case}: ids {ids:?}");
    }
}

/// A small vocabulary: the 256 bytes (ids 0..256, byte-level order) plus the given merges.
fn tiny(merges: &[&str], pre: PreTokenizer) -> Result<Tokenizer, TokenizerError> {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_level::encode(&[b])).collect();
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    let kinds = vec![TokenKind::Normal; tokens.len()];
    let config = TokenizerConfig {
        pre,
        normalization: Normalization::None,
        eos_ids: vec![],
    };
    Tokenizer::from_parts(&tokens, &kinds, Some(merges), config)
}

#[test]
fn smollm_pretokenizer_splits_digits_and_ends_space_runs_at_them() {
    let t = tiny(&["Ġ Ġ", "ĠĠ Ġ", "Ġ a"], PreTokenizer::SmolLm).unwrap();
    let id = |s: &str| t.token_to_id(s).unwrap();
    // Digits one by one; the space run before a digit stays whole (end of its segment), the run
    // before a letter gives its last space to the letter.
    assert_eq!(t.encode("12"), vec![id("1"), id("2")]);
    assert_eq!(t.encode("a   1"), vec![id("a"), id("   "), id("1")]);
    assert_eq!(t.encode("a   a"), vec![id("a"), id("  "), id(" a")]);
    // Qwen2's pattern on the same text: a lone space before a digit is its own piece as well.
    let q = tiny(&["Ġ Ġ", "ĠĠ Ġ", "Ġ a"], PreTokenizer::Qwen2).unwrap();
    assert_eq!(q.encode("a   1"), vec![id("a"), id("  "), id(" "), id("1")]);
}

#[test]
fn ranks_from_merges_when_ids_are_not_ranks() {
    // Same BPE, ids permuted: the encoder must map ranks back to the permuted ids.
    let v = tv::qwen3_vocab();
    let n = 151_643usize;
    let perm = |id: usize| if id < n { (id * 7919 + 13) % n } else { id }; // 7919 is prime, n = 151643 is not a multiple
    let mut tokens = v.tokens.clone();
    let mut kinds = v.kinds.clone();
    for id in 0..n {
        tokens[perm(id)] = v.tokens[id].clone();
        kinds[perm(id)] = v.kinds[id];
    }
    let config = TokenizerConfig {
        pre: PreTokenizer::Qwen2,
        normalization: Normalization::Nfc,
        eos_ids: vec![],
    };
    let t = Tokenizer::from_parts(&tokens, &kinds, v.merges.as_deref(), config).unwrap();
    assert!(!t.ranks_are_ids());
    let texts = corpus();
    let want = goldens("golden_qwen3.jsonl");
    for (s, w) in texts.iter().zip(&want).take(300) {
        let w: Vec<u32> = w.iter().map(|&id| perm(id as usize) as u32).collect();
        assert_eq!(t.encode(s), w, "{s:?}");
    }
}

#[test]
fn hostile_vocabularies_are_errors() {
    let err = |r: Result<Tokenizer, TokenizerError>| r.unwrap_err().to_string();
    assert_eq!(
        err(tiny(&["a"], PreTokenizer::Qwen2)),
        "invalid vocabulary: merge 0 \"a\" is not two tokens separated by one space"
    );
    assert!(err(tiny(&["a b c"], PreTokenizer::Qwen2)).contains("merge 0"));
    // A merge whose result is no token.
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_level::encode(&[b])).collect();
    tokens.push("xy".into());
    let kinds = vec![TokenKind::Normal; tokens.len()];
    let cfg = || TokenizerConfig {
        pre: PreTokenizer::Qwen2,
        normalization: Normalization::None,
        eos_ids: vec![],
    };
    let e = err(Tokenizer::from_parts(
        &tokens,
        &kinds,
        Some(&["a b"][..]),
        cfg(),
    ));
    assert_eq!(
        e,
        "invalid vocabulary: merge 0 \"a b\" makes \"ab\", which is not a normal token"
    );
    // A character outside the byte-level alphabet.
    tokens[256] = "x\u{3000}".into();
    let e = err(Tokenizer::from_parts::<_, &str>(
        &tokens,
        &kinds,
        None,
        cfg(),
    ));
    assert!(e.contains("token 256") && e.contains("U+3000"), "{e}");
    // A byte with no token is dropped, as HF tokenizers and llama.cpp do (SmolLM2 has such).
    let short: Vec<String> = (1..=255u8).map(|b| byte_level::encode(&[b])).collect();
    let t = Tokenizer::from_parts::<_, &str>(&short, &vec![TokenKind::Normal; 255], None, cfg())
        .unwrap();
    assert!(!t.ranks_are_ids());
    assert_eq!(t.encode("\0a\0"), vec![u32::from(b'a') - 1]);
    // Kinds / eos out of range.
    assert!(err(Tokenizer::from_parts::<_, &str>(
        &tokens,
        &kinds[..3],
        None,
        cfg()
    ))
    .contains("3 token kinds"));
    tokens[256] = "xy".into();
    let bad_eos = TokenizerConfig {
        eos_ids: vec![9999],
        ..cfg()
    };
    assert!(err(Tokenizer::from_parts::<_, &str>(
        &tokens, &kinds, None, bad_eos
    ))
    .contains("9999"));
    assert!(TokenKind::from_gguf_type(7, 6)
        .unwrap_err()
        .to_string()
        .contains("token 7 has type 6"));
    assert_eq!(
        PreTokenizer::from_gguf_name("llama-bpe")
            .unwrap_err()
            .to_string(),
        "tokenizer.ggml.pre is \"llama-bpe\"; supported pre-tokenizers: \"qwen2\", \"smollm\""
    );
    // DeepSeek-R1-Distill-Qwen files name the Qwen2 split by their own hash (llama.cpp maps it).
    assert_eq!(
        PreTokenizer::from_gguf_name("deepseek-r1-qwen").unwrap(),
        PreTokenizer::Qwen2
    );
}

#[test]
fn huge_whitespace_and_digit_runs_do_not_panic() {
    // Runs of a million and more whitespace chars overflow fancy-regex's backtracking stack (the
    // references fail there); we cut such runs every 500,000 chars instead of panicking.
    let t = qwen3();
    for s in [
        " ".repeat(200_000),
        "\n".repeat(200_000),
        " \n".repeat(100_000),
        "9".repeat(200_000),
        " \t".repeat(1_500_000),
        "\u{a0}".repeat(1_000_000) + "x",
        "x".to_string() + &" ".repeat(2_500_000) + "x",
        "\r\n \n".repeat(500_000),
        "!".repeat(2_000_000),
    ] {
        let ids = t.encode(&s);
        assert_eq!(t.decode(&ids).unwrap(), s);
    }
    // Below the cut, a long run is one piece as the regex makes it: 499,999 spaces + "x" gives
    // the run minus one space, then " x".
    let s = " ".repeat(499_999) + "x";
    let ids = t.encode(&s);
    assert_eq!(*ids.last().unwrap(), t.token_to_id(" x").unwrap());
}
