//! [`Tokenizer::from_gguf`]: reads the vocabulary and tokenizer settings from GGUF metadata.

use quant_formats::gguf::Gguf;

use super::{Normalization, PreTokenizer, TokenKind, Tokenizer, TokenizerConfig, TokenizerError};

/// Reads a typed GGUF value, turning a wrong type into an error naming the key.
fn gguf_value<T, E: std::fmt::Display>(
    key: &'static str,
    r: Result<Option<T>, E>,
) -> Result<Option<T>, TokenizerError> {
    r.map_err(|e| TokenizerError::Gguf {
        key,
        msg: e.to_string(),
    })
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's metadata: tokenizer.ggml.{model, pre, tokens,
    /// token_type, merges, eos_token_id}, qwen_rs.tokenizer.normalizer and
    /// qwen_rs.generation.eos_token_ids. A qwen/qwen2/qwen3 file without tokenizer.ggml.pre
    /// gets the qwen2 pre-tokenizer and a note in [`Tokenizer::warnings`].
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer, TokenizerError> {
        let model = gguf_value("tokenizer.ggml.model", g.get_str("tokenizer.ggml.model"))?
            .ok_or(TokenizerError::MissingKey("tokenizer.ggml.model"))?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model.to_string()));
        }
        let arch = gguf_value("general.architecture", g.get_str("general.architecture"))?;
        let mut warnings = Vec::new();
        let pre = match gguf_value("tokenizer.ggml.pre", g.get_str("tokenizer.ggml.pre"))? {
            Some(name) => PreTokenizer::from_gguf_name(name)?,
            // llama.cpp files written before the key existed (early-2024 Qwen1.5 GGUFs).
            // llama.cpp warns and falls back to its "default" BPE regex (llama-vocab.cpp,
            // `tokenizer_pre.empty()`); every qwen/qwen2/qwen3 model was trained with
            // Qwen's own split, so that is the one we fall back to, with a warning.
            None if matches!(arch, Some("qwen" | "qwen2" | "qwen3")) => {
                warnings.push(format!(
                    "tokenizer.ggml.pre is missing (a GGUF written before llama.cpp stored it); \
                     using the qwen2 pre-tokenizer of {} models (llama.cpp would use its \
                     'default' one)",
                    arch.unwrap_or_default()
                ));
                PreTokenizer::Qwen2
            }
            None => return Err(TokenizerError::MissingKey("tokenizer.ggml.pre")),
        };
        let tokens = gguf_value(
            "tokenizer.ggml.tokens",
            g.get_str_array("tokenizer.ggml.tokens"),
        )?
        .ok_or(TokenizerError::MissingKey("tokenizer.ggml.tokens"))?;
        let kinds = match gguf_value(
            "tokenizer.ggml.token_type",
            g.get_i32_array("tokenizer.ggml.token_type"),
        )? {
            Some(types) => {
                if types.len() != tokens.len() {
                    return Err(TokenizerError::Vocab(format!(
                        "tokenizer.ggml.token_type has {} entries, tokenizer.ggml.tokens has {}",
                        types.len(),
                        tokens.len()
                    )));
                }
                types
                    .iter()
                    .enumerate()
                    .map(|(id, &ty)| TokenKind::from_gguf_type(id, ty))
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => vec![TokenKind::Normal; tokens.len()],
        };
        let merges = gguf_value(
            "tokenizer.ggml.merges",
            g.get_str_array("tokenizer.ggml.merges"),
        )?;
        let normalizer = gguf_value(
            "qwen_rs.tokenizer.normalizer",
            g.get_str("qwen_rs.tokenizer.normalizer"),
        )?;
        let normalization = match normalizer {
            None => Normalization::None,
            // Qwen-1's tokenizer normalizes the whole text before it looks for special tokens.
            Some("NFC") if arch == Some("qwen") => Normalization::NfcBeforeSpecials,
            Some("NFC") => Normalization::Nfc,
            Some(other) => return Err(TokenizerError::UnsupportedNormalizer(other.to_string())),
        };
        let eos_ids = match gguf_value(
            "qwen_rs.generation.eos_token_ids",
            g.get_u32_array("qwen_rs.generation.eos_token_ids"),
        )? {
            Some(ids) => ids.to_vec(),
            None => gguf_value(
                "tokenizer.ggml.eos_token_id",
                g.get_u32("tokenizer.ggml.eos_token_id"),
            )?
            .into_iter()
            .collect(),
        };
        let config = TokenizerConfig {
            pre,
            normalization,
            eos_ids,
        };
        let mut tok = match merges {
            Some(m) => Self::from_parts(&tokens, &kinds, Some(&m[..]), config)?,
            None => Self::from_parts::<_, &str>(&tokens, &kinds, None, config)?,
        };
        tok.warnings = warnings;
        Ok(tok)
    }
}
