//! Token sampling: repetition penalty, top-k, top-p, min-p, temperature, then a seeded draw.
//!
//! The order and the meaning of each step follow llama.cpp's default sampler chain
//! (`common/sampling.cpp`: penalties -> top_k -> top_p -> min_p -> temperature -> dist), so that the
//! same settings mean the same thing to users coming from llama.cpp:
//! - repeat penalty: every distinct token among the last `repeat_last_n` accepted tokens has its logit
//!   divided by the penalty when positive and multiplied by it when negative or zero;
//! - top-k keeps the k highest logits (0 = off);
//! - top-p keeps the smallest prefix of the sorted candidates whose softmax mass reaches p (1.0 = off);
//! - min-p keeps the candidates whose probability is at least `min_p` times the best one (0.0 = off);
//! - the temperature divides the surviving logits; at 0 the sampler is greedy (argmax, ties go to the
//!   lowest id).
//!
//! Random numbers come from a local PCG32 (O'Neill, pcg-random.org, `pcg32_random_r`), so a seed gives the
//! same tokens on every machine and every version of our dependencies. Buffers are sized once for the
//! vocabulary and reused: sampling a token allocates nothing.

use std::collections::VecDeque;
use std::fmt;

/// `repeat_last_n` meaning "every token of the context" (llama.cpp's `-1`, and how transformers
/// applies `repetition_penalty`: over the whole sequence).
pub const WHOLE_CONTEXT: usize = usize::MAX;

/// Values a model file may carry for its generation defaults: `qwen_rs.generation.*` (from the
/// HF `generation_config.json`, written by qwen-convert), else llama.cpp's `general.sampling.*`.
/// `None` = the file does not say.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// Window of the penalty; [`WHOLE_CONTEXT`] for a transformers penalty.
    pub repeat_last_n: Option<usize>,
}

impl GenerationDefaults {
    /// Reads the defaults of a GGUF file. A key of the wrong type or value is an error naming it.
    pub fn from_gguf(g: &quant_formats::gguf::Gguf) -> Result<Self, String> {
        let key_err = |k: &str, e: &dyn fmt::Display| format!("metadata key '{k}': {e}");
        let f32_key = |k: &str| g.get_f32(k).map_err(|e| key_err(k, &e));
        // llama.cpp writes its integer sampling keys as i32; accept u32 too.
        let int_key = |k: &str| -> Result<Option<i64>, String> {
            match g.get_i32(k) {
                Ok(v) => Ok(v.map(i64::from)),
                Err(_) => g
                    .get_u32(k)
                    .map(|v| v.map(i64::from))
                    .map_err(|e| key_err(k, &e)),
            }
        };
        let ours = Self {
            temperature: f32_key("qwen_rs.generation.temperature")?,
            top_p: f32_key("qwen_rs.generation.top_p")?,
            top_k: g
                .get_u32("qwen_rs.generation.top_k")
                .map_err(|e| key_err("qwen_rs.generation.top_k", &e))?,
            min_p: None,
            repetition_penalty: f32_key("qwen_rs.generation.repetition_penalty")?,
            repeat_last_n: None,
        };
        let top_k =
            match int_key("general.sampling.top_k")? {
                None => None,
                Some(k) => Some(u32::try_from(k).map_err(|_| {
                    format!("metadata key 'general.sampling.top_k' = {k} is negative")
                })?),
            };
        let last_n = match int_key("general.sampling.penalty_last_n")? {
            None => None,
            Some(-1) => Some(WHOLE_CONTEXT),
            Some(n) => Some(usize::try_from(n).map_err(|_| {
                format!("metadata key 'general.sampling.penalty_last_n' = {n} is below -1")
            })?),
        };
        let theirs = Self {
            temperature: f32_key("general.sampling.temp")?,
            top_p: f32_key("general.sampling.top_p")?,
            top_k,
            min_p: f32_key("general.sampling.min_p")?,
            repetition_penalty: f32_key("general.sampling.penalty_repeat")?,
            repeat_last_n: last_n,
        };
        Ok(Self {
            temperature: ours.temperature.or(theirs.temperature),
            top_p: ours.top_p.or(theirs.top_p),
            top_k: ours.top_k.or(theirs.top_k),
            min_p: theirs.min_p,
            // A penalty from the HF generation config applies to the whole sequence, as in
            // transformers; llama.cpp's key comes with its own window (default 64).
            repeat_last_n: match ours.repetition_penalty {
                Some(_) => Some(WHOLE_CONTEXT),
                None => theirs.repeat_last_n,
            },
            repetition_penalty: ours.repetition_penalty.or(theirs.repetition_penalty),
        })
    }
}

/// Sampling settings. `Default` gives llama.cpp's defaults (`common_params_sampling`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0.0 = off.
    pub min_p: f32,
    /// 1.0 = off.
    pub repeat_penalty: f32,
    /// How many of the most recent accepted tokens the penalty looks at (0 = off,
    /// [`WHOLE_CONTEXT`] = all of them).
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0x5eed,
        }
    }
}

impl SamplerParams {
    /// llama.cpp's defaults, overridden by whatever the file's generation config says.
    pub fn with_file_defaults(d: &GenerationDefaults) -> Self {
        let mut p = Self::default();
        if let Some(t) = d.temperature {
            p.temperature = t;
        }
        if let Some(v) = d.top_p {
            p.top_p = v;
        }
        if let Some(k) = d.top_k {
            p.top_k = k as usize;
        }
        if let Some(v) = d.min_p {
            p.min_p = v;
        }
        if let Some(r) = d.repetition_penalty {
            p.repeat_penalty = r;
        }
        if let Some(n) = d.repeat_last_n {
            p.repeat_last_n = n;
        }
        p
    }

    /// Checks every value against its range; the message names the value and the range.
    pub fn validate(&self) -> Result<(), SamplerError> {
        use quant_formats::limits::{Range, MIN_P, REPETITION_PENALTY, TEMPERATURE, TOP_P};
        let check = |name: &str, v: f32, r: Range| {
            if r.contains(v) {
                Ok(())
            } else {
                Err(SamplerError(format!("{name} = {v} is outside {r}")))
            }
        };
        check("temperature", self.temperature, TEMPERATURE)?;
        check("top_p", self.top_p, TOP_P)?;
        check("min_p", self.min_p, MIN_P)?;
        check("repeat_penalty", self.repeat_penalty, REPETITION_PENALTY)?;
        Ok(())
    }
}

/// A sampler setting out of range.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerError(pub String);

impl fmt::Display for SamplerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SamplerError {}

/// PCG32 (XSH RR 64/32), the reference `pcg32_random_r` with `pcg32_srandom_r` seeding.
#[derive(Debug, Clone)]
pub struct Pcg32 {
    state: u64,
    inc: u64,
}

impl Pcg32 {
    const MULT: u64 = 6364136223846793005;

    pub fn new(seed: u64, stream: u64) -> Self {
        let mut r = Self {
            state: 0,
            inc: (stream << 1) | 1,
        };
        r.next_u32();
        r.state = r.state.wrapping_add(seed);
        r.next_u32();
        r
    }

    pub fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old.wrapping_mul(Self::MULT).wrapping_add(self.inc);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        let rot = (old >> 59) as u32;
        xorshifted.rotate_right(rot)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        let hi = u64::from(self.next_u32()) << 21;
        let lo = u64::from(self.next_u32()) >> 11;
        (hi | lo) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// One entry of the candidate list: a token id, its (possibly penalised / tempered) logit and, after
/// [`Sampler::distribution`], its probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub id: u32,
    pub logit: f32,
    pub p: f32,
}

/// Descending logit, then ascending id: a total order, so results never depend on the sort algorithm.
fn by_logit_desc(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

pub struct Sampler {
    params: SamplerParams,
    rng: Pcg32,
    /// [n_vocab] at most; reused every token.
    cands: Vec<Candidate>,
    /// The last `repeat_last_n` accepted tokens, oldest first.
    recent: VecDeque<u32>,
    /// Scratch for the distinct ids of `recent`.
    distinct: Vec<u32>,
}

impl Sampler {
    pub fn new(params: SamplerParams) -> Result<Self, SamplerError> {
        params.validate()?;
        Ok(Self {
            params,
            rng: Pcg32::new(params.seed, 0xda3e39cb94b95bdb),
            cands: Vec::new(),
            // The window may be "whole context" or any user number: reserve a bounded
            // amount; the deque grows with the tokens actually accepted.
            recent: VecDeque::with_capacity(params.repeat_last_n.min(4096)),
            distinct: Vec::with_capacity(params.repeat_last_n.min(4096)),
        })
    }

    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// Records a token (prompt or generated) for the repeat penalty.
    pub fn accept(&mut self, token: u32) {
        if self.params.repeat_last_n == 0 {
            return;
        }
        if self.recent.len() == self.params.repeat_last_n {
            self.recent.pop_front();
        }
        self.recent.push_back(token);
    }

    /// Forgets the accepted tokens (the random stream goes on).
    pub fn reset(&mut self) {
        self.recent.clear();
    }

    /// Picks the next token from `logits` ([n_vocab]). Does not accept it: call [`Sampler::accept`].
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 0.0 {
            return self.greedy(logits);
        }
        let r = self.rng.next_f64();
        let cands = self.distribution(logits);
        let mut cum = 0.0f64;
        for c in cands.iter() {
            cum += f64::from(c.p);
            if r < cum {
                return c.id;
            }
        }
        // r is within rounding of 1.0: the last candidate.
        cands.last().map_or(0, |c| c.id)
    }

    /// Argmax of the penalised logits; ties go to the lowest id.
    fn greedy(&mut self, logits: &[f32]) -> u32 {
        self.load(logits);
        let mut best = 0usize;
        for (i, c) in self.cands.iter().enumerate() {
            if c.logit > self.cands[best].logit {
                best = i;
            }
        }
        self.cands.get(best).map_or(0, |c| c.id)
    }

    /// Copies `logits` into the candidate list (index = id) and applies the repeat penalty.
    fn load(&mut self, logits: &[f32]) {
        self.cands.clear();
        self.cands
            .extend(logits.iter().enumerate().map(|(i, &l)| Candidate {
                id: i as u32,
                logit: l,
                p: 0.0,
            }));
        let penalty = self.params.repeat_penalty;
        if penalty != 1.0 && !self.recent.is_empty() {
            self.distinct.clear();
            self.distinct.extend(self.recent.iter().copied());
            self.distinct.sort_unstable();
            self.distinct.dedup();
            for &t in &self.distinct {
                if let Some(c) = self.cands.get_mut(t as usize) {
                    c.logit = if c.logit <= 0.0 {
                        c.logit * penalty
                    } else {
                        c.logit / penalty
                    };
                }
            }
        }
    }

    /// The final distribution the next draw uses: surviving candidates sorted by descending logit, with
    /// `logit` = penalised logit / temperature and `p` = their softmax. At temperature 0 it is the single
    /// greedy token with p = 1.
    pub fn distribution(&mut self, logits: &[f32]) -> &[Candidate] {
        let SamplerParams {
            temperature,
            top_k,
            top_p,
            min_p,
            ..
        } = self.params;
        if temperature <= 0.0 {
            let id = self.greedy(logits);
            let logit = self.cands[id as usize].logit;
            self.cands.clear();
            self.cands.push(Candidate { id, logit, p: 1.0 });
            return &self.cands;
        }
        self.load(logits);
        if self.cands.is_empty() {
            return &self.cands;
        }

        // top-k: keep the k best, sorted.
        let n = self.cands.len();
        let k = if top_k == 0 { n } else { top_k.min(n) };
        if k < n {
            self.cands.select_nth_unstable_by(k - 1, by_logit_desc);
            self.cands.truncate(k);
        }
        let max_logit = self
            .cands
            .iter()
            .map(|c| c.logit)
            .fold(f32::NEG_INFINITY, f32::max);

        // Softmax normaliser over the top-k set (top-p's probabilities are relative to it).
        let z: f64 = self
            .cands
            .iter()
            .map(|c| f64::from(c.logit - max_logit).exp())
            .sum();

        // min-p only ever keeps a prefix of the sorted list, and so does top-p: dropping the tokens min-p
        // will drop anyway before sorting changes nothing but the cost of the sort (150k -> a few dozen).
        if min_p > 0.0 {
            let min_logit = max_logit + min_p.ln();
            self.cands.retain(|c| c.logit >= min_logit);
        }
        self.cands.sort_unstable_by(by_logit_desc);

        // top-p: the smallest prefix whose mass reaches p.
        if top_p < 1.0 {
            let mut cum = 0.0f64;
            let mut keep = self.cands.len();
            for (i, c) in self.cands.iter().enumerate() {
                cum += f64::from(c.logit - max_logit).exp() / z;
                if cum >= f64::from(top_p) {
                    keep = i + 1;
                    break;
                }
            }
            self.cands.truncate(keep);
        }

        // Temperature, then the softmax of what is left.
        let top = self.cands[0].logit / temperature;
        let mut sum = 0.0f64;
        for c in self.cands.iter_mut() {
            c.logit /= temperature;
            let e = f64::from(c.logit - top).exp();
            c.p = e as f32;
            sum += e;
        }
        for c in self.cands.iter_mut() {
            c.p = (f64::from(c.p) / sum) as f32;
        }
        &self.cands
    }
}
