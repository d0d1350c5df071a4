//! GPT-2's reversible byte <-> unicode mapping (`bytes_to_unicode` in openai/gpt-2 `encoder.py`,
//! the `ByteLevel` pre-tokenizer of HF `tokenizers`).
//!
//! Vocabulary files of the gpt2 family (tokenizer.json, GGUF `tokenizer.ggml.tokens`) store every
//! normal token as a string in which each byte is one code point: the printable bytes `!`..`~`,
//! `¡`..`¬`, `®`..`ÿ` stand for themselves, the other 68 bytes become U+0100.. in byte order.

/// Number of code points in the mapped range (U+0000..=U+0143).
const N_CHARS: usize = 0x144;

/// `UNICODE_TO_BYTE[c]` = the byte that code point `c` stands for, or -1 when `c` stands for none.
const UNICODE_TO_BYTE: [i16; N_CHARS] = build_unicode_to_byte();

/// `BYTE_TO_UNICODE[b]` = the code point byte `b` is written as.
const BYTE_TO_UNICODE: [u16; 256] = build_byte_to_unicode();

const fn is_printable(b: usize) -> bool {
    (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)
}

const fn build_byte_to_unicode() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut next = 256u16;
    let mut b = 0;
    while b < 256 {
        if is_printable(b) {
            table[b] = b as u16;
        } else {
            table[b] = next;
            next += 1;
        }
        b += 1;
    }
    table
}

const fn build_unicode_to_byte() -> [i16; N_CHARS] {
    let forward = build_byte_to_unicode();
    let mut table = [-1i16; N_CHARS];
    let mut b = 0;
    while b < 256 {
        table[forward[b] as usize] = b as i16;
        b += 1;
    }
    table
}

/// Appends the bytes that `token` (in GPT-2 byte-level form) stands for to `out`.
/// Returns the first character that is not part of the mapping, if any (then `out` holds a
/// partial result the caller must discard).
pub fn decode_into(token: &str, out: &mut Vec<u8>) -> Result<(), char> {
    for c in token.chars() {
        let b = UNICODE_TO_BYTE.get(c as usize).copied().unwrap_or(-1);
        if b < 0 {
            return Err(c);
        }
        out.push(b as u8);
    }
    Ok(())
}

/// The GPT-2 byte-level string of `bytes` (the inverse of [`decode_into`]).
pub fn encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| char::from_u32(u32::from(BYTE_TO_UNICODE[usize::from(b)])).unwrap_or('\u{fffd}'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_byte() {
        let all: Vec<u8> = (0..=255u8).collect();
        let s = encode(&all);
        assert_eq!(s.chars().count(), 256);
        let mut back = Vec::new();
        decode_into(&s, &mut back).unwrap();
        assert_eq!(back, all);
    }

    #[test]
    fn known_characters() {
        // Space is written as U+0120 'Ġ', newline as U+010A 'Ċ' (byte 10 is the 11th unprintable byte).
        assert_eq!(encode(b" \n!"), "\u{120}\u{10a}!");
        let mut out = Vec::new();
        assert_eq!(decode_into("a\u{3000}", &mut out), Err('\u{3000}'));
    }
}
