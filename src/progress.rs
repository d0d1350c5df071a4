//! Evaluating a prompt with a progress bar on stderr.
//!
//! A long prompt (thousands of tokens) takes seconds to minutes on a CPU; the user
//! should see it move. The bar is drawn only when stderr is a terminal and the
//! prompt is long enough to notice, so logs, pipes and tests see nothing extra;
//! stdout is never touched.

use crate::error::ModelError;
use crate::model::Model;
use crate::state::State;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Prompts shorter than this are evaluated without a bar.
pub const MIN_TOKENS: usize = 256;

/// A prompt-evaluation bar: `Some` only on a terminal for long prompts.
pub struct PromptBar(Option<ProgressBar>);

impl PromptBar {
    /// A bar for `n_tokens` prompt tokens, hidden unless stderr is a terminal and
    /// `n_tokens >= MIN_TOKENS`.
    pub fn new(n_tokens: usize) -> Self {
        if n_tokens < MIN_TOKENS || !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = ProgressBar::with_draw_target(
            Some(n_tokens as u64),
            ProgressDrawTarget::stderr_with_hz(10),
        );
        let style = ProgressStyle::with_template(
            "prompt {bar:30} {pos}/{len} tokens ({elapsed} elapsed, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Self(Some(bar))
    }

    /// Whether anything is drawn.
    pub fn is_visible(&self) -> bool {
        self.0.is_some()
    }

    /// `n` more tokens are done.
    pub fn inc(&self, n: usize) {
        if let Some(b) = &self.0 {
            b.inc(n as u64);
        }
    }

    /// Removes the bar from the terminal.
    pub fn finish(self) {
        if let Some(b) = self.0 {
            b.finish_and_clear();
        }
    }
}

/// Evaluates `tokens` from position `start_pos` like [`Model::forward`] (last
/// token's logits), in chunks of the state's batch size, advancing a
/// [`PromptBar`] after each. Results are the same as one `forward` call: forward
/// splits a long input into the same chunks.
pub fn forward_with_progress<'s>(
    model: &Model,
    st: &'s mut State,
    tokens: &[u32],
    start_pos: usize,
) -> Result<&'s [f32], ModelError> {
    let bar = PromptBar::new(tokens.len());
    if !bar.is_visible() || tokens.is_empty() {
        return model.forward(st, tokens, start_pos, false);
    }
    let step = st.max_batch.max(1);
    let mut done = 0;
    while done + step < tokens.len() {
        if let Err(e) = model.forward(st, &tokens[done..done + step], start_pos + done, false) {
            bar.finish();
            return Err(e);
        }
        done += step;
        bar.inc(step);
    }
    let out = model.forward(st, &tokens[done..], start_pos + done, false);
    bar.finish();
    out
}
