#!/usr/bin/env python3
"""Writes tests/data/chat/expected.json: chat templates rendered by Hugging Face's own engine.

Rendering goes through transformers' `render_jinja_template` (what `apply_chat_template(tokenize=False)`
calls) when transformers is importable, else through jinja2 set up the same way (transformers 5.x
`utils/chat_template_utils.py`: ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols,
raise_exception, tojson = json.dumps(ensure_ascii=False), strftime_now). The special tokens of the
tokenizer are passed as template variables, as `apply_chat_template` does.

Templates:
  qwen3    assets/qwen3/tokenizer_config.json   (scripts/setup.sh; not committed)
  smollm2  assets/smollm2-hf/tokenizer_config.json (scripts/setup.sh; the GGUF's template)
  qwen2_5  tests/data/chat/qwen2_5.jinja       (Qwen2.5-Instruct's template: default system prompt)
  chatml   tests/data/chat/chatml.jinja        (plain ChatML, what Qwen-1 files get)
  probe    tests/data/chat/probe.jinja         (tojson, Python string methods, loop controls, namespace)

Usage: /work/torchvenv/bin/python scripts/chat_template_golden.py   (or any Python with jinja2>=3.1)
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data", "chat")

CASES = {
    "one_turn_no_system": [
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "one_turn_system": [
        {"role": "system", "content": "You are a pirate. Answer in one sentence."},
        {"role": "user", "content": "Hello!"},
    ],
    "two_turns_system": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "What is 2+2?"},
    ],
    "three_turns_no_system": [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one."},
        {"role": "assistant", "content": "Green."},
        {"role": "user", "content": "Thanks! And a fruit?"},
    ],
    "thinking_in_history": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4"},
        {"role": "user", "content": "Times 3?"},
    ],
    "unicode_and_escapes": [
        {"role": "system", "content": 'Réponds en français. "Citations" et \\backslash'},
        {"role": "user", "content": "Grüße 😀\n  indented\ttab"},
    ],
}


def load_templates():
    def from_config(path):
        full = os.path.join(ROOT, path)
        if not os.path.exists(full):
            sys.exit(f"error: {path} is missing: run scripts/setup.sh")
        with open(full, encoding="utf-8") as f:
            cfg = json.load(f)
        tokens = {k: cfg[k] for k in ("bos_token", "eos_token") if isinstance(cfg.get(k), str)}
        return cfg["chat_template"], tokens

    def from_file(name, tokens):
        with open(os.path.join(DATA, name), encoding="utf-8") as f:
            return f.read(), tokens

    im_end = {"eos_token": "<|im_end|>"}
    return {
        "qwen3": ("assets/qwen3/tokenizer_config.json", *from_config("assets/qwen3/tokenizer_config.json")),
        "smollm2": ("assets/smollm2-hf/tokenizer_config.json", *from_config("assets/smollm2-hf/tokenizer_config.json")),
        "qwen2_5": ("tests/data/chat/qwen2_5.jinja", *from_file("qwen2_5.jinja", im_end)),
        "chatml": ("tests/data/chat/chatml.jinja", *from_file("chatml.jinja", {})),
        "probe": ("tests/data/chat/probe.jinja", *from_file("probe.jinja", {"bos_token": "<s>", "eos_token": "</s>"})),
    }


def make_renderer():
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
        import transformers

        def render(template, messages, tokens):
            out, _ = render_jinja_template(
                conversations=[messages], chat_template=template, add_generation_prompt=True, **tokens
            )
            return out[0]

        return render, f"transformers {transformers.__version__} render_jinja_template"
    except ImportError:
        pass

    import jinja2
    from datetime import datetime
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)

    def render(template, messages, tokens):
        return env.from_string(template).render(
            messages=messages, tools=None, documents=None, add_generation_prompt=True, **tokens
        )

    return render, f"jinja2 {jinja2.__version__} set up as transformers does"


def main():
    render, engine = make_renderer()
    templates = load_templates()
    out = {
        "engine": engine,
        "add_generation_prompt": True,
        "cases": CASES,
        "templates": {},
        "expected": {},
    }
    for name, (path, source, tokens) in templates.items():
        out["templates"][name] = {"path": path, **tokens}
        out["expected"][name] = {case: render(source, msgs, tokens) for case, msgs in CASES.items()}
    dest = os.path.join(DATA, "expected.json")
    with open(dest, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {dest} with {engine}", file=sys.stderr)


if __name__ == "__main__":
    main()
