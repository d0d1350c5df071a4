//! Sampler tests against distributions computed by hand (softmax values written out with Python's
//! `math.exp`), plus a frequency test of the seeded draw.

use quant_formats::gguf::{Gguf, GgufWriter, Value};
use qwen::sampler::{Candidate, GenerationDefaults, Pcg32, Sampler, SamplerParams, WHOLE_CONTEXT};

/// Every filter off, temperature 1: the plain softmax.
fn plain() -> SamplerParams {
    SamplerParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: 1,
    }
}

fn dist(params: SamplerParams, accepted: &[u32], logits: &[f32]) -> Vec<Candidate> {
    let mut s = Sampler::new(params).unwrap();
    for &t in accepted {
        s.accept(t);
    }
    s.distribution(logits).to_vec()
}

/// Checks ids in order and probabilities to 1e-6.
fn assert_dist(got: &[Candidate], want: &[(u32, f64)]) {
    let ids: Vec<u32> = got.iter().map(|c| c.id).collect();
    let want_ids: Vec<u32> = want.iter().map(|w| w.0).collect();
    assert_eq!(ids, want_ids, "surviving ids (in order) of {got:?}");
    for (c, &(_, p)) in got.iter().zip(want) {
        assert!(
            (f64::from(c.p) - p).abs() < 1e-6,
            "id {}: p = {}, want {p}",
            c.id,
            c.p
        );
    }
}

const L: [f32; 4] = [1.0, 2.0, 3.0, 4.0];

#[test]
fn plain_softmax() {
    assert_dist(
        &dist(plain(), &[], &L),
        &[
            (3, 0.6439142598879724),
            (2, 0.23688281808991013),
            (1, 0.08714431874203257),
            (0, 0.03205860328008499),
        ],
    );
}

#[test]
fn top_k_2() {
    let p = SamplerParams {
        top_k: 2,
        ..plain()
    };
    assert_dist(
        &dist(p, &[], &L),
        &[(3, 0.7310585786300049), (2, 0.2689414213699951)],
    );
}

#[test]
fn top_p() {
    // The best token alone has 0.644 >= 0.5.
    let p = SamplerParams {
        top_p: 0.5,
        ..plain()
    };
    assert_dist(&dist(p, &[], &L), &[(3, 1.0)]);
    // 0.644 + 0.237 = 0.881 < 0.9, + 0.087 = 0.968 >= 0.9: three tokens, renormalised.
    let p = SamplerParams {
        top_p: 0.9,
        ..plain()
    };
    assert_dist(
        &dist(p, &[], &L),
        &[
            (3, 0.6652409557748218),
            (2, 0.24472847105479764),
            (1, 0.09003057317038046),
        ],
    );
    // top_p 0 keeps one token (llama.cpp: the first token already reaches the mass).
    let p = SamplerParams {
        top_p: 0.0,
        ..plain()
    };
    assert_dist(&dist(p, &[], &L), &[(3, 1.0)]);
}

#[test]
fn top_p_mass_is_relative_to_top_k_set() {
    // After top_k 2 the masses are 0.731 / 0.269: top_p 0.7 keeps one token.
    let p = SamplerParams {
        top_k: 2,
        top_p: 0.7,
        ..plain()
    };
    assert_dist(&dist(p, &[], &L), &[(3, 1.0)]);
    // Over the full set 0.644 < 0.7 would keep two; with top_k 3 the first mass is e^4/(e^2+e^3+e^4) = 0.665.
    let p = SamplerParams {
        top_k: 3,
        top_p: 0.7,
        ..plain()
    };
    assert_dist(
        &dist(p, &[], &L),
        &[(3, 0.7310585786300049), (2, 0.2689414213699951)],
    );
}

#[test]
fn min_p() {
    // Keep logit >= 4 + ln 0.2 = 2.39: ids 3 and 2.
    let p = SamplerParams {
        min_p: 0.2,
        ..plain()
    };
    assert_dist(
        &dist(p, &[], &L),
        &[(3, 0.7310585786300049), (2, 0.2689414213699951)],
    );
    // Keep logit >= 4 + ln 0.1 = 1.70: ids 3, 2, 1.
    let p = SamplerParams {
        min_p: 0.1,
        ..plain()
    };
    assert_dist(
        &dist(p, &[], &L),
        &[
            (3, 0.6652409557748218),
            (2, 0.24472847105479764),
            (1, 0.09003057317038046),
        ],
    );
    // min_p with top_p: the shorter of the two prefixes wins (top_p 0.5 keeps one).
    let p = SamplerParams {
        min_p: 0.1,
        top_p: 0.5,
        ..plain()
    };
    assert_dist(&dist(p, &[], &L), &[(3, 1.0)]);
    // top_p alone would keep three (see `top_p`), min_p 0.2 keeps two.
    let p = SamplerParams {
        min_p: 0.2,
        top_p: 0.9,
        ..plain()
    };
    assert_dist(
        &dist(p, &[], &L),
        &[(3, 0.7310585786300049), (2, 0.2689414213699951)],
    );
}

#[test]
fn temperature_applies_after_the_filters() {
    // top_k 3 keeps [4, 3, 2]; / 2 = [2, 1.5, 1].
    let p = SamplerParams {
        top_k: 3,
        temperature: 2.0,
        ..plain()
    };
    let d = dist(p, &[], &L);
    assert_dist(
        &d,
        &[
            (3, 0.506480391055654),
            (2, 0.3071958857184984),
            (1, 0.1863237232258476),
        ],
    );
    assert_eq!(d[0].logit, 2.0);
    // min_p is judged on untempered logits (llama.cpp order): 0.2 keeps two even at temperature 10.
    let p = SamplerParams {
        min_p: 0.2,
        temperature: 10.0,
        ..plain()
    };
    assert_eq!(dist(p, &[], &L).len(), 2);
}

#[test]
fn repeat_penalty_divides_positive_and_multiplies_negative() {
    // Accepted 3 (twice: counted once) and 0: logit 4 -> 2, logit -1 -> -2; [-2, 2, 3, 2].
    let p = SamplerParams {
        repeat_penalty: 2.0,
        ..plain()
    };
    let d = dist(p, &[3, 0, 3], &[-1.0, 2.0, 3.0, 4.0]);
    // Tie between ids 1 and 3 at logit 2: the lower id first.
    assert_dist(
        &d,
        &[
            (2, 0.5738891360724232),
            (1, 0.21112201467268488),
            (3, 0.21112201467268488),
            (0, 0.0038668345822069354),
        ],
    );
}

#[test]
fn repeat_penalty_window() {
    // Only the last 2 accepted tokens (1 and 2) are penalised; 3 fell out of the window.
    let p = SamplerParams {
        repeat_penalty: 2.0,
        repeat_last_n: 2,
        temperature: 0.0,
        ..plain()
    };
    let mut s = Sampler::new(p).unwrap();
    for t in [3, 1, 2] {
        s.accept(t);
    }
    assert_eq!(s.sample(&L), 3);
    let d = s.distribution(&[1.0, 2.0, 3.0, 3.5]).to_vec();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].id, 3);
    // Window [2, 3]: [1, 2, 3, 3.5] becomes [1, 2, 1.5, 1.75] -> id 1.
    s.accept(3);
    assert_eq!(s.sample(&[1.0, 2.0, 3.0, 3.5]), 1);
    s.reset();
    assert_eq!(s.sample(&[1.0, 2.0, 3.0, 3.5]), 3);
}

#[test]
fn greedy_ties_go_to_lowest_id() {
    let p = SamplerParams {
        temperature: 0.0,
        ..plain()
    };
    let mut s = Sampler::new(p).unwrap();
    assert_eq!(s.sample(&[1.0, 5.0, 5.0, 2.0]), 1);
    assert_eq!(s.sample(&[7.0, 5.0, 7.0, 2.0]), 0);
    assert_eq!(s.sample(&[-3.0, -1.0, -2.0]), 1);
    let d = s.distribution(&[1.0, 5.0, 5.0, 2.0]).to_vec();
    assert_eq!(
        d,
        vec![Candidate {
            id: 1,
            logit: 5.0,
            p: 1.0
        }]
    );
}

#[test]
fn pcg32_reference_vector() {
    // pcg32-demo.c: pcg32_srandom_r(&rng, 42u, 54u), first outputs.
    let mut r = Pcg32::new(42, 54);
    let got: Vec<u32> = (0..6).map(|_| r.next_u32()).collect();
    assert_eq!(
        got,
        vec![0xa15c02b7, 0x7b47f409, 0xba1d3330, 0x83d2f293, 0xbfa4784b, 0xcbed606e]
    );
}

#[test]
fn draws_follow_the_distribution() {
    // p = [0.1, 0.2, 0.3, 0.4]; 100k draws with a fixed seed.
    let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
    let p = SamplerParams {
        seed: 42,
        ..plain()
    };
    let mut s = Sampler::new(p).unwrap();
    let n = 100_000;
    let mut counts = [0usize; 4];
    for _ in 0..n {
        counts[s.sample(&logits) as usize] += 1;
    }
    let want = [0.1, 0.2, 0.3, 0.4];
    let chi2: f64 = counts
        .iter()
        .zip(want)
        .map(|(&c, p)| {
            let e = p * n as f64;
            (c as f64 - e).powi(2) / e
        })
        .sum();
    // 3 degrees of freedom: P(chi2 > 16.27) = 0.001.
    assert!(chi2 < 16.27, "chi2 = {chi2}, counts {counts:?}");
}

#[test]
fn same_seed_same_tokens() {
    let logits: Vec<f32> = (0..1000)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
        .collect();
    let p = SamplerParams {
        seed: 7,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        temperature: 3.0,
        ..plain()
    };
    let run = |p: SamplerParams| {
        let mut s = Sampler::new(p).unwrap();
        (0..200).map(|_| s.sample(&logits)).collect::<Vec<u32>>()
    };
    let a = run(p);
    assert_eq!(a, run(p));
    assert_ne!(a, run(SamplerParams { seed: 8, ..p }));
    // Enough spread that the comparison above means something.
    let mut distinct = a.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(distinct.len() > 20, "{} distinct tokens", distinct.len());
}

#[test]
fn defaults_come_from_the_file_else_llama_cpp() {
    let d = SamplerParams::default();
    assert_eq!(
        (
            d.temperature,
            d.top_k,
            d.top_p,
            d.min_p,
            d.repeat_penalty,
            d.repeat_last_n
        ),
        (0.8, 40, 0.95, 0.05, 1.0, 64)
    );
    // Qwen-7B-Chat's generation_config.json: top_p 0.8, top_k 0 (off), repetition_penalty 1.1.
    // The penalty applies to the whole sequence, as transformers does.
    let file = GenerationDefaults {
        temperature: None,
        top_p: Some(0.8),
        top_k: Some(0),
        min_p: None,
        repetition_penalty: Some(1.1),
        repeat_last_n: Some(WHOLE_CONTEXT),
    };
    let p = SamplerParams::with_file_defaults(&file);
    assert_eq!(
        (
            p.temperature,
            p.top_k,
            p.top_p,
            p.repeat_penalty,
            p.repeat_last_n
        ),
        (0.8, 0, 0.8, 1.1, WHOLE_CONTEXT)
    );
}

fn gguf_with(keys: Vec<(&str, Value)>) -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in keys {
        w.add(k, v);
    }
    w.start(Vec::new()).unwrap().finish().unwrap()
}

#[test]
fn file_defaults_from_ours_then_llama_cpp_keys() {
    // qwen-convert's keys (from generation_config.json): the penalty spans the whole context.
    let bytes = gguf_with(vec![
        ("qwen_rs.generation.temperature", Value::F32(0.7)),
        ("qwen_rs.generation.top_k", Value::U32(20)),
        ("qwen_rs.generation.repetition_penalty", Value::F32(1.05)),
        ("general.sampling.top_p", Value::F32(0.9)),
        ("general.sampling.temp", Value::F32(0.1)),
    ]);
    let d = GenerationDefaults::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap();
    assert_eq!(
        d,
        GenerationDefaults {
            temperature: Some(0.7),
            top_p: Some(0.9),
            top_k: Some(20),
            min_p: None,
            repetition_penalty: Some(1.05),
            repeat_last_n: Some(WHOLE_CONTEXT),
        }
    );
    // llama.cpp's general.sampling.* (integers as i32, as gguf-py writes them).
    let bytes = gguf_with(vec![
        ("general.sampling.temp", Value::F32(0.6)),
        ("general.sampling.top_k", Value::I32(20)),
        ("general.sampling.top_p", Value::F32(0.95)),
        ("general.sampling.min_p", Value::F32(0.0)),
        ("general.sampling.penalty_repeat", Value::F32(1.1)),
        ("general.sampling.penalty_last_n", Value::I32(-1)),
    ]);
    let d = GenerationDefaults::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap();
    assert_eq!(
        d,
        GenerationDefaults {
            temperature: Some(0.6),
            top_p: Some(0.95),
            top_k: Some(20),
            min_p: Some(0.0),
            repetition_penalty: Some(1.1),
            repeat_last_n: Some(WHOLE_CONTEXT),
        }
    );
    // Wrong types and values are errors naming the key.
    let bytes = gguf_with(vec![("general.sampling.top_k", Value::I32(-3))]);
    let e = GenerationDefaults::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap_err();
    assert!(
        e.contains("general.sampling.top_k") && e.contains("-3"),
        "{e}"
    );
    let bytes = gguf_with(vec![("general.sampling.temp", Value::String("hot".into()))]);
    let e = GenerationDefaults::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap_err();
    assert!(e.contains("general.sampling.temp"), "{e}");
    // Nothing said: all None.
    let bytes = gguf_with(vec![]);
    let d = GenerationDefaults::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap();
    assert_eq!(d, GenerationDefaults::default());
}

#[test]
fn huge_penalty_window_allocates_only_what_it_holds() {
    // A window of "the whole context" or a user's 10^12 must not reserve memory up front.
    for n in [WHOLE_CONTEXT, 1_000_000_000_000] {
        let params = SamplerParams {
            repeat_penalty: 2.0,
            repeat_last_n: n,
            ..plain()
        };
        let mut logits = vec![1.0f32; 4];
        logits[3] = 1.9;
        // tokens 1 and 2 are penalised to 0.5; 3 (1.9) beats 0 (1.0)
        let d = dist(params, &[1, 2, 1], &logits);
        assert_eq!(d[0].id, 3);
        assert_eq!(d.iter().find(|c| c.id == 1).unwrap().logit, 0.5);
    }
}

#[test]
fn bad_settings_are_errors_naming_the_value() {
    let e = Sampler::new(SamplerParams {
        temperature: -1.0,
        ..plain()
    })
    .err()
    .unwrap();
    assert_eq!(e.to_string(), "temperature = -1 is outside [0, 100]");
    let e = Sampler::new(SamplerParams {
        top_p: 1.5,
        ..plain()
    })
    .err()
    .unwrap();
    assert_eq!(e.to_string(), "top_p = 1.5 is outside [0, 1]");
    let e = Sampler::new(SamplerParams {
        repeat_penalty: 0.0,
        ..plain()
    })
    .err()
    .unwrap();
    assert_eq!(e.to_string(), "repeat_penalty = 0 is outside (0, 100]");
    let e = Sampler::new(SamplerParams {
        min_p: f32::NAN,
        ..plain()
    })
    .err()
    .unwrap();
    assert!(e.to_string().starts_with("min_p = NaN"), "{e}");
}

#[test]
fn large_vocab_does_not_need_top_k() {
    // 151936 logits with only min_p: the survivors are exactly those within ln(min_p) of the max.
    let n = 151_936;
    let logits: Vec<f32> = (0..n)
        .map(|i| ((i as u64 * 2654435761) % 10_000) as f32 / 1000.0)
        .collect();
    let p = SamplerParams {
        min_p: 0.5,
        top_k: 0,
        ..plain()
    };
    let mut s = Sampler::new(p).unwrap();
    let d = s.distribution(&logits);
    let max = logits.iter().cloned().fold(f32::MIN, f32::max);
    let want = logits.iter().filter(|&&l| l >= max + 0.5f32.ln()).count();
    assert_eq!(d.len(), want);
    let total: f32 = d.iter().map(|c| c.p).sum();
    assert!((total - 1.0).abs() < 1e-5);
}
