#!/usr/bin/env python3
"""Writes the committed test fixtures: tiny random Hugging Face Qwen checkpoints and transformers references.

    /path/to/torchvenv/bin/python scripts/make_fixtures.py      # needs scripts/requirements-fixtures.txt

Never run at test time (needs torch + transformers). Deterministic: weights come from numpy's default_rng with a
fixed seed per model, not from torch's initialisers, so a rerun with the pinned versions rewrites the same files.

tests/fixtures/hf/<name>/   the checkpoint as a user would download it (config.json, safetensors, tokenizer files)
tests/fixtures/ref/<name>/
  ids.json                  JSON list of token ids (made with the fixture's own tokenizer from meta.json "text")
  logits.npy                float32 [n_ids, vocab_size]: transformers float32 forward on the stored weights
  floor_<type>.npy          float32 [n_ids, vocab_size] for q8_0 q4_0 q4_1 q5_0 q5_1: the same forward after
                            (a) every 2-D weight is quantized and dequantized with gguf.quants (the reference
                            quantizer of the PyPI gguf package) following the type policy of quant-formats/FORMAT.md
                            (1-D f32; output matrix, or token_embd when tied, q8_0; a row length not a multiple of
                            32 -> f16), and (b) the input of every linear layer rounded as ggml's CPU matmul does:
                            to q8_0 blocks of 32 along the input dim for q8_0/q4_0/q5_0 weights, q8_1 for q4_1/q5_1
                            (the same values, and the dot uses q8_1's f16 block sum s for the weight minimum
                            term exactly as ggml_vec_dot_q4_1_q8_1), to f16 for f16 weights.
  meta.json                 text, shapes, source dtype, per-type KL(ref || floor) and top-1 agreement
qwen1 also gets ids_long.json / logits_long.npy: a sequence longer than its seq_length, where Qwen-1's dynamic
NTK and logn attention are active; that reference comes from the Qwen-1 forward written below (modeling_qwen.py
semantics), since transformers has no Qwen-1.

Models (GQA ratios 1, 2, 3; heads*head_dim != hidden for qwen3; one model with widths not multiple of 32):
  qwen2_gqa2          Qwen2, untied, f32 source, q/k/v biases, sliding-window fields (unused), torch_dtype style
  qwen2_gqa3_sharded  Qwen2, tied, bf16 source, 2 shards + index, transformers-5 style (dtype, rope_parameters)
  qwen2_odd           Qwen2, hidden 40, 5 heads of 8, ffn 72, f16 source
  qwen3_a             Qwen3, hidden 64, 4 heads of 32 (128 != 64), GQA 1, f16 source, untied
  qwen3_gqa2          Qwen3, hidden 96, 4 heads of 32, GQA 2, tied, bf16 source
  qwen1               Qwen-1 (QWenLMHeadModel) made by renaming a Qwen2 model with kv heads == heads; bf16 source
"""

from __future__ import annotations

import base64
import copy
import json
import math
import shutil
import sys
import unicodedata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as GT
from gguf import quants
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
QUANT_TYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]
GGML = {"q8_0": GT.Q8_0, "q4_0": GT.Q4_0, "q4_1": GT.Q4_1, "q5_0": GT.Q5_0, "q5_1": GT.Q5_1}
TORCH_DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Qwen2's pre-tokenizer regex (tokenizer.json of Qwen2/2.5/3), also Qwen-1's tiktoken pat_str.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Words whose byte sequences get merged, left to right: the tiny BPE vocabulary is 256 bytes + these pieces.
WORDS = ["Hello", " world", " the", " capital", " of", " France", " is", " Paris", "user", " model", "你好", "\n\n"]
TEXT = "<|im_start|>user\nHello world, the capital of France is Paris.<|im_end|>"
TEXT_QWEN1 = "<|im_start|>user\n你好 world, the capital of France is 42.<|im_end|>"
TEXT_LONG = (
    "Hello world! The capital of France is Paris, and Paris is the capital of the model world. "
    "你好, world: 12345 is a number of the model."
)


class FixtureError(Exception):
    pass


# ------------------------------------------------------------------------------------------------ tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the alphabet of byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_bpe() -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """Ranks (token bytes in id order) and merges (pairs in rank order) of the tiny vocabulary."""
    b2u = bytes_to_unicode()
    ranks = [bytes([b]) for b in b2u]  # GPT-2 / Qwen order: printable bytes first
    seen = set(ranks)
    merges = []
    for word in WORDS:
        raw = word.encode()
        cur = raw[:1]
        for i in range(1, len(raw)):
            nxt = cur + raw[i : i + 1]
            if nxt not in seen:
                seen.add(nxt)
                ranks.append(nxt)
                merges.append((cur, raw[i : i + 1]))
            cur = nxt
    return ranks, merges


def hf_tokenizer_files(ranks, merges, extra_added: list[tuple[str, bool]], merges_as_pairs: bool):
    """tokenizer.json + tokenizer_config.json in Qwen2's structure (NFC, Qwen regex split, byte-level BPE)."""
    b2u = bytes_to_unicode()

    def u(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {u(t): i for i, t in enumerate(ranks)}
    merge_list = [[u(a), u(b)] if merges_as_pairs else f"{u(a)} {u(b)}" for a, b in merges]
    added = []
    for j, (content, special) in enumerate([(s, True) for s in SPECIALS] + extra_added):
        added.append(
            {
                "id": len(ranks) + j,
                "content": content,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": special,
            }
        )
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN_PATTERN}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merge_list,
        },
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for a in added
        },
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": CHATML,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    return tok, config


def tiktoken_encode(ranks: list[bytes], text: str) -> list[int]:
    """Qwen-1's tokenizer (tiktoken, NFC, specials allowed) on the tiny ranks."""
    import tiktoken

    n = len(ranks)
    specials = {s: n + i for i, s in enumerate(SPECIALS + [f"<|extra_{i}|>" for i in range(205)])}
    enc = tiktoken.Encoding(
        "qwen-tiny", pat_str=QWEN_PATTERN, mergeable_ranks={t: i for i, t in enumerate(ranks)}, special_tokens=specials
    )
    return enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")


# ------------------------------------------------------------------------------------------------ models

MODELS = [
    dict(name="qwen2_gqa2", arch="qwen2", hidden=64, heads=4, kv=2, head_dim=16, ffn=96, layers=2, vocab=384,
         tied=False, dtype="float32", style="torch_dtype", theta=50000.0, eps=1e-6, sliding=True, gen="qwen2", seed=11),
    dict(name="qwen2_gqa3_sharded", arch="qwen2", hidden=96, heads=6, kv=2, head_dim=16, ffn=160, layers=3, vocab=416,
         tied=True, dtype="bfloat16", style="dtype", theta=1000000.0, eps=1e-6, shards=2, seed=12),
    dict(name="qwen2_odd", arch="qwen2", hidden=40, heads=5, kv=5, head_dim=8, ffn=72, layers=2, vocab=392,
         tied=False, dtype="float16", style="torch_dtype", theta=10000.0, eps=1e-5, seed=13),
    dict(name="qwen3_a", arch="qwen3", hidden=64, heads=4, kv=4, head_dim=32, ffn=128, layers=2, vocab=384,
         tied=False, dtype="float16", style="dtype", theta=1000000.0, eps=1e-6, seed=14),
    dict(name="qwen3_gqa2", arch="qwen3", hidden=96, heads=4, kv=2, head_dim=32, ffn=160, layers=2, vocab=448,
         tied=True, dtype="bfloat16", style="torch_dtype", theta=1000000.0, eps=1e-6, gen="qwen3", seed=15),
    dict(name="qwen1", arch="qwen", hidden=64, heads=4, kv=4, head_dim=16, ffn=96, layers=2, vocab=544,
         tied=False, dtype="bfloat16", theta=10000.0, eps=1e-6, seq_length=16, gen="qwen1", seed=16),
]


def hf_config(m: dict, n_tok: int) -> dict:
    """config.json of a Qwen2/Qwen3 fixture, in the torch_dtype (transformers 4) or dtype (5) style."""
    arch = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[m["arch"]]
    c = {
        "architectures": [arch],
        "model_type": m["arch"],
        "attention_dropout": 0.0,
        "bos_token_id": n_tok,
        "eos_token_id": n_tok + 2,
        "hidden_act": "silu",
        "hidden_size": m["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": m["ffn"],
        "max_position_embeddings": 128,
        "num_attention_heads": m["heads"],
        "num_hidden_layers": m["layers"],
        "num_key_value_heads": m["kv"],
        "rms_norm_eps": m["eps"],
        "tie_word_embeddings": m["tied"],
        "use_cache": True,
        "vocab_size": m["vocab"],
    }
    if m["arch"] == "qwen3":
        c["head_dim"] = m["head_dim"]
        c["attention_bias"] = False
    c["use_sliding_window"] = False
    if m.get("sliding"):
        c["sliding_window"] = 32
        c["max_window_layers"] = 1
    if m["style"] == "torch_dtype":
        c["torch_dtype"] = m["dtype"]
        c["rope_theta"] = m["theta"]
        c["rope_scaling"] = None
        c["transformers_version"] = "4.45.0"
    else:
        c["dtype"] = m["dtype"]
        c["rope_parameters"] = {"rope_theta": m["theta"], "rope_type": "default"}
        c["transformers_version"] = "5.0.0"
    return c


def generation_config(kind: str, n_tok: int) -> dict:
    eot, im_end = n_tok, n_tok + 2
    if kind == "qwen2":  # like Qwen2.5-Instruct
        return {"bos_token_id": eot, "do_sample": True, "eos_token_id": [im_end, eot], "pad_token_id": eot,
                "repetition_penalty": 1.05, "temperature": 0.7, "top_k": 20, "top_p": 0.8}
    if kind == "qwen3":  # like Qwen3 (thinking defaults)
        return {"bos_token_id": eot, "do_sample": True, "eos_token_id": [im_end, eot], "pad_token_id": eot,
                "temperature": 0.6, "top_k": 20, "top_p": 0.95}
    # Qwen-1-Chat
    return {"chat_format": "chatml", "do_sample": True, "eos_token_id": eot, "max_new_tokens": 512,
            "max_window_size": 6144, "pad_token_id": eot, "repetition_penalty": 1.1, "top_k": 0, "top_p": 0.8}


def fill_weights(model: torch.nn.Module, m: dict) -> None:
    """Deterministic weights at scales that give logits with a real spread (std ~3), norms/biases not 0/1,
    rounded to the source dtype so the float32 reference sees exactly the stored values."""
    rng = np.random.default_rng(m["seed"])
    dt = TORCH_DTYPE[m["dtype"]]
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            shape = tuple(p.shape)
            if name.endswith("norm.weight"):
                v = rng.uniform(0.6, 1.4, size=shape)
            elif name.endswith(".bias"):
                v = rng.normal(0.0, 0.3, size=shape)
            elif name.endswith("embed_tokens.weight"):
                v = rng.normal(0.0, 0.4 if m["tied"] else 1.0, size=shape)
            elif name.endswith("lm_head.weight"):
                v = rng.normal(0.0, 3.0 / math.sqrt(shape[1]), size=shape)
            elif p.dim() == 2:
                v = rng.normal(0.0, 1.0 / math.sqrt(shape[1]), size=shape)
            else:
                raise FixtureError(f"no initialisation rule for parameter {name} {shape}")
            p.copy_(torch.from_numpy(v.astype(np.float32)).to(dt).to(torch.float32))


def state_dict_for_save(model: torch.nn.Module, m: dict) -> dict[str, torch.Tensor]:
    dt = TORCH_DTYPE[m["dtype"]]
    sd = {}
    for k, v in model.state_dict().items():
        if m["tied"] and k == "lm_head.weight":
            continue  # tied: HF checkpoints store only the embedding
        sd[k] = v.detach().to(dt).contiguous().clone()
    return sd


def save_sharded(sd: dict[str, torch.Tensor], out: Path, n_shards: int) -> None:
    names = list(sd)
    per = math.ceil(len(names) / n_shards)
    weight_map, total = {}, 0
    for s in range(n_shards):
        fname = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: sd[k] for k in names[s * per : (s + 1) * per]}
        save_file(part, str(out / fname), metadata={"format": "pt"})
        for k, v in part.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
    dump_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


def dump_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


@torch.no_grad()
def run(model: torch.nn.Module, ids: list[int]) -> np.ndarray:
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].to(torch.float32).numpy()  # [n_ids, vocab]


def load_hf(path: Path) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model


# ------------------------------------------------------------------------------------------------ floors


def weight_type(name: str, shape: tuple[int, ...], qtype: str, tied: bool) -> str:
    """The type quant-formats' policy gives an HF weight in a `qtype` file (HF shape [out, in])."""
    is_output = name == "lm_head.weight" or (tied and name.endswith("embed_tokens.weight"))
    t = "q8_0" if is_output else qtype
    if shape[-1] % 32 != 0:
        t = "f16"
    return t


def round_weight(w: torch.Tensor, t: str) -> torch.Tensor:
    if t == "f16":
        return w.to(torch.float16).to(torch.float32)
    a = w.detach().to(torch.float32).numpy()
    q = quants.quantize(a, GGML[t])
    return torch.from_numpy(np.ascontiguousarray(quants.dequantize(q, GGML[t]), dtype=np.float32).reshape(a.shape))


def round_activation(x: torch.Tensor, wtype: str) -> torch.Tensor:
    """What ggml's CPU matmul does to the input of a weight of type wtype (vec_dot_type)."""
    if wtype == "f16":
        return x.to(torch.float16).to(x.dtype)
    # q8_0 for q8_0/q4_0/q5_0, q8_1 for q4_1/q5_1: same scale d = amax/127 and same rounded values
    # (q8_1's extra sum term is handled by q8_1_correction).
    a = x.detach().to(torch.float32).numpy()
    flat = a.reshape(-1, a.shape[-1])
    q = quants.dequantize(quants.quantize(flat, GT.Q8_0), GT.Q8_0)
    return torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32).reshape(a.shape)).to(x.dtype)


def block_mins(w: torch.Tensor, t: str) -> np.ndarray:
    """The f16 minimum m of every block of a q4_1/q5_1 weight: [out, in/32] (bytes 2..4 of each block)."""
    a = w.detach().to(torch.float32).numpy()
    q = quants.quantize(a, GGML[t])
    q = q.reshape(a.shape[0], a.shape[1] // 32, -1)
    return np.ascontiguousarray(q[..., 2:4]).view(np.float16)[..., 0].astype(np.float64)


def q8_1_correction(x: torch.Tensor, mins: np.ndarray) -> torch.Tensor:
    """ggml's q4_1/q5_1 dot is sum_b d_w d_x sumi + m_b s_b with q8_1's s = f16(sum(codes) * d), d the unrounded
    f32 amax/127 (quantize_row_q8_1_ref). The rounded-activation matmul gives m_b d16 sum(codes) instead; this is
    the difference, sum_b m_b (s_b - d16_b sum_b(codes)) per output: [..., out]."""
    a = x.detach().to(torch.float32).numpy()
    flat = a.reshape(-1, a.shape[-1])
    n, nb = flat.shape[0], flat.shape[1] // 32
    d32 = (np.abs(flat.reshape(n, nb, 32)).max(-1) / np.float32(127.0)).astype(np.float32)
    q = quants.quantize(flat, GT.Q8_0).reshape(n, nb, 34)
    d16 = np.ascontiguousarray(q[..., 0:2]).view(np.float16)[..., 0].astype(np.float64)
    sumq = np.ascontiguousarray(q[..., 2:]).view(np.int8).astype(np.int64).sum(-1)
    s16 = (sumq.astype(np.float32) * d32).astype(np.float16).astype(np.float64)
    corr = (s16 - d16 * sumq) @ mins.T  # [n, out]
    return torch.from_numpy(corr.astype(np.float32)).reshape(*a.shape[:-1], mins.shape[0]).to(x.dtype)


@torch.no_grad()
def floor_logits(model: torch.nn.Module, ids: list[int], qtype: str, tied: bool) -> tuple[np.ndarray, dict]:
    """Logits of ggml's CPU computation on a `qtype` file: dequantized weights, rounded linear inputs, and for
    q4_1/q5_1 weights q8_1's f16 block sums. Checked once by hand against an integer emulation of ggml's dot
    products: equal to ~1e-5, except where a 7th-digit difference flips one activation code (then ~0.1)."""
    fm = copy.deepcopy(model)
    linears = []  # (module, weight type, block minimums for _1 types), taken before the weights are rounded
    for mname, mod in fm.named_modules():
        if isinstance(mod, torch.nn.Linear):
            wt = weight_type(mname + ".weight", tuple(mod.weight.shape), qtype, tied)
            mins = block_mins(mod.weight, wt) if wt in ("q4_1", "q5_1") else None
            linears.append((mod, wt, mins))
    types: dict[str, str] = {}
    done = set()
    for name, p in fm.named_parameters():
        if p.dim() != 2 or id(p) in done:
            continue
        done.add(id(p))
        t = weight_type(name, tuple(p.shape), qtype, tied)
        types[name] = t
        p.copy_(round_weight(p, t))
    hooks = []
    for mod, wt, mins in linears:
        if mins is None:
            hooks.append(mod.register_forward_pre_hook(lambda _m, args, wt=wt: (round_activation(args[0], wt),)))
        else:
            def pre(m_, args, wt=wt):
                m_.raw_input = args[0]
                return (round_activation(args[0], wt),)

            def post(m_, _args, out, mins=mins):
                return out + q8_1_correction(m_.raw_input, mins)

            hooks.append(mod.register_forward_pre_hook(pre))
            hooks.append(mod.register_forward_hook(post))
    logits = run(fm, ids)
    for h in hooks:
        h.remove()
    return logits, types


def kl_top1(ref: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    lp = torch.log_softmax(torch.from_numpy(ref).double(), -1)
    lq = torch.log_softmax(torch.from_numpy(other).double(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1).mean().item()
    top1 = float((ref.argmax(-1) == other.argmax(-1)).mean())
    return kl, top1


# ------------------------------------------------------------------------------------------------ Qwen-1


def qwen2_to_qwen1(sd: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Qwen2 (kv heads == heads) names -> Qwen-1 names; c_attn = concat(q, k, v) along the output dim."""
    out = {
        "transformer.wte.weight": sd["model.embed_tokens.weight"],
        "transformer.ln_f.weight": sd["model.norm.weight"],
        "lm_head.weight": sd["lm_head.weight"],
    }
    for i in range(n_layer):
        p, q = f"model.layers.{i}.", f"transformer.h.{i}."
        out[q + "ln_1.weight"] = sd[p + "input_layernorm.weight"]
        out[q + "attn.c_attn.weight"] = torch.cat([sd[p + f"self_attn.{x}_proj.weight"] for x in "qkv"], 0)
        out[q + "attn.c_attn.bias"] = torch.cat([sd[p + f"self_attn.{x}_proj.bias"] for x in "qkv"], 0)
        out[q + "attn.c_proj.weight"] = sd[p + "self_attn.o_proj.weight"]
        out[q + "ln_2.weight"] = sd[p + "post_attention_layernorm.weight"]
        out[q + "mlp.w1.weight"] = sd[p + "mlp.up_proj.weight"]
        out[q + "mlp.w2.weight"] = sd[p + "mlp.gate_proj.weight"]
        out[q + "mlp.c_proj.weight"] = sd[p + "mlp.down_proj.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}


@torch.no_grad()
def qwen1_forward(w: dict[str, torch.Tensor], cfg: dict, ids: list[int]) -> np.ndarray:
    """Qwen-1's forward (modeling_qwen.py, QWenLMHeadModel, inference, no cache, one sequence) in float32,
    written independently of transformers: RMSNorm, fused c_attn with bias, rotate-half RoPE with dynamic NTK,
    logn attention scaling, causal softmax attention, c_proj, MLP c_proj(w1(x) * silu(w2(x))), ln_f, lm_head."""
    w = {k: v.to(torch.float32) for k, v in w.items()}
    hidden, n_head = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = cfg["kv_channels"]
    eps = cfg["layer_norm_epsilon"]
    seq_length = cfg["seq_length"]
    T = len(ids)

    def rms(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g

    # Rotary: dim = kv_channels * rotary_pct; dynamic NTK scales the base when the sequence exceeds seq_length.
    dim = hd if cfg["rotary_pct"] == 1.0 else int(hd * cfg["rotary_pct"])
    ntk_alpha = 1.0
    if cfg["use_dynamic_ntk"]:
        context_value = math.log(T / seq_length, 2) + 1
        ntk_alpha = max(2 ** math.ceil(context_value) - 1, 1)
    base = cfg["rotary_emb_base"] * ntk_alpha ** (dim / (dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
    freqs = torch.outer(torch.arange(T).float(), inv_freq)
    emb = torch.cat([freqs, freqs], -1)  # [T, dim]
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]  # [T, 1, dim]

    def rope(t):  # t: [T, n_head, hd]
        t_rot, t_pass = t[..., :dim], t[..., dim:]
        x1, x2 = t_rot[..., : dim // 2], t_rot[..., dim // 2 :]
        t_rot = t_rot * cos + torch.cat([-x2, x1], -1) * sin
        return torch.cat([t_rot, t_pass], -1)

    # logn: positions (1-based) beyond seq_length scale the query by log_seq_length(position).
    logn = torch.tensor([math.log(i, seq_length) if i > seq_length else 1.0 for i in range(1, T + 1)])
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))

    h = w["transformer.wte.weight"][torch.tensor(ids)]  # [T, hidden]
    for i in range(cfg["num_hidden_layers"]):
        p = f"transformer.h.{i}."
        x = rms(h, w[p + "ln_1.weight"])
        qkv = x @ w[p + "attn.c_attn.weight"].T + w[p + "attn.c_attn.bias"]  # [T, 3*hidden]
        q, k, v = qkv.split(hidden, -1)
        q, k, v = (t.view(T, n_head, hd) for t in (q, k, v))
        q, k = rope(q), rope(k)
        if cfg["use_logn_attn"] and T > seq_length:
            q = q * logn[:, None, None]
        att = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
        att = att.masked_fill(~causal, torch.finfo(att.dtype).min).softmax(-1)
        o = torch.einsum("hqk,khd->qhd", att, v).reshape(T, hidden)
        h = h + o @ w[p + "attn.c_proj.weight"].T
        x = rms(h, w[p + "ln_2.weight"])
        a1 = x @ w[p + "mlp.w1.weight"].T
        a2 = x @ w[p + "mlp.w2.weight"].T
        h = h + (a1 * F.silu(a2)) @ w[p + "mlp.c_proj.weight"].T
    h = rms(h, w["transformer.ln_f.weight"])
    return (h @ w["lm_head.weight"].T).numpy()


def qwen1_config(m: dict) -> dict:
    return {
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {
            "AutoConfig": "configuration_qwen.QWenConfig",
            "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel",
        },
        "model_type": "qwen",
        "attn_dropout_prob": 0.0,
        "bf16": m["dtype"] == "bfloat16",
        "emb_dropout_prob": 0.0,
        "fp16": m["dtype"] == "float16",
        "fp32": m["dtype"] == "float32",
        "hidden_size": m["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": 2 * m["ffn"],  # Qwen-1 stores twice the real FFN width
        "kv_channels": m["head_dim"],
        "layer_norm_epsilon": m["eps"],
        "max_position_embeddings": 128,
        "no_bias": True,
        "num_attention_heads": m["heads"],
        "num_hidden_layers": m["layers"],
        "rotary_emb_base": m["theta"],
        "rotary_pct": 1.0,
        "scale_attn_weights": True,
        "seq_length": m["seq_length"],
        "tie_word_embeddings": False,
        "tokenizer_class": "QWenTokenizer",
        "torch_dtype": m["dtype"],
        "transformers_version": "4.32.0",
        "use_cache": True,
        "use_dynamic_ntk": True,
        "use_flash_attn": "auto",
        "use_logn_attn": True,
        "vocab_size": m["vocab"],
    }


# ------------------------------------------------------------------------------------------------ driver


def write_floors(model, ids, ref, m, ref_dir: Path, meta: dict) -> None:
    meta["floor"] = {}
    for qt in QUANT_TYPES:
        fl, types = floor_logits(model, ids, qt, m["tied"])
        np.save(ref_dir / f"floor_{qt}.npy", fl.astype(np.float32))
        kl, top1 = kl_top1(ref, fl)
        meta["floor"][qt] = {"kl_mean": kl, "top1": top1, "weight_types": types}
        print(f"  floor {qt}: KL {kl:.5f}  top-1 {top1:.3f}", file=sys.stderr)


def make_qwen2_or_3(m, ranks, merges) -> None:
    hf_dir, ref_dir = FIXTURES / "hf" / m["name"], FIXTURES / "ref" / m["name"]
    for d in (hf_dir, ref_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    n_tok = len(ranks)
    extra = [("<think>", False), ("</think>", False)] if m["arch"] == "qwen3" else []
    tok, tok_cfg = hf_tokenizer_files(ranks, merges, extra, merges_as_pairs=m["arch"] == "qwen3")
    if n_tok + len(SPECIALS) + len(extra) > m["vocab"]:
        raise FixtureError(f"{m['name']}: vocab_size {m['vocab']} < {n_tok + len(SPECIALS) + len(extra)} tokens")
    dump_json(hf_dir / "tokenizer_config.json", tok_cfg)
    with open(hf_dir / "tokenizer.json", "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False, indent=2)
    cfg = hf_config(m, n_tok)
    dump_json(hf_dir / "config.json", cfg)
    if m.get("gen"):
        dump_json(hf_dir / "generation_config.json", generation_config(m["gen"], n_tok))

    ids = Tokenizer.from_file(str(hf_dir / "tokenizer.json")).encode(TEXT, add_special_tokens=False).ids
    if ids != tiktoken_encode(ranks, TEXT):
        raise FixtureError(f"{m['name']}: tokenizer.json and tiktoken disagree on {TEXT!r}")

    config = AutoConfig.from_pretrained(str(hf_dir))
    if config.rope_parameters["rope_theta"] != m["theta"]:
        raise FixtureError(f"{m['name']}: transformers read rope_theta {config.rope_parameters} from {cfg}")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager").eval()
    fill_weights(model, m)
    mem_logits = run(model, ids)
    sd = state_dict_for_save(model, m)
    if m.get("shards"):
        save_sharded(sd, hf_dir, m["shards"])
    else:
        save_file(sd, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})

    loaded = load_hf(hf_dir)  # the reference is what transformers makes of the files on disk
    ref = run(loaded, ids)
    if not np.allclose(ref, mem_logits, atol=1e-5, rtol=0):
        raise FixtureError(f"{m['name']}: reloaded model differs from the one written by {np.abs(ref - mem_logits).max()}")
    dump_json(ref_dir / "ids.json", ids)
    np.save(ref_dir / "logits.npy", ref.astype(np.float32))
    meta = {"text": TEXT, "n_ids": len(ids), "vocab_size": m["vocab"], "n_tokenizer_tokens": n_tok + len(SPECIALS) + len(extra),
            "source_dtype": m["dtype"], "arch": m["arch"], "tied": m["tied"], "logits_absmax": float(np.abs(ref).max()),
            "logits_std": float(ref.std())}
    print(f"{m['name']}: ids {len(ids)}, logits {ref.shape}, |max| {meta['logits_absmax']:.2f}", file=sys.stderr)
    write_floors(loaded, ids, ref, m, ref_dir, meta)
    dump_json(ref_dir / "meta.json", meta)


def make_qwen1(m, ranks, merges) -> None:
    hf_dir, ref_dir = FIXTURES / "hf" / m["name"], FIXTURES / "ref" / m["name"]
    for d in (hf_dir, ref_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    n_tok = len(ranks)
    n_all = n_tok + len(SPECIALS) + 205
    if n_all > m["vocab"]:
        raise FixtureError(f"qwen1: vocab_size {m['vocab']} < {n_all} tokens (ranks + 3 specials + 205 extras)")
    with open(hf_dir / "qwen.tiktoken", "w", encoding="ascii") as f:
        for i, t in enumerate(ranks):
            f.write(f"{base64.b64encode(t).decode()} {i}\n")
    dump_json(hf_dir / "tokenizer_config.json", {
        "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]},
        "model_max_length": 8192,
        "tokenizer_class": "QWenTokenizer",
    })
    cfg = qwen1_config(m)
    dump_json(hf_dir / "config.json", cfg)
    dump_json(hf_dir / "generation_config.json", generation_config("qwen1", n_tok))

    # The Qwen2 twin: kv heads == heads, same hyperparameters.
    q2 = Qwen2Config(vocab_size=m["vocab"], hidden_size=m["hidden"], intermediate_size=m["ffn"],
                     num_hidden_layers=m["layers"], num_attention_heads=m["heads"], num_key_value_heads=m["heads"],
                     max_position_embeddings=128, rms_norm_eps=m["eps"], tie_word_embeddings=False,
                     rope_parameters={"rope_type": "default", "rope_theta": m["theta"]}, use_sliding_window=False)
    twin = Qwen2ForCausalLM._from_config(q2, dtype=torch.float32, attn_implementation="eager").eval()
    fill_weights(twin, m)
    sd = state_dict_for_save(twin, m)
    save_file(qwen2_to_qwen1(sd, m["layers"]), str(hf_dir / "model.safetensors"), metadata={"format": "pt"})

    ids = tiktoken_encode(ranks, TEXT_QWEN1)
    if len(ids) > m["seq_length"]:
        raise FixtureError(f"qwen1: {len(ids)} ids exceed seq_length {m['seq_length']}; the Qwen2 twin has no NTK/logn")
    ref = run(twin, ids)
    # Proof that the renaming is the same function: Qwen-1's forward on the file just written.
    on_disk = load_file(str(hf_dir / "model.safetensors"))
    q1 = qwen1_forward(on_disk, cfg, ids)
    err = float(np.abs(q1 - ref).max())
    if err > 1e-5:
        raise FixtureError(f"qwen1: Qwen-1 forward on the renamed weights differs from Qwen2's by {err} (> 1e-5)")
    print(f"qwen1: Qwen-1 forward == Qwen2 twin within {err:.2e}", file=sys.stderr)
    dump_json(ref_dir / "ids.json", ids)
    np.save(ref_dir / "logits.npy", ref.astype(np.float32))

    ids_long = tiktoken_encode(ranks, TEXT_LONG)
    if len(ids_long) <= 2 * m["seq_length"]:
        raise FixtureError(f"qwen1: long text has {len(ids_long)} ids, want > {2 * m['seq_length']}")
    long_logits = qwen1_forward(on_disk, cfg, ids_long)
    dump_json(ref_dir / "ids_long.json", ids_long)
    np.save(ref_dir / "logits_long.npy", long_logits.astype(np.float32))
    ctx = math.log(len(ids_long) / m["seq_length"], 2) + 1
    meta = {"text": TEXT_QWEN1, "n_ids": len(ids), "vocab_size": m["vocab"], "n_tokenizer_tokens": n_all,
            "source_dtype": m["dtype"], "arch": "qwen", "tied": False, "logits_absmax": float(np.abs(ref).max()),
            "logits_std": float(ref.std()), "qwen1_vs_qwen2_max_abs_diff": err,
            "long": {"text": TEXT_LONG, "n_ids": len(ids_long), "seq_length": m["seq_length"],
                     "ntk_alpha": max(2 ** math.ceil(ctx) - 1, 1),
                     "note": "whole sequence in one forward from position 0; Qwen-1 semantics (modeling_qwen.py)"}}
    print(f"qwen1: ids {len(ids)}, long ids {len(ids_long)}, |max| {meta['logits_absmax']:.2f}", file=sys.stderr)
    write_floors(twin, ids, ref, m, ref_dir, meta)  # c_attn rows = q,k,v rows: same blocks as the twin's
    dump_json(ref_dir / "meta.json", meta)


def main() -> int:
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    ranks, merges = build_bpe()
    print(f"tokenizer: {len(ranks)} BPE tokens ({len(merges)} merges) + {len(SPECIALS)} specials", file=sys.stderr)
    only = set(sys.argv[1:])
    try:
        for m in MODELS:
            if only and m["name"] not in only:
                continue
            if m["arch"] == "qwen":
                make_qwen1(m, ranks, merges)
            else:
                make_qwen2_or_3(m, ranks, merges)
    except FixtureError as e:
        print(f"error: make_fixtures: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
