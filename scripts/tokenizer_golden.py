#!/usr/bin/env python3
"""Writes the tokenizer test corpus and its golden ids (tests/data/tokenizer/).

    python scripts/tokenizer_golden.py corpus    # (re)writes corpus.jsonl from the seeded generator
    python scripts/tokenizer_golden.py golden    # writes golden_{qwen1,qwen3,smollm2}.jsonl

Goldens come from the reference implementations, never from our Rust code:
  * Qwen-1: NFC, then Python tiktoken over assets/qwen.tiktoken with Qwen-1's pattern and its
    special tokens (<|endoftext|>, <|im_start|>, <|im_end|>, <|extra_0..204|> from id 151643),
    allowed_special="all"; the same steps as QWenTokenizer.encode (tokenization_qwen.py).
  * Qwen3: HF `tokenizers` over assets/qwen3/tokenizer.json, add_special_tokens=False (added tokens
    written in the text are still matched, as transformers does).
  * SmolLM2 (a non-Qwen vocabulary whose ids are not BPE ranks; pre-tokenizer "smollm"): HF
    `tokenizers` over assets/smollm2-hf/tokenizer.json (SmolLM2's layout: Digits(individual) +
    ByteLevel, no normalizer), rebuilt by scripts/smollm2_to_hf.py from the GGUF's vocabulary.
Needs `pip install tiktoken tokenizers` and the assets from scripts/setup.sh.
"""

import base64
import json
import random
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "tokenizer"
ASSETS = ROOT / "assets"

QWEN1_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN1_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
QWEN1_SPECIAL_START = 151643

# ---------------------------------------------------------------------------------------------
# Corpus: hand-written cases first, then seeded combinations of fragments from every category.

HAND = [
    "",
    " ",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll see they've done it; she'd say we're fine. IT'S OK, DON'T.",
    "你好，世界！今天天气很好，我们去公园散步吧。",
    "机器学习是人工智能的一个分支。",
    "日本語のテキスト：東京は日本の首都です。カタカナとひらがな。",
    "한국어 문장입니다. 서울은 대한민국의 수도입니다.",
    "مرحبا بالعالم! هذه جملة باللغة العربية.",
    "שלום עולם",
    "Привет, мир! Это тест.",
    "Ελληνικά: Γειά σου Κόσμε",
    "हिन्दी में एक वाक्य।",
    "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "👨‍👩‍👧‍👦 family, 👩🏽‍💻 coder, 🏳️‍🌈 flag, 🇯🇵🇺🇸🇩🇪 flags",
    "🦙🦙🦙 llamas and 🤖 robots",
    "def main():\n\tprint('tab indented')\n\tif x:\n\t\treturn 42\n",
    "    def f(self):\n        return self.x  # four spaces\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", v);\n}\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 1 << 20); return 0; }",
    "1234567890123456789012345678901234567890",
    "3.14159265358979323846264338327950288419716939937510",
    "line one\r\nline two\r\nline three\r\n",
    "lone\rcarriage\rreturns\r",
    "\r\n\r\n\r\n",
    "\n\n\n\n\n\n\n\n",
    "          ten spaces before",
    "trailing spaces          ",
    " \t \t mixed \t whitespace \t ",
    "Pneumonoultramicroscopicsilicovolcanoconiosis" * 4,
    "a" * 500,
    "\x00\x01\x02\x03\x07\x08\x0b\x0c\x1b\x1f\x7f",
    "bell\x07 escape\x1b[31m red \x1b[0m",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "<|endoftext|><|endoftext|>",
    "text<|endoftext|>more text",
    "<|im_start|",
    "<|im_start",
    "|im_start|>",
    "<|im_start|>>",
    "<<|im_start|>",
    "<|IM_START|>",
    "< |im_start|>",
    "<|extra_0|>",
    "<|extra_204|>",
    "<|extra_205|>",
    "<|extra_3|><|extra_99|>",
    "<|extra_|>",
    "<think>reasoning</think>answer",
    "<tool_call>{\"name\": \"f\"}</tool_call>",
    "<|fim_prefix|>def <|fim_suffix|>\n<|fim_middle|>",
    "<|vision_start|><|image_pad|><|vision_end|>",
    "<|endoftext|>\u0338",
    "<|im_end|>\u0338 composes with > under NFC",
    "caf\u00e9 vs cafe\u0301",
    "\u00c5ngstr\u00f6m vs A\u030angstro\u0308m",
    "\u212b (angstrom sign) \u2126 (ohm sign)",
    "\uac00 vs \u1100\u1161 (hangul jamo)",
    "ﬁ ligature, ＡＢＣ fullwidth, ① circled",
    "x\u0301\u0302\u0303\u0304 stacked marks",
    "e\u0301\u0327 vs e\u0327\u0301",
    "\u0915\u094d\u0937 conjunct",
    "I\u0307 dotted",
    "ſtraße STRASSE",
    "it'S IT'S it'Ll",
    "'s 're 've 'm 'll 'd",
    "don’t (curly apostrophe)",
    "https://example.com/path?query=1&x=y#frag",
    "user@example.com, +1 (555) 123-4567",
    "$100.00 €50 ¥1000 £20",
    "∑∫∂√∞≠≤≥ math",
    "   \n   \n   ",
    "\t\t\t\t",
    "a\u00a0b\u2003c\u3000d",
    "zero\u200bwidth\u200cjoin\u200ders\ufeff",
    "\u2028line separator\u2029paragraph separator",
    "\ufffd replacement char",
    "\U0001f600\U0001f601\U0001f602",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters",
    "Ⅻ roman numeral, ½ ¾ fractions, ²³ superscripts",
    "٠١٢٣٤٥٦٧٨٩ arabic digits",
    "１２３ fullwidth digits",
]

FRAGMENTS = {
    "zh": ["中文", "汉字", "北京欢迎你", "我爱自然语言处理", "模型推理", "，", "。", "“引号”", "《书名》", "量化"],
    "ja": ["こんにちは", "ありがとう", "東京タワー", "ラーメン", "漢字かな交じり文", "、", "。", "ｶﾀｶﾅ"],
    "ko": ["안녕하세요", "감사합니다", "컴퓨터", "한글", "사랑해요"],
    "ar": ["مرحبا", "شكرا", "العربية", "كتاب", "مدرسة", "؟", "،"],
    "emoji": ["😀", "👍🏿", "👨‍👩‍👧", "🏳️‍⚧️", "🇫🇷", "🇧🇷", "❤️", "🧑‍🚀", "✅", "🫠", "🐉"],
    "code": ["\tint x = 0;", "    return y;", "if (a && b) {", "}", "foo.bar()", "x += 1", "// comment",
             "/* block */", "#define N 64", "for i in range(10):", "\t\tpass", "=>", "->", "::", "!=", "==="],
    "digits": ["0", "7", "42", "2024", "65536", "3.14", "1e-9", "000000", "123456789", "9" * 30],
    "ws": [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", " \n", "\n ", "\t\n", "    ", " \r\n "],
    "en": ["hello", "World", "tokenizer", "don't", "THE", "we'll", "Mixed", "CamelCase", "snake_case",
           "kebab-case", "a", "I", "ok", "pre-trained", "state-of-the-art"],
    "punct": [".", ",", "!", "?", "...", "—", "–", "(", ")", "[", "]", "{", "}", "\"", "'", "`", "~", "@", "#"],
    "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|extra_0|>", "<|extra_204|>", "<think>",
                "</think>", "<tool_call>", "<|fim_pad|>"],
    "near": ["<|im_start|", "<|im_end", "|endoftext|>", "<|extra_205|>", "<|extra_-1|>", "<|Endoftext|>",
             "<think", "think>", "<|", "|>", "<||>", "< |endoftext| >"],
    "nfd": ["e\u0301", "a\u0308", "o\u0302", "n\u0303", "\u1100\u1161\u11a8", "A\u030a", "c\u0327"],
    "ctrl": ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f", "\x85", "\u200b", "\ufeff"],
    "misc": ["Ελλάδα", "Россия", "ישראל", "ภาษาไทย", "हिन्दी", "Tiếng Việt", "Ümlaut", "ÆØÅ", "ß", "İstanbul"],
}


def generated(rng: random.Random, n: int) -> list[str]:
    cats = list(FRAGMENTS)
    out = []
    for _ in range(n):
        k = rng.randint(1, 12)
        # Bias each string towards one or two categories so runs of the same script occur.
        main = rng.sample(cats, rng.randint(1, 3))
        parts = []
        for _ in range(k):
            cat = rng.choice(main) if rng.random() < 0.75 else rng.choice(cats)
            frag = rng.choice(FRAGMENTS[cat])
            if rng.random() < 0.1:
                frag = frag * rng.randint(2, 6)
            parts.append(frag)
            r = rng.random()
            if r < 0.45:
                parts.append(" ")
            elif r < 0.55:
                parts.append(rng.choice(FRAGMENTS["ws"]))
        out.append("".join(parts))
    return out


def long_cases(rng: random.Random) -> list[str]:
    out = []
    for n in (16, 64, 257, 1000):
        out.append("".join(rng.choice("0123456789") for _ in range(n)))
        out.append(" " * n + "x")
        out.append("\n" * n)
        out.append(" \n" * (n // 2))
    out.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3000)))
    out.append("超长中文" * 300)
    out.append("🙂" * 200)
    out.append("\t" * 100 + "deep")
    return out


def make_corpus() -> list[str]:
    rng = random.Random(20261125)
    corpus = list(HAND) + long_cases(rng) + generated(rng, 1100)
    seen = set()
    unique = []
    for s in corpus:
        if s not in seen:
            seen.add(s)
            unique.append(s)
    return unique


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_corpus() -> list[str]:
    with open(DATA / "corpus.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def need(path: Path) -> Path:
    if not path.exists():
        sys.exit(f"error: {path} is missing; run scripts/setup.sh")
    return path


def qwen1_encoding():
    import tiktoken

    ranks = {}
    with open(need(ASSETS / "qwen.tiktoken"), "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    specials = {s: QWEN1_SPECIAL_START + i for i, s in enumerate(QWEN1_SPECIALS)}
    return tiktoken.Encoding("Qwen", pat_str=QWEN1_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def qwen1_encode(enc, text: str) -> list[int]:
    return enc.encode(unicodedata.normalize("NFC", text), allowed_special="all", disallowed_special=())


def qwen3_tokenizer():
    return hf_tokenizer("qwen3/tokenizer.json")


def hf_tokenizer(rel: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(need(ASSETS / rel)))


def main() -> None:
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "corpus":
        corpus = make_corpus()
        write_jsonl(DATA / "corpus.jsonl", ({"text": s} for s in corpus))
        print(f"wrote {len(corpus)} strings to {DATA / 'corpus.jsonl'}")
    elif cmd == "golden":
        corpus = read_corpus()
        enc = qwen1_encoding()
        write_jsonl(DATA / "golden_qwen1.jsonl", ({"ids": qwen1_encode(enc, s)} for s in corpus))
        for name, rel in (("qwen3", "qwen3/tokenizer.json"), ("smollm2", "smollm2-hf/tokenizer.json")):
            tok = hf_tokenizer(rel)
            write_jsonl(
                DATA / f"golden_{name}.jsonl",
                ({"ids": tok.encode(s, add_special_tokens=False).ids} for s in corpus),
            )
        print(f"wrote goldens for {len(corpus)} strings to {DATA}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
