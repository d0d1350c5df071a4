//! Chat templates rendered by minijinja against the strings Hugging Face's engine wrote for the same
//! templates and conversations (tests/data/chat/expected.json, from scripts/chat_template_golden.py).

use std::path::PathBuf;

use qwen::chat::{strftime_utc, ChatTemplate, Message, CHATML, DEFAULT_SYSTEM};
use serde_json::Value as Json;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn expected() -> Json {
    let path = root().join("tests/data/chat/expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The template source named by expected.json: a committed .jinja file or an asset's tokenizer_config.json.
fn template_source(path: &str) -> String {
    let full = root().join(path);
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run scripts/setup.sh to fetch the test assets)",
            full.display()
        )
    });
    if path.ends_with(".json") {
        let cfg: Json = serde_json::from_str(&text).unwrap();
        cfg["chat_template"].as_str().unwrap().to_string()
    } else {
        text
    }
}

fn template(name: &str) -> ChatTemplate {
    let exp = expected();
    let info = &exp["templates"][name];
    let source = template_source(info["path"].as_str().unwrap());
    ChatTemplate::new(
        &source,
        info["bos_token"].as_str(),
        info["eos_token"].as_str(),
    )
    .unwrap()
}

fn messages(case: &Json) -> Vec<Message> {
    case.as_array()
        .unwrap()
        .iter()
        .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

/// Every case of one template, byte for byte; reports all mismatches at once.
fn check(name: &str) {
    let exp = expected();
    let t = template(name);
    let mut failures = Vec::new();
    let cases = exp["cases"].as_object().unwrap();
    assert!(cases.len() >= 6);
    for (case, msgs) in cases {
        let want = exp["expected"][name][case].as_str().unwrap();
        match t.render(&messages(msgs), true) {
            Ok(got) if got == want => {}
            Ok(got) => failures.push(format!(
                "{name}/{case}:\n--- HF\n{want:?}\n--- ours\n{got:?}"
            )),
            Err(e) => failures.push(format!("{name}/{case}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn qwen3_matches_hf() {
    check("qwen3");
}

#[test]
fn qwen2_5_matches_hf() {
    check("qwen2_5");
}

#[test]
fn smollm2_matches_hf() {
    check("smollm2");
}

#[test]
fn chatml_matches_hf() {
    check("chatml");
}

#[test]
fn hf_environment_features_match() {
    // tojson (indent, sort_keys, ensure_ascii, floats), string methods, slicing, break/continue, namespace.
    check("probe");
}

#[test]
fn builtin_chatml_is_the_committed_one() {
    assert_eq!(CHATML, template_source("tests/data/chat/chatml.jinja"));
}

#[test]
fn default_system_prompt() {
    // Templates with a system prompt of their own keep it; the others get DEFAULT_SYSTEM.
    let qwen25 = template("qwen2_5");
    assert!(qwen25.has_default_system());
    assert_eq!(qwen25.initial_system(None).unwrap(), None);
    let smol = template("smollm2");
    assert!(smol.has_default_system());
    assert_eq!(smol.initial_system(None).unwrap(), None);
    for t in [template("qwen3"), ChatTemplate::chatml()] {
        assert!(!t.has_default_system());
        assert_eq!(
            t.initial_system(None).unwrap(),
            Some(Message::system(DEFAULT_SYSTEM))
        );
    }
    // --system always wins.
    assert_eq!(
        qwen25.initial_system(Some("Be brief.")).unwrap(),
        Some(Message::system("Be brief."))
    );
    // Qwen-1 (ChatML) with the default: exactly what Qwen's make_context writes.
    let t = ChatTemplate::chatml();
    let mut msgs = vec![t.initial_system(None).unwrap().unwrap()];
    msgs.push(Message::user("Hi"));
    assert_eq!(
        t.render(&msgs, true).unwrap(),
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn templates_without_system_role() {
    // A Gemma-like template that rejects system messages.
    let src = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}<{{ m.role }}>{{ m.content }}{% endfor %}";
    let t = ChatTemplate::new(src, None, None).unwrap();
    assert!(!t.supports_system());
    assert_eq!(t.initial_system(None).unwrap(), None);
    let e = t.initial_system(Some("x")).unwrap_err();
    assert!(
        e.to_string().contains("does not accept a system message"),
        "{e}"
    );
    let e = t.render(&[Message::system("s")], true).unwrap_err();
    assert!(e.to_string().contains("System role not supported"), "{e}");
}

#[test]
fn bad_templates_are_errors() {
    let e = ChatTemplate::new("{% for m in messages %}", None, None).unwrap_err();
    assert!(
        e.to_string().starts_with("chat template does not compile"),
        "{e}"
    );
    // messages[0] of an empty conversation: an error, not a panic.
    let t = ChatTemplate::new("{{ messages[0].role.upper() }}", None, None).unwrap();
    assert!(t.render(&[], true).is_err());
}

#[test]
fn strftime() {
    // 2024-07-26 13:05:09 UTC, a Friday, day 208.
    let t = 1_722_000_309;
    assert_eq!(strftime_utc("%d %b %Y", t), "26 Jul 2024");
    assert_eq!(
        strftime_utc("%A %B %e, %y %H:%M:%S %I%p %j %% %Q", t),
        "Friday July 26, 24 13:25:09 01PM 208 % %Q"
    );
    assert_eq!(strftime_utc("%Y-%m-%d", 0), "1970-01-01");
    assert_eq!(strftime_utc("%Y-%m-%d %a", 951_782_400), "2000-02-29 Tue");
    // The global exists and renders.
    let t = ChatTemplate::new("{{ strftime_now('%Y') }}", None, None).unwrap();
    assert_eq!(t.render(&[], false).unwrap().len(), 4);
}
