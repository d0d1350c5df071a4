#!/usr/bin/env python3
"""Turn llama.cpp's SmolLM2-135M-Instruct GGUF (llama architecture) into a Hugging Face Qwen2 folder.

    python scripts/smollm2_to_hf.py assets/SmolLM2-135M-Instruct.Q4_1.gguf assets/smollm2-hf

Needs numpy + gguf only (no torch: CI runs it). What it does:
  * dequantizes every tensor with the gguf package (gguf.quants.dequantize) to float32, so the folder holds
    exactly the values the GGUF file holds (a Q4_1 value d*q+m is not always an f16, hence f32);
  * undoes llama.cpp's q/k row permutation (convert_hf_to_gguf.py `LlamaModel.permute`, which turns HF's
    rotate-half RoPE pairing into ggml's adjacent-pair one); the qwen2 architecture uses NEOX RoPE, which is
    HF's rotate-half, so un-permuted weights are what a Qwen2 model needs;
  * writes model.safetensors with Qwen2 names and ZERO q/k/v biases (a llama block is a Qwen2 block whose
    biases are zero), config.json (Qwen2ForCausalLM), tokenizer.json (byte-level BPE from
    tokenizer.ggml.tokens/merges with SmolLM2's pre-tokenizer), tokenizer_config.json (chat template and
    special tokens from the metadata) and generation_config.json.
The folder is written under OUT.tmp and renamed into place, so a present OUT is complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType, GGUFReader
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit(f"error: smollm2_to_hf: the gguf package is missing ({e}); run scripts/setup.sh")


class ConvertError(Exception):
    pass


def field(reader: GGUFReader, key: str, required: bool = True):
    f = reader.fields.get(key)
    if f is None:
        if required:
            raise ConvertError(f"metadata key {key} is missing")
        return None
    return f.contents()


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's LlamaModel.permute.

    permute: W.reshape(n_head, 2, hd/2, in).swapaxes(1, 2).reshape(W.shape) — row j*hd/2+i of a head
    (rotate-half order) goes to row 2*i+j (interleaved order). The inverse reads the rows back as
    (n_head, hd/2, 2, in) and swaps the same two axes. For k, llama.cpp passes n_head_kv as n_head.
    """
    rows = w.shape[0]
    if rows % (2 * n_head) != 0:
        raise ConvertError(f"cannot unpermute {rows} rows over {n_head} heads (needs a multiple of {2 * n_head})")
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute (convert_hf_to_gguf.py), used only to prove unpermute inverts it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequant(t) -> np.ndarray:
    """A GGUF tensor as float32 in numpy (HF) order: [ne1, ne0] for a matrix."""
    shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # ggml dims are innermost first
    if t.tensor_type == GGMLQuantizationType.F32:
        arr = np.asarray(t.data, dtype=np.float32)
    else:
        arr = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32, copy=False)
    if arr.size != int(np.prod(shape)):
        raise ConvertError(f"tensor {t.name}: {arr.size} values after dequantization, shape {shape} needs {int(np.prod(shape))}")
    return arr.reshape(shape)


class ZeroBias:
    """A bias of n zeros (llama has no q/k/v biases, Qwen2 does)."""

    def __init__(self, n: int):
        self.n = n


LAYER_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GLOBAL_MAP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def hf_name(name: str, n_layer: int) -> str:
    if name in GLOBAL_MAP:
        return GLOBAL_MAP[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER_MAP:
        il = int(parts[1])
        if il >= n_layer:
            raise ConvertError(f"tensor {name}: layer {il} but llama.block_count is {n_layer}")
        return f"model.layers.{il}.{LAYER_MAP[parts[2]]}"
    raise ConvertError(f"tensor {name} has no Qwen2 counterpart (unsupported in a llama file)")


class SafetensorsWriter:
    """Streams float32 tensors into one .safetensors file (header first, then data in declared order),
    so that peak memory is one tensor, not the model."""

    def __init__(self, path: Path, specs: list[tuple[str, tuple[int, ...]]], metadata: dict[str, str]):
        header: dict[str, object] = {"__metadata__": metadata}
        offset = 0
        self.order = []
        for name, shape in specs:
            n = 4 * int(np.prod(shape)) if shape else 4
            header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
            self.order.append((name, shape))
            offset += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data section 8-byte aligned
        self.f = open(path, "wb")
        self.f.write(struct.pack("<Q", len(raw)))
        self.f.write(raw)
        self.next = 0

    def write(self, name: str, arr: np.ndarray) -> None:
        want_name, want_shape = self.order[self.next]
        if name != want_name or tuple(arr.shape) != tuple(want_shape):
            raise ConvertError(f"safetensors writer: got {name}{arr.shape}, expected {want_name}{want_shape}")
        self.f.write(np.ascontiguousarray(arr, dtype="<f4").tobytes())
        self.next += 1

    def close(self) -> None:
        if self.next != len(self.order):
            raise ConvertError(f"safetensors writer: wrote {self.next} of {len(self.order)} tensors")
        self.f.close()


def tokenizer_files(reader: GGUFReader, n_ctx: int) -> tuple[dict, dict, dict]:
    model = field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ConvertError(f"tokenizer.ggml.model is {model!r}; only 'gpt2' (byte-level BPE) is supported")
    tokens = list(field(reader, "tokenizer.ggml.tokens"))
    types = [int(x) for x in field(reader, "tokenizer.ggml.token_type")]
    merges = list(field(reader, "tokenizer.ggml.merges"))
    if len(types) != len(tokens):
        raise ConvertError(f"{len(tokens)} tokens but {len(types)} token types")
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if tok in vocab:
            raise ConvertError(f"token {tok!r} appears twice (ids {vocab[tok]} and {i})")
        vocab[tok] = i
    for m in merges:
        a, sep, b = m.partition(" ")
        if not sep or a not in vocab or b not in vocab or a + b not in vocab:
            raise ConvertError(f"merge {m!r} does not join two tokens of the vocabulary into a third")

    # 3 = control, 4 = user-defined: both are added tokens in HF; control ones are "special".
    added = [
        {
            "id": i,
            "content": tokens[i],
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": types[i] == 3,
        }
        for i in range(len(tokens))
        if types[i] in (3, 4)
    ]
    # SmolLM2's tokenizer.json (as HF ships it): digits split one by one, then GPT-2's byte-level regex.
    # llama.cpp's "smollm" pre-tokenizer is the same: regexes "\p{N}" then the GPT-2 pattern.
    pre = field(reader, "tokenizer.ggml.pre", required=False)
    if pre not in (None, "smollm"):
        raise ConvertError(f"tokenizer.ggml.pre is {pre!r}; this script knows only SmolLM2's 'smollm'")
    tok_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ],
        },
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": vocab,
            "merges": merges,
        },
    }

    def tok_of(key: str):
        v = field(reader, key, required=False)
        if v is None:
            return None, None
        v = int(v)
        if not 0 <= v < len(tokens):
            raise ConvertError(f"{key} = {v} is outside the {len(tokens)} tokens")
        return v, tokens[v]

    bos_id, bos = tok_of("tokenizer.ggml.bos_token_id")
    eos_id, eos = tok_of("tokenizer.ggml.eos_token_id")
    pad_id, pad = tok_of("tokenizer.ggml.padding_token_id")
    _, unk = tok_of("tokenizer.ggml.unknown_token_id")
    template = field(reader, "tokenizer.chat_template", required=False)
    add_bos = field(reader, "tokenizer.ggml.add_bos_token", required=False)
    tok_config = {
        "add_bos_token": bool(add_bos) if add_bos is not None else False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for a in added
        },
        "additional_special_tokens": [t for t in (bos, eos) if t is not None],
        "bos_token": bos,
        "clean_up_tokenization_spaces": False,
        "eos_token": eos,
        "model_max_length": n_ctx,
        "pad_token": pad,
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": unk,
        "vocab_size": len(tokens),
    }
    if template is not None:
        tok_config["chat_template"] = template
    gen = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    return tok_json, tok_config, {k: v for k, v in gen.items() if v is not None}


def convert(gguf_path: Path, out: Path) -> None:
    reader = GGUFReader(str(gguf_path))
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise ConvertError(f"{gguf_path}: general.architecture is {arch!r}, expected 'llama'")
    n_embd = int(field(reader, "llama.embedding_length"))
    n_layer = int(field(reader, "llama.block_count"))
    n_ff = int(field(reader, "llama.feed_forward_length"))
    n_head = int(field(reader, "llama.attention.head_count"))
    n_head_kv = int(field(reader, "llama.attention.head_count_kv", required=False) or n_head)
    n_ctx = int(field(reader, "llama.context_length"))
    theta = float(field(reader, "llama.rope.freq_base", required=False) or 10000.0)
    eps = float(field(reader, "llama.attention.layer_norm_rms_epsilon"))
    if n_embd % n_head != 0 or n_head % n_head_kv != 0:
        raise ConvertError(f"heads {n_head}/{n_head_kv} do not divide embedding {n_embd}")
    head_dim = n_embd // n_head
    rope_dim = field(reader, "llama.rope.dimension_count", required=False)
    if rope_dim is not None and int(rope_dim) != head_dim:
        raise ConvertError(f"llama.rope.dimension_count {rope_dim} != head size {head_dim}: partial RoPE unsupported")
    for key in ("llama.rope.scaling.type", "llama.rope.scale_linear"):
        if key in reader.fields:
            raise ConvertError(f"{key} is set; RoPE scaling is not supported by this script")

    by_name = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in by_name:
        raise ConvertError("tensor token_embd.weight is missing")
    n_vocab = int(by_name["token_embd.weight"].shape[1])
    tied = "output.weight" not in by_name

    # Tensor order: the GGUF's, with the zero biases right after their weights.
    specs: list[tuple[str, tuple[int, ...]]] = []
    plan: list[tuple[str, object]] = []  # (hf name, gguf tensor or ZeroBias)
    for t in reader.tensors:
        name = hf_name(t.name, n_layer)
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        specs.append((name, shape))
        plan.append((name, t))
        if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            bname = name[: -len("weight")] + "bias"
            specs.append((bname, (shape[0],)))
            plan.append((bname, ZeroBias(shape[0])))
    expected = 3 + 9 * n_layer - (1 if tied else 0)
    if len(reader.tensors) != expected:
        raise ConvertError(f"{len(reader.tensors)} tensors, a {n_layer}-layer llama model has {expected}")

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    writer = SafetensorsWriter(tmp / "model.safetensors", specs, {"format": "pt"})
    for name, src in plan:
        if isinstance(src, ZeroBias):
            writer.write(name, np.zeros(src.n, dtype=np.float32))
            continue
        w = dequant(src)
        heads = {"attn_q.weight": n_head, "attn_k.weight": n_head_kv}.get(src.name.split(".", 2)[-1])
        if heads is not None:
            u = unpermute(w, heads)  # [heads*head_dim, n_embd]
            if not np.array_equal(permute(u, heads), w):
                raise ConvertError(f"tensor {src.name}: unpermute is not the inverse of llama.cpp's permute")
            w = u
        if not np.isfinite(w).all():
            raise ConvertError(f"tensor {src.name} holds NaN or Inf after dequantization")
        writer.write(name, w)
    writer.close()

    tok_json, tok_config, gen = tokenizer_files(reader, n_ctx)
    if len(tok_json["model"]["vocab"]) != n_vocab:
        raise ConvertError(f"{len(tok_json['model']['vocab'])} tokens but token_embd has {n_vocab} rows")
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "attention_dropout": 0.0,
        "bos_token_id": gen.get("bos_token_id"),
        "eos_token_id": gen.get("eos_token_id"),
        "hidden_act": "silu",
        "hidden_size": n_embd,
        "initializer_range": 0.02,
        "intermediate_size": n_ff,
        "max_position_embeddings": n_ctx,
        "max_window_layers": n_layer,
        "num_attention_heads": n_head,
        "num_hidden_layers": n_layer,
        "num_key_value_heads": n_head_kv,
        "rms_norm_eps": eps,
        "rope_scaling": None,
        "rope_theta": theta,
        "sliding_window": None,
        "tie_word_embeddings": tied,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": n_vocab,
    }

    def dump(name: str, obj: dict) -> None:
        with open(tmp / name, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=2)
            f.write("\n")

    dump("config.json", config)
    dump("generation_config.json", gen)
    dump("tokenizer_config.json", tok_config)
    with open(tmp / "tokenizer.json", "w", encoding="utf-8") as f:
        json.dump(tok_json, f, ensure_ascii=False)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    print(
        f"smollm2_to_hf: wrote {out} ({n_layer} layers, embd {n_embd}, heads {n_head}/{n_head_kv}, "
        f"vocab {n_vocab}, tied {tied})",
        file=sys.stderr,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf", type=Path, help="llama-architecture GGUF file (SmolLM2-135M-Instruct.Q4_1.gguf)")
    ap.add_argument("out", type=Path, help="output folder (Hugging Face Qwen2 layout)")
    args = ap.parse_args()
    if not args.gguf.is_file():
        print(f"error: smollm2_to_hf: {args.gguf} is not a file", file=sys.stderr)
        return 1
    try:
        convert(args.gguf, args.out)
    except (ConvertError, ValueError, OSError) as e:
        print(f"error: smollm2_to_hf: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
