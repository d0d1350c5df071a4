//! Incremental detokenization for printing generated tokens as they arrive.

use super::{Tokenizer, TokenizerError};

/// Turns a stream of token ids into text, printing characters as soon as their UTF-8 bytes are
/// complete. A character split across tokens is held back until its last byte arrives, so it never
/// prints as U+FFFD; bytes that can never start or continue a valid character are replaced by
/// U+FFFD right away (one per maximal invalid sequence, as `String::from_utf8_lossy` does), and a
/// character still incomplete at the end is replaced by [`StreamDecoder::finish`].
///
/// The concatenation of every `push` and the final `finish` equals `Tokenizer::decode` of all ids.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    /// Bytes of an incomplete UTF-8 character (at most 3) not yet printed.
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one token; returns the text that became printable (possibly empty).
    /// An id outside the vocabulary is an error and leaves the decoder unchanged.
    pub fn push(&mut self, t: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        let bytes = t.token_bytes(id)?;
        self.pending.extend_from_slice(bytes);
        Ok(self.drain_complete())
    }

    /// Ends the stream: returns what is left, with an incomplete trailing character as U+FFFD.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }

    /// True when bytes of an unfinished character are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Takes every byte whose fate is decided: complete characters, and invalid sequences (as
    /// U+FFFD). Leaves only a prefix of a character that later bytes could still complete.
    fn drain_complete(&mut self) -> String {
        let mut out = String::new();
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // from_utf8 has just checked these `valid` bytes.
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..start + valid])
                            .unwrap_or_default(),
                    );
                    start += valid;
                    match e.error_len() {
                        // Bytes that no continuation can make valid: final, same as from_utf8_lossy.
                        Some(n) => {
                            out.push('\u{fffd}');
                            start += n;
                        }
                        // A character cut at the end of what we have: wait for more bytes.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}
