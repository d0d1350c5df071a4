//! The chat engine in-process: stop-string filtering, and multi-turn sessions on the real
//! SmolLM2-135M-Instruct weights (assets/, from scripts/setup.sh) with the KV cache kept across turns.

#[path = "forward_common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

use common::{convert, root, scratch};

use qwen::chat::ChatTemplate;
use qwen::interactive::{format_cache_stats, ChatOptions, Session, StopFilter, StopReason};
use qwen::sampler::SamplerParams;
use qwen::tokenizer::Tokenizer;
use qwen::{Model, ModelFile};

fn stops(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

/// Feeds pieces, returns (everything shown, stopped?, reply).
fn feed(stop: &[&str], pieces: &[&str]) -> (String, bool, String) {
    let mut f = StopFilter::new(&stops(stop));
    let mut shown = String::new();
    let mut hit = false;
    for p in pieces {
        let (s, h) = f.push(p);
        shown.push_str(s);
        if h {
            hit = true;
            break;
        }
    }
    if !hit {
        shown.push_str(f.finish());
    }
    (shown, hit, f.reply().to_string())
}

#[test]
fn stop_filter_cuts_before_the_stop_string() {
    // Split across pieces, and not at the start of a piece.
    let (shown, hit, reply) = feed(&["User:"], &["Hello", " there.\nUs", "er: hi", " more"]);
    assert!(hit);
    assert_eq!(shown, "Hello there.\n");
    assert_eq!(reply, "Hello there.\n");
}

#[test]
fn stop_filter_releases_false_alarms() {
    // "Us" is held back while it could start "User:", then released.
    let mut f = StopFilter::new(&stops(&["User:"]));
    assert_eq!(f.push("Hi Us"), ("Hi ", false));
    assert_eq!(f.push("a"), ("Usa", false));
    // A prefix still pending at the end comes out with finish().
    assert_eq!(f.push(" U"), (" ", false));
    assert_eq!(f.finish(), "U");
    assert_eq!(f.reply(), "Hi Usa U");
}

#[test]
fn stop_filter_picks_the_earliest_of_several() {
    let (shown, hit, _) = feed(&["world", "lo w"], &["hello world"]);
    assert!(hit);
    assert_eq!(shown, "hel");
    // No stops: everything passes straight through, empty stop strings are ignored.
    let (shown, hit, reply) = feed(&[""], &["a", "b\n", "c"]);
    assert!(!hit);
    assert_eq!((shown.as_str(), reply.as_str()), ("ab\nc", "ab\nc"));
    // Multi-byte characters around a held-back prefix.
    let (shown, hit, _) = feed(&["ü!"], &["Grü", "ße ü", "!x"]);
    assert!(hit);
    assert_eq!(shown, "Grüße ");
}

/// SmolLM2-135M-Instruct converted to f16 from assets/smollm2-hf (cached under target/). The Q4_1
/// file itself answers "What is the capital of France?" with "L'Étoile..." under SmolLM2's default
/// system prompt (its logits differ from f16 by up to 1.7 there), so answers are checked on f16.
fn smollm2() -> ModelFile {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        let hf = root().join("assets/smollm2-hf");
        assert!(
            hf.join("config.json").exists(),
            "{} is missing: run scripts/setup.sh",
            hf.display()
        );
        let out = scratch("chat").join("smollm2.f16.gguf");
        convert(&hf, &out, "f16");
        out
    });
    ModelFile::open(path).unwrap()
}

fn options(template: ChatTemplate, n_ctx: usize, n_predict: usize) -> ChatOptions {
    ChatOptions {
        template,
        system: None,
        prompt: None,
        interactive: true,
        n_predict: Some(n_predict),
        stop: Vec::new(),
        sampler: SamplerParams {
            temperature: 0.0,
            ..SamplerParams::default()
        },
        n_ctx,
        batch_size: 32,
        verbose: true,
    }
}

#[test]
fn three_turns_reuse_the_cache() {
    let file = smollm2();
    let g = file.gguf().unwrap();
    let model = Model::load(&g).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let opts = options(ChatTemplate::from_gguf(&g, &tok).unwrap(), 2048, 48);
    let mut s = Session::new(&model, &tok, &opts).unwrap();
    // SmolLM2's eos is <|im_end|>.
    assert!(s
        .stop_ids()
        .contains(&tok.token_to_id("<|im_end|>").unwrap()));
    let never = AtomicBool::new(false);

    let mut out = Vec::new();
    let t1 = s
        .turn("What is the capital of France?", &mut out, &never)
        .unwrap();
    let reply1 = String::from_utf8(out).unwrap();
    assert!(reply1.contains("Paris"), "turn 1 reply: {reply1:?}");
    assert_eq!((t1.turn, t1.cached, t1.cache_before), (1, 0, 0));
    assert_eq!(s.history()[0].1.content, reply1);

    let after1 = s.evaluated().len();
    let mut out = Vec::new();
    let t2 = s.turn("And of Germany?", &mut out, &never).unwrap();
    eprintln!("{}", format_cache_stats(&t2));
    // Everything turn 1 evaluated is reused; only the new message (and the end of the last reply) is new.
    assert_eq!(t2.cache_before, after1);
    assert_eq!(t2.cached, after1, "turn 2 re-evaluated part of the history");
    assert!(
        t2.evaluated > 5 && t2.evaluated < 20,
        "turn 2 evaluated {} tokens",
        t2.evaluated
    );
    let reply2 = String::from_utf8(out).unwrap();
    assert!(reply2.contains("Berlin"), "turn 2 reply: {reply2:?}");

    let after2 = s.evaluated().len();
    let mut out = Vec::new();
    let t3 = s.turn("Thanks!", &mut out, &never).unwrap();
    assert_eq!((t3.turn, t3.cached), (3, after2));
    assert_eq!(s.history().len(), 3);

    // /reset: the next turn reuses the cached system prompt only.
    s.reset();
    let mut out = Vec::new();
    let t4 = s
        .turn("What is the capital of France?", &mut out, &never)
        .unwrap();
    assert_eq!(t4.turn, 1);
    assert_eq!(
        t4.evaluated + t4.cached,
        t1.evaluated,
        "same prompt as turn 1"
    );
    assert!(
        t4.cached > 10,
        "the template's system prompt stays cached ({} tokens)",
        t4.cached
    );
    // Greedy: the same answer as the first time.
    assert_eq!(String::from_utf8(out).unwrap(), reply1);
}

#[test]
fn a_full_context_drops_old_turns_but_keeps_the_system_prompt() {
    let file = smollm2();
    let g = file.gguf().unwrap();
    let model = Model::load(&g).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let mut opts = options(ChatTemplate::from_gguf(&g, &tok).unwrap(), 128, 24);
    opts.system = Some("You are a terse assistant.".into());
    let mut s = Session::new(&model, &tok, &opts).unwrap();
    let never = AtomicBool::new(false);
    // Different first words, so the cached prefix after a drop is the system prompt plus at most the
    // "<|im_start|>user\n" that every turn starts with.
    let questions = [
        "Name a colour.",
        "Which fruit is yellow?",
        "Tell me an animal.",
        "Pick a country.",
        "Say a city.",
    ];
    let sys = tok.encode("<|im_start|>system\nYou are a terse assistant.<|im_end|>\n");
    let mut dropped = 0;
    for q in questions {
        let mut out = Vec::new();
        let st = s.turn(q, &mut out, &never).unwrap();
        assert!(st.ctx_used <= 128);
        dropped += st.dropped_turns;
        if st.dropped_turns > 0 {
            assert!(
                st.cached >= sys.len() && st.cached < sys.len() + 4,
                "cached {} tokens after dropping turns; the system prompt has {}",
                st.cached,
                sys.len()
            );
        }
    }
    assert!(dropped > 0, "128 tokens should not hold 5 turns");
    assert!(s.history().len() < questions.len());
    assert_eq!(s.history().last().unwrap().0.content, "Say a city.");

    // A reply that outgrows the context mid-way: old turns go, the reply goes on after re-evaluation.
    let mut opts = options(ChatTemplate::from_gguf(&g, &tok).unwrap(), 192, 0);
    opts.n_predict = None;
    let mut s = Session::new(&model, &tok, &opts).unwrap();
    let mut out = Vec::new();
    s.turn("Name a colour.", &mut out, &never).unwrap();
    let mut out = Vec::new();
    let st = s
        .turn(
            "Write a long story about a dragon who learns to cook.",
            &mut out,
            &never,
        )
        .unwrap();
    assert!(st.dropped_turns >= 1, "{st:?}");
    assert!(st.reevaluated > 0, "{st:?}");
    assert!(st.generated > 60, "{st:?}");
    assert_eq!(s.history().len(), 1, "only the story turn is left");
}

#[test]
fn stop_strings_and_limits() {
    let file = smollm2();
    let g = file.gguf().unwrap();
    let model = Model::load(&g).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let never = AtomicBool::new(false);

    // -n 3: three tokens.
    let opts = options(ChatTemplate::from_gguf(&g, &tok).unwrap(), 512, 3);
    let mut s = Session::new(&model, &tok, &opts).unwrap();
    let mut out = Vec::new();
    let st = s
        .turn("What is the capital of France?", &mut out, &never)
        .unwrap();
    assert_eq!((st.generated, st.stop), (3, StopReason::Limit));

    // A stop string taken from the unconstrained answer: the reply ends right before it.
    let full = {
        let opts = options(ChatTemplate::from_gguf(&g, &tok).unwrap(), 512, 40);
        let mut s = Session::new(&model, &tok, &opts).unwrap();
        let mut out = Vec::new();
        s.turn("What is the capital of France?", &mut out, &never)
            .unwrap();
        String::from_utf8(out).unwrap()
    };
    let at = full.find("Paris").expect("the answer names Paris");
    let mut opts = options(ChatTemplate::from_gguf(&g, &tok).unwrap(), 512, 40);
    opts.stop = vec!["Paris".into()];
    let mut s = Session::new(&model, &tok, &opts).unwrap();
    let mut out = Vec::new();
    let st = s
        .turn("What is the capital of France?", &mut out, &never)
        .unwrap();
    assert_eq!(st.stop, StopReason::StopString);
    assert_eq!(String::from_utf8(out).unwrap(), full[..at]);
    assert_eq!(s.history()[0].1.content, full[..at]);

    // An interrupt before the first token: nothing printed, nothing recorded.
    let stop_now = AtomicBool::new(true);
    let mut out = Vec::new();
    let st = s.turn("Hello", &mut out, &stop_now).unwrap();
    assert_eq!(st.stop, StopReason::Interrupted);
    assert!(out.is_empty());
    assert_eq!(s.history().len(), 1);
}

/// A Qwen-1 file (tiny random fixture, converted): ChatML with the default system prompt; <|im_end|> and <|endoftext|> end a reply.
#[test]
fn qwen1_files_chat_in_chatml() {
    let out = scratch("chat").join("qwen1.f32.gguf");
    convert(&root().join("tests/fixtures/hf/qwen1"), &out, "f32");
    let file = ModelFile::open(&out).unwrap();
    let g = file.gguf().unwrap();
    // qwen-convert writes ChatML into Qwen-1 files; files without a template get the same built in.
    if let Some(t) = g.get_str("tokenizer.chat_template").unwrap() {
        assert_eq!(t, qwen::chat::CHATML);
    }
    let model = Model::load(&g).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let template = ChatTemplate::from_gguf(&g, &tok).unwrap();
    assert!(!template.has_default_system());
    let sys = template.initial_system(None).unwrap().unwrap();
    let text = template
        .render(&[sys, qwen::chat::Message::user("hi")], true)
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );

    let mut opts = options(template, 256, 6);
    opts.sampler = SamplerParams {
        seed: 3,
        ..SamplerParams::default()
    };
    let mut s = Session::new(&model, &tok, &opts).unwrap();
    for special in ["<|im_end|>", "<|endoftext|>"] {
        let id = tok.token_to_id(special).unwrap();
        assert!(
            s.stop_ids().contains(&id),
            "{special} ({id}) is not a stop id: {:?}",
            s.stop_ids()
        );
    }
    // A random model says random things; what matters is the bookkeeping.
    let never = AtomicBool::new(false);
    let mut total_prev = 0;
    for (i, q) in ["hi", "and then?"].iter().enumerate() {
        let mut out = Vec::new();
        let st = s.turn(q, &mut out, &never).unwrap();
        assert_eq!(st.turn, i + 1);
        assert_eq!(st.cache_before, total_prev);
        assert!(st.cached <= st.cache_before && st.evaluated >= 1);
        assert!(st.generated <= 6);
        total_prev = s.evaluated().len();
        assert_eq!(st.ctx_used, total_prev);
    }
}
