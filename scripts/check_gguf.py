#!/usr/bin/env python3
"""An independent reader's verdict on a converted file: `check_gguf.py FILE HF_DIR [--type T] [-v]`.

Opens FILE with the PyPI `gguf` package (GGUFReader, numpy) — not with our Rust reader — and checks it against
the Hugging Face folder it was converted from:
  * every GGUF tensor maps back to one HF tensor through llama.cpp's name tables (qwen, qwen2, qwen3), every HF
    tensor is present (lm_head only when untied), and shapes agree (ggml dims reversed = HF shape);
  * dequantized with gguf.quants it equals the source within the type's budget:
      f32            exact
      f16, bf16      |got - src| <= 1e-2 * |src| + 1e-6            (f16 holds ~2^-11 relative, bf16 ~2^-8)
      q8_0 q4_0 q4_1 q5_0 q5_1, per 32-block: |got - src| <= bound * amax(block) + 2^-9 * amax(block), the
                     worst case of the format (q8_0 d/2 = amax/254, q4_0 d = amax/8, q5_0 amax/16,
                     q4_1 d/2 = (max-min)/30, q5_1 (max-min)/62; the 2^-9 term covers the f16 rounding of d and m)
                     and the values equal gguf.quants' quantize+dequantize of the source (ggml's _ref rounding,
                     the same bytes on every machine; --tolerant drops this and keeps only the bounds);
                     over the tensor, RMSE <= 1.05 * RMSE of gguf's own reference quantizer on the same data
                     + 1e-7 (a quantizer worse than the reference fails). llama.cpp's test-quantize-fns metric,
                     sqrt(sum err^2)/n scaled to its 4096-value test (budget 0.002), is printed with -v.
    plus: 1-D tensors are f32; for the type named by --type T or else by general.file_type, the type policy of
    quant-formats/FORMAT.md holds (2-D tensors are T, the output matrix — token_embd when tied — is q8_0 in
    4/5-bit files, a row length not a multiple of 32 is f16 or f32);
  * hyperparameter keys equal config.json; tokenizer keys exist, tokenizer.ggml.tokens has one entry per row of
    token_embd, the tokens/types/merges agree with tokenizer.json (or qwen.tiktoken for Qwen-1), special ids are
    in range; generation_config.json values appear under qwen_rs.generation.*.
Exit status 0 when all holds; otherwise one `error: check_gguf: ...` line per problem on stderr and status 1.
Needs numpy + gguf only (the .venv made by scripts/setup.sh).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import sys
from pathlib import Path

import numpy as np

try:
    from gguf import GGMLQuantizationType as GT
    from gguf import GGUFReader, quants
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit(f"error: check_gguf: the gguf package is missing ({e}); run scripts/setup.sh")

QUANT_BOUND = {  # worst-case |error| per element as a fraction of the block's amax (or range for _1 types)
    GT.Q8_0: 1.0 / 254.0,
    GT.Q4_0: 1.0 / 8.0,
    GT.Q5_0: 1.0 / 16.0,
    GT.Q4_1: 1.0 / 30.0,
    GT.Q5_1: 1.0 / 62.0,
}
# general.file_type (llama_ftype) -> the type a user chose; lets the policy be checked without --type.
FILE_TYPES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1", 32: "bf16"}
TOLERANT = False  # set by --tolerant: accept any quantizer within the bounds, not only ggml's rounding
TYPE_NAMES = {"f32": GT.F32, "f16": GT.F16, "bf16": GT.BF16, "q8_0": GT.Q8_0, "q4_0": GT.Q4_0,
              "q4_1": GT.Q4_1, "q5_0": GT.Q5_0, "q5_1": GT.Q5_1}


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, msg: str) -> None:
        self.items.append(msg)


# --------------------------------------------------------------------------------------------- HF side


class SafetensorsDir:
    """Tensors of model.safetensors or shards listed in model.safetensors.index.json, as float32 on demand."""

    DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}

    def __init__(self, hf_dir: Path) -> None:
        self.where: dict[str, tuple[Path, dict, int]] = {}
        index = hf_dir / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (hf_dir / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise ValueError(f"{hf_dir}: neither model.safetensors nor model.safetensors.index.json")
        for fname in files:
            path = hf_dir / fname
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                size = path.stat().st_size
                if n > size - 8:
                    raise ValueError(f"{path}: header length {n} exceeds file size {size}")
                header = json.loads(f.read(n))
            for name, info in header.items():
                if name != "__metadata__":
                    self.where[name] = (path, info, 8 + n)

    def names(self) -> list[str]:
        return list(self.where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.where[name][1]["shape"])

    def get(self, name: str) -> np.ndarray:
        path, info, base = self.where[name]
        dt = self.DTYPES.get(info["dtype"])
        if dt is None:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}; expected F32, F16 or BF16")
        start, end = info["data_offsets"]
        count = (end - start) // np.dtype(dt).itemsize
        raw = np.memmap(path, dtype=dt, mode="r", offset=base + start, shape=(count,))
        if info["dtype"] == "BF16":
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            arr = raw.astype(np.float32)
        return arr.reshape(info["shape"])


def name_table(arch: str, n_layer: int, tied: bool) -> dict[str, str]:
    """GGUF tensor name -> HF tensor name (llama.cpp's tables)."""
    if arch == "qwen":
        t = {"token_embd.weight": "transformer.wte.weight", "output_norm.weight": "transformer.ln_f.weight"}
        layer = {
            "attn_norm.weight": "ln_1.weight",
            "attn_qkv.weight": "attn.c_attn.weight",
            "attn_qkv.bias": "attn.c_attn.bias",
            "attn_output.weight": "attn.c_proj.weight",
            "ffn_norm.weight": "ln_2.weight",
            "ffn_up.weight": "mlp.w1.weight",
            "ffn_gate.weight": "mlp.w2.weight",
            "ffn_down.weight": "mlp.c_proj.weight",
        }
        prefix = "transformer.h.{}."
    else:
        t = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
        layer = {
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
        if arch == "qwen2":
            layer.update({"attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
                          "attn_v.bias": "self_attn.v_proj.bias"})
        else:
            layer.update({"attn_q_norm.weight": "self_attn.q_norm.weight",
                          "attn_k_norm.weight": "self_attn.k_norm.weight"})
        prefix = "model.layers.{}."
    if not tied:
        t["output.weight"] = "lm_head.weight"
    for i in range(n_layer):
        for g, h in layer.items():
            t[f"blk.{i}.{g}"] = prefix.format(i) + h
    return t


# --------------------------------------------------------------------------------------------- GGUF side


def field(reader: GGUFReader, key: str):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def gguf_values(t) -> np.ndarray:
    """A GGUF tensor as float32 in HF order."""
    shape = tuple(int(x) for x in reversed(t.shape.tolist()))
    data = np.asarray(t.data)
    if t.tensor_type == GT.F32:
        arr = data.view(np.float32) if data.dtype != np.float32 else data
    elif t.tensor_type == GT.F16:
        arr = (data.view(np.float16) if data.dtype != np.float16 else data).astype(np.float32)
    else:
        arr = quants.dequantize(data, t.tensor_type).astype(np.float32, copy=False)
    return np.asarray(arr, dtype=np.float32).reshape(shape)


def expected_type(gname: str, shape: tuple[int, ...], ftype: GT, tied: bool) -> set[GT]:
    if len(shape) == 1:
        return {GT.F32}
    if shape[-1] % 32 != 0 and ftype not in (GT.F32, GT.F16, GT.BF16):
        return {GT.F16, GT.F32}
    is_output = gname == "output.weight" or (tied and gname == "token_embd.weight")
    if is_output and ftype in (GT.Q4_0, GT.Q4_1, GT.Q5_0, GT.Q5_1):
        return {GT.Q8_0}
    return {ftype}


def check_values(gname: str, qtype: GT, got: np.ndarray, src: np.ndarray, p: Problems, verbose: bool) -> None:
    err = got.astype(np.float64) - src.astype(np.float64)
    rmse = float(np.sqrt(np.mean(err**2))) if err.size else 0.0
    note = ""
    if qtype == GT.F32:
        bad = np.count_nonzero(err)
        if bad:
            p.add(f"{gname}: f32 differs from the source at {bad} of {err.size} values (max {np.abs(err).max():.3g})")
    elif qtype in (GT.F16, GT.BF16):
        lim = 1e-2 * np.abs(src) + 1e-6
        over = np.abs(err) > lim
        if over.any():
            i = int(np.argmax(np.abs(err) - lim))
            p.add(f"{gname}: {qtype.name} value {got.flat[i]} vs source {src.flat[i]} exceeds 1e-2 relative "
                  f"({int(over.sum())} of {err.size} values)")
    elif qtype in QUANT_BOUND:
        rows = src.reshape(-1, src.shape[-1])
        if rows.shape[1] % 32 != 0:
            p.add(f"{gname}: {qtype.name} with row length {rows.shape[1]}, not a multiple of 32")
            return
        b_src = rows.reshape(-1, 32).astype(np.float64)
        b_err = err.reshape(-1, 32)
        if qtype in (GT.Q4_1, GT.Q5_1):
            scale = b_src.max(1) - b_src.min(1)
        else:
            scale = np.abs(b_src).max(1)
        amax = np.abs(b_src).max(1)
        lim = QUANT_BOUND[qtype] * scale + 2.0**-9 * amax + 1e-12
        worst = np.abs(b_err).max(1) - lim
        if (worst > 0).any():
            k = int(np.argmax(worst))
            p.add(f"{gname}: {qtype.name} block {k} has error {np.abs(b_err[k]).max():.4g} > bound {lim[k]:.4g} "
                  f"({int((worst > 0).sum())} of {len(worst)} blocks)")
        ref = quants.dequantize(quants.quantize(rows.astype(np.float32), qtype), qtype).astype(np.float64)
        ref_rmse = float(np.sqrt(np.mean((ref - rows) ** 2)))
        if rmse > 1.05 * ref_rmse + 1e-7:
            p.add(f"{gname}: {qtype.name} RMSE {rmse:.4g} > 1.05 x reference quantizer's {ref_rmse:.4g}")
        ref32 = ref.astype(np.float32)
        same = np.array_equal(ref32, got.reshape(rows.shape))
        if not same and not TOLERANT:
            diff = (ref32 != got.reshape(rows.shape)).reshape(-1, 32).any(1)
            k = int(np.argmax(diff))
            p.add(f"{gname}: {qtype.name} values differ from gguf.quants' reference quantization of the source in "
                  f"{int(diff.sum())} of {len(diff)} blocks (first: block {k}); ggml's _ref rounding gives identical "
                  "bytes on every machine (--tolerant checks only the error bounds)")
        ggml_metric = rmse / math.sqrt(4096)  # sqrt(sum e^2)/n at n = 4096, test-quantize-fns' unit
        note = f" ref-rmse {ref_rmse:.3g} ggml-metric {ggml_metric:.2e} {'bit-equal to gguf.quants' if same else ''}"
    else:
        p.add(f"{gname}: tensor type {qtype.name} is not one the converter writes")
    if verbose:
        print(f"  {gname:32s} {qtype.name:5s} {str(list(src.shape)):14s} rmse {rmse:.3g}{note}")


# --------------------------------------------------------------------------------------------- metadata


def close(a, b, rel=1e-6) -> bool:
    return a is not None and b is not None and abs(float(a) - float(b)) <= rel * max(1.0, abs(float(b)))


def rope_theta(cfg: dict):
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict) and "rope_theta" in rp:
        return rp["rope_theta"]
    return cfg.get("rope_theta", 10000.0)


def check_hparams(reader, arch: str, cfg: dict, p: Problems) -> None:
    want = {
        "embedding_length": cfg["hidden_size"],
        "block_count": cfg["num_hidden_layers"],
        "attention.head_count": cfg["num_attention_heads"],
    }
    optional: dict = {}  # checked only when present
    if arch == "qwen":
        hd = cfg.get("kv_channels", cfg["hidden_size"] // cfg["num_attention_heads"])
        # llama.cpp (convert_hf_to_gguf.py QwenModel) writes config's intermediate_size as it is, twice the real
        # FFN width, and its loader halves it; ffn_up/ffn_gate shapes are checked against the tensors anyway.
        optional["attention.head_count_kv"] = cfg["num_attention_heads"]
        want.update({
            "feed_forward_length": cfg["intermediate_size"],
            "rope.freq_base": cfg.get("rotary_emb_base", 10000.0),
            "attention.layer_norm_rms_epsilon": cfg["layer_norm_epsilon"],
            "rope.dimension_count": int(round(hd * cfg.get("rotary_pct", 1.0))),
        })
    else:
        want.update({
            "feed_forward_length": cfg["intermediate_size"],
            "attention.head_count_kv": cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
            "rope.freq_base": rope_theta(cfg),
            "attention.layer_norm_rms_epsilon": cfg["rms_norm_eps"],
            "context_length": cfg["max_position_embeddings"],
        })
        if arch == "qwen3":
            hd = cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
            want.update({"attention.key_length": hd, "attention.value_length": hd})
    for k, v in list(want.items()) + list(optional.items()):
        got = field(reader, f"{arch}.{k}")
        if got is None and k in optional:
            continue
        if got is None:
            p.add(f"metadata {arch}.{k} is missing (config.json says {v})")
        elif not close(got, v, rel=1e-6 if isinstance(v, int) else 1e-6):
            p.add(f"metadata {arch}.{k} = {got}, config.json says {v}")
    if arch == "qwen":
        for key, ck in (("qwen_rs.qwen.use_dynamic_ntk", "use_dynamic_ntk"), ("qwen_rs.qwen.use_logn_attn", "use_logn_attn")):
            if ck in cfg and field(reader, key) is not None and bool(field(reader, key)) != bool(cfg[ck]):
                p.add(f"metadata {key} = {field(reader, key)}, config.json {ck} = {cfg[ck]}")
        if "seq_length" in cfg and field(reader, "qwen_rs.qwen.seq_length") not in (None, cfg["seq_length"]):
            p.add(f"metadata qwen_rs.qwen.seq_length = {field(reader, 'qwen_rs.qwen.seq_length')}, config.json {cfg['seq_length']}")


def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def check_tokenizer(reader, arch: str, hf_dir: Path, n_rows: int, p: Problems) -> None:
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"):
        if key not in reader.fields:
            p.add(f"metadata {key} is missing")
    if field(reader, "tokenizer.ggml.model") not in (None, "gpt2"):
        p.add(f"tokenizer.ggml.model is {field(reader, 'tokenizer.ggml.model')!r}, expected 'gpt2'")
    want_pre = "qwen2"
    if arch != "qwen" and (hf_dir / "tokenizer.json").is_file():
        # SmolLM2's pre-tokenizer (Digits then GPT-2's byte-level regex) is llama.cpp's "smollm".
        pre_tok = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8")).get("pre_tokenizer") or {}
        if any(x.get("type") == "Digits" for x in pre_tok.get("pretokenizers", [])):
            want_pre = "smollm"
    if field(reader, "tokenizer.ggml.pre") not in (None, want_pre):
        p.add(f"tokenizer.ggml.pre is {field(reader, 'tokenizer.ggml.pre')!r}, expected {want_pre!r}")
    tokens = list(field(reader, "tokenizer.ggml.tokens") or [])
    types = [int(x) for x in (field(reader, "tokenizer.ggml.token_type") or [])]
    merges = list(field(reader, "tokenizer.ggml.merges") or [])
    if len(tokens) != n_rows:
        p.add(f"tokenizer.ggml.tokens has {len(tokens)} entries, token_embd has {n_rows} rows")
    if len(types) != len(tokens):
        p.add(f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
        return
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id"):
        v = field(reader, key)
        if v is not None and not 0 <= int(v) < len(tokens):
            p.add(f"{key} = {v} is outside the {len(tokens)} tokens")
    b2u = bytes_to_unicode()
    index = {t: i for i, t in enumerate(tokens)}

    def expect(i: int, text: str, ttype: int | None, what: str) -> None:
        if i >= len(tokens):
            p.add(f"{what} {text!r} has id {i}, beyond the {len(tokens)} tokens")
        elif tokens[i] != text:
            p.add(f"token {i} is {tokens[i]!r}, {what} says {text!r}")
        elif ttype is not None and types[i] != ttype:
            p.add(f"token {i} {text!r} has type {types[i]}, expected {ttype}")

    if arch == "qwen":
        tk = hf_dir / "qwen.tiktoken"
        if not tk.is_file():
            p.add(f"{tk} is missing")
            return
        n_ranks = 0
        for line in tk.read_text().splitlines():
            if not line.strip():
                continue
            b64, rank = line.split()
            expect(int(rank), "".join(b2u[b] for b in base64.b64decode(b64)), 1, "qwen.tiktoken")
            n_ranks += 1
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
        for j, s in enumerate(specials):
            expect(n_ranks + j, s, 3, "Qwen-1 special")
        for m in merges:
            a, sep, b = m.partition(" ")
            if not sep or a not in index or b not in index or (a + b) not in index:
                p.add(f"merge {m!r} does not join two tokens into a third")
                break
    else:
        tj = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
        for text, i in tj["model"]["vocab"].items():
            expect(i, text, None, "tokenizer.json vocab")
        for a in tj.get("added_tokens", []):
            expect(a["id"], a["content"], 3 if a.get("special") else 4, "tokenizer.json added_tokens")
        src_merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
        if merges != src_merges:
            diff = next((k for k, (x, y) in enumerate(zip(merges, src_merges)) if x != y), min(len(merges), len(src_merges)))
            p.add(f"tokenizer.ggml.merges ({len(merges)}) differ from tokenizer.json's ({len(src_merges)}) at index {diff}")
        tc_path = hf_dir / "tokenizer_config.json"
        if tc_path.is_file():
            tc = json.loads(tc_path.read_text(encoding="utf-8"))
            if tc.get("chat_template") and field(reader, "tokenizer.chat_template") != tc["chat_template"]:
                p.add("tokenizer.chat_template differs from tokenizer_config.json's chat_template")
    # Qwen-1's tokenizer and tokenizer.json's {"type": "NFC"} normalizer both apply NFC before splitting.
    if arch == "qwen":
        nfc = True
    else:
        norm = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8")).get("normalizer") or {}
        nfc = norm.get("type") == "NFC"
    got_norm = field(reader, "qwen_rs.tokenizer.normalizer")
    if nfc and got_norm != "NFC":
        p.add(f"qwen_rs.tokenizer.normalizer is {got_norm!r}; the source tokenizer applies NFC")
    elif not nfc and got_norm is not None:
        p.add(f"qwen_rs.tokenizer.normalizer is {got_norm!r}; the source tokenizer has no normalizer")
    for i, t in enumerate(types):
        if t not in (1, 2, 3, 4, 5, 6):
            p.add(f"token {i} has type {t}, not a llama_token_type")
            break


def check_generation(reader, hf_dir: Path, p: Problems) -> None:
    path = hf_dir / "generation_config.json"
    if not path.is_file():
        return
    gen = json.loads(path.read_text())
    eos = gen.get("eos_token_id")
    if eos is not None:
        want = set(eos if isinstance(eos, list) else [eos])
        got = field(reader, "qwen_rs.generation.eos_token_ids")
        if got is None:
            p.add("qwen_rs.generation.eos_token_ids is missing (generation_config.json has eos_token_id)")
        elif not want <= {int(x) for x in got}:
            p.add(f"qwen_rs.generation.eos_token_ids {list(got)} lacks {sorted(want)} of generation_config.json")
    for k in ("temperature", "top_p", "top_k", "repetition_penalty"):
        if k in gen:
            got = field(reader, f"qwen_rs.generation.{k}")
            if got is None:
                p.add(f"qwen_rs.generation.{k} is missing (generation_config.json has {gen[k]})")
            elif not close(got, gen[k], rel=1e-6):
                p.add(f"qwen_rs.generation.{k} = {got}, generation_config.json says {gen[k]}")


# --------------------------------------------------------------------------------------------- main


def check(path: Path, hf_dir: Path, ftype_name: str | None, verbose: bool) -> Problems:
    p = Problems()
    reader = GGUFReader(str(path))
    cfg = json.loads((hf_dir / "config.json").read_text())
    arch = field(reader, "general.architecture")
    hf_arch = {"QWenLMHeadModel": "qwen", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}.get(
        (cfg.get("architectures") or [""])[0])
    if arch != hf_arch:
        p.add(f"general.architecture is {arch!r}, config.json implies {hf_arch!r}")
        return p
    align = field(reader, "general.alignment")
    if align is not None and int(align) != 32:
        p.add(f"general.alignment is {align}, expected 32")
    n_layer = int(cfg["num_hidden_layers"])
    st = SafetensorsDir(hf_dir)
    hf_names = set(st.names())
    tied = "lm_head.weight" not in hf_names
    table = name_table(arch, n_layer, tied)
    file_type = field(reader, "general.file_type")
    if file_type is not None:
        named = FILE_TYPES.get(int(file_type))
        if named is None:
            p.add(f"general.file_type {file_type} is not one of {sorted(FILE_TYPES)}")
        elif ftype_name is not None and named != ftype_name:
            p.add(f"general.file_type {file_type} means {named}, but --type {ftype_name} was given")
        elif ftype_name is None:
            ftype_name = named
    ftype = TYPE_NAMES[ftype_name] if ftype_name else None

    seen = set()
    n_rows = None
    for t in reader.tensors:
        hname = table.get(t.name)
        if hname is None:
            p.add(f"tensor {t.name} has no HF counterpart for architecture {arch}")
            continue
        if hname not in hf_names:
            p.add(f"tensor {t.name} maps to {hname}, which {hf_dir} does not hold")
            continue
        seen.add(t.name)
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        if shape != st.shape(hname):
            p.add(f"tensor {t.name} has shape {list(shape)}, {hname} has {list(st.shape(hname))}")
            continue
        if t.name == "token_embd.weight":
            n_rows = shape[0]
        if len(shape) == 1 and t.tensor_type != GT.F32:
            p.add(f"tensor {t.name} is 1-D but {t.tensor_type.name}; 1-D tensors are f32")
        if ftype is not None and len(shape) > 1:
            allowed = expected_type(t.name, shape, ftype, tied)
            if t.tensor_type not in allowed:
                p.add(f"tensor {t.name} is {t.tensor_type.name}; the policy for a {ftype_name} file gives "
                      f"{'/'.join(a.name for a in sorted(allowed))}")
        check_values(t.name, t.tensor_type, gguf_values(t), st.get(hname), p, verbose)
    for g, h in table.items():
        if g not in seen and h in hf_names:
            p.add(f"tensor {g} (from {h}) is missing from the file")
    extra = hf_names - set(table.values())
    for h in sorted(extra):
        p.add(f"HF tensor {h} has no GGUF counterpart")
    check_hparams(reader, arch, cfg, p)
    if n_rows is None:
        p.add("tensor token_embd.weight is missing")
    else:
        check_tokenizer(reader, arch, hf_dir, n_rows, p)
    check_generation(reader, hf_dir, p)
    return p


def main() -> int:
    ap = argparse.ArgumentParser(description="Check a converted GGUF file against its Hugging Face source.")
    ap.add_argument("file", type=Path)
    ap.add_argument("hf_dir", type=Path)
    ap.add_argument("--type", choices=sorted(TYPE_NAMES), help="file type given to qwen-convert -t (default: from general.file_type); checks the type policy")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per tensor")
    ap.add_argument("--tolerant", action="store_true",
                    help="quantized tensors need only meet the error bounds, not equal gguf.quants' reference output")
    args = ap.parse_args()
    global TOLERANT
    TOLERANT = args.tolerant
    for what, pth, ok in (("file", args.file, args.file.is_file()), ("HF folder", args.hf_dir, (args.hf_dir / "config.json").is_file())):
        if not ok:
            print(f"error: check_gguf: {what} {pth} not found", file=sys.stderr)
            return 1
    try:
        problems = check(args.file, args.hf_dir, args.type, args.verbose)
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as e:
        print(f"error: check_gguf: {args.file}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    for msg in problems.items:
        print(f"error: check_gguf: {args.file}: {msg}", file=sys.stderr)
    if problems.items:
        return 1
    print(f"check_gguf: {args.file} agrees with {args.hf_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
