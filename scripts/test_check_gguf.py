#!/usr/bin/env python3
"""Proves scripts/check_gguf.py can fail: `.venv/bin/python scripts/test_check_gguf.py` (numpy + gguf, ~10 s).

A converter stand-in written with the gguf package's own GGUFWriter turns committed fixtures into GGUF files
following llama.cpp's conventions; check_gguf.py must accept the faithful files and reject each planted fault
with a message naming it. Exit status 0 when every case behaves, 1 otherwise.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as GT
from gguf import GGUFWriter, quants

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from check_gguf import FILE_TYPES, TYPE_NAMES, SafetensorsDir, bytes_to_unicode, expected_type, name_table  # noqa: E402

FTYPE_ID = {v: k for k, v in FILE_TYPES.items()}
ARCH = {"QWenLMHeadModel": "qwen", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}


def write(hf: Path, out: Path, ftype: str, fault: str = "") -> None:
    """HF fixture -> GGUF with llama.cpp's keys and names; `fault` plants one mistake."""
    cfg = json.loads((hf / "config.json").read_text())
    arch = ARCH[cfg["architectures"][0]]
    st = SafetensorsDir(hf)
    tied = "lm_head.weight" not in st.names()
    n_layer = cfg["num_hidden_layers"]
    w = GGUFWriter(str(out), arch)
    w.add_file_type(FTYPE_ID[ftype])
    w.add_block_count(n_layer)
    w.add_embedding_length(cfg["hidden_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_context_length(cfg["max_position_embeddings"])
    if arch == "qwen":
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_rope_freq_base(cfg["rotary_emb_base"])
        w.add_layer_norm_rms_eps(cfg["layer_norm_epsilon"])
        w.add_rope_dimension_count(cfg["kv_channels"])
    else:
        w.add_feed_forward_length(cfg["intermediate_size"] + (1 if fault == "ffn_length" else 0))
        w.add_head_count_kv(cfg["num_key_value_heads"])
        theta = cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]
        w.add_rope_freq_base(theta)
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        if arch == "qwen3":
            w.add_key_length(cfg["head_dim"])
            w.add_value_length(cfg["head_dim"])

    b2u = bytes_to_unicode()
    n_rows = cfg["vocab_size"]
    toks, types = [f"[PAD{i}]" for i in range(n_rows)], [5] * n_rows
    if arch == "qwen":
        lines = [ln.split() for ln in (hf / "qwen.tiktoken").read_text().splitlines() if ln.strip()]
        ranks = {base64.b64decode(b): int(r) for b, r in lines}
        for bts, r in ranks.items():
            toks[r], types[r] = "".join(b2u[x] for x in bts), 1
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
        for j, s in enumerate(specials):
            toks[len(ranks) + j], types[len(ranks) + j] = s, 3
        merges = []
        for bts in ranks:
            for k in range(1, len(bts)):
                if bts[:k] in ranks and bts[k:] in ranks:
                    merges.append("".join(b2u[x] for x in bts[:k]) + " " + "".join(b2u[x] for x in bts[k:]))
                    break
        template = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}"
    else:
        tj = json.loads((hf / "tokenizer.json").read_text())
        for t, i in tj["model"]["vocab"].items():
            toks[i], types[i] = t, 1
        for a in tj["added_tokens"]:
            toks[a["id"]], types[a["id"]] = a["content"], 3 if a["special"] else 4
        merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
        template = json.loads((hf / "tokenizer_config.json").read_text())["chat_template"]
    if fault == "token_text":
        toks[300] = toks[300] + "x"
    if fault == "merges":
        merges = merges[1:]
    if fault == "n_tokens":
        toks, types = toks[:-1], types[:-1]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(toks.index("<|endoftext|>"))
    w.add_chat_template(template)
    w.add_string("qwen_rs.tokenizer.normalizer", "NFC")
    gen_path = hf / "generation_config.json"
    if gen_path.is_file():
        g = json.loads(gen_path.read_text())
        eos = g["eos_token_id"] if isinstance(g["eos_token_id"], list) else [g["eos_token_id"]]
        w.add_array("qwen_rs.generation.eos_token_ids", eos)
        for k in ("temperature", "top_p", "repetition_penalty"):
            if k in g:
                w.add_float32(f"qwen_rs.generation.{k}", g[k] + (0.1 if fault == "generation" else 0.0))
        if "top_k" in g:
            w.add_uint32("qwen_rs.generation.top_k", g["top_k"])
    if arch == "qwen":
        w.add_bool("qwen_rs.qwen.use_dynamic_ntk", cfg["use_dynamic_ntk"])
        w.add_bool("qwen_rs.qwen.use_logn_attn", cfg["use_logn_attn"])
        w.add_uint32("qwen_rs.qwen.seq_length", cfg["seq_length"])

    ft = TYPE_NAMES[ftype]
    for gname, hname in name_table(arch, n_layer, tied).items():
        a = st.get(hname).astype(np.float32)
        if fault == "drop" and gname == "blk.1.ffn_down.weight":
            continue
        if fault == "swap" and gname == "blk.0.ffn_up.weight":
            a = st.get(hname.replace("up_proj", "gate_proj").replace("mlp.w1", "mlp.w2")).astype(np.float32)
        if fault == "block" and gname == "blk.0.ffn_gate.weight":
            a = a.copy()
            a[0, :32] += 0.05 * np.abs(a[0, :32]).max()
        t = sorted(expected_type(gname, a.shape, ft, tied))[0]
        if fault == "bias_f16" and gname.endswith(".bias"):
            t = GT.F16
        if fault == "policy" and gname == "blk.0.ffn_down.weight" and t not in (GT.F32, GT.F16):
            t = GT.Q4_1 if t != GT.Q4_1 else GT.Q4_0
        if t == GT.F32:
            w.add_tensor(gname, a)
        elif t == GT.F16:
            w.add_tensor(gname, a.astype(np.float16))
        else:
            w.add_tensor(gname, quants.quantize(a, t), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def run_check(path: Path, hf: Path) -> tuple[int, str]:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_gguf.py"), str(path), str(hf)],
                       capture_output=True, text=True)
    return r.returncode, r.stderr


CASES = [  # (fixture, type, fault, text the error must contain)
    ("qwen2_gqa2", "q8_0", "", None),
    ("qwen2_gqa3_sharded", "q4_1", "", None),
    ("qwen2_odd", "q5_0", "", None),
    ("qwen3_a", "bf16", "", None),
    ("qwen3_gqa2", "q4_0", "", None),
    ("qwen1", "q5_1", "", None),
    ("qwen1", "f16", "", None),
    ("qwen2_gqa2", "q8_0", "swap", "blk.0.ffn_up.weight: Q8_0 block"),
    ("qwen2_gqa2", "q4_0", "block", "blk.0.ffn_gate.weight: Q4_0 values differ from gguf.quants' reference quantization"),
    ("qwen2_gqa2", "q8_0", "drop", "tensor blk.1.ffn_down.weight (from model.layers.1.mlp.down_proj.weight) is missing"),
    ("qwen2_gqa2", "f32", "bias_f16", "blk.0.attn_q.bias is 1-D but F16"),
    ("qwen3_a", "q4_0", "policy", "tensor blk.0.ffn_down.weight is Q4_1; the policy for a q4_0 file gives Q4_0"),
    ("qwen3_gqa2", "q8_0", "n_tokens", "tokenizer.ggml.tokens has 447 entries, token_embd has 448 rows"),
    ("qwen2_gqa2", "q8_0", "token_text", "token 300 is"),
    ("qwen3_a", "q8_0", "merges", "tokenizer.ggml.merges (47) differ from tokenizer.json's (48) at index 0"),
    ("qwen2_odd", "f32", "ffn_length", "metadata qwen2.feed_forward_length = 73, config.json says 72"),
    ("qwen1", "q8_0", "generation", "qwen_rs.generation.top_p"),
]


def main() -> int:
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, ftype, fault, want) in enumerate(CASES):
            hf = ROOT / "tests" / "fixtures" / "hf" / name
            path = Path(tmp) / f"{i}.gguf"
            write(hf, path, ftype, fault)
            rc, err = run_check(path, hf)
            if want is None:
                ok = rc == 0
            else:
                ok = rc != 0 and want in err
            label = f"{name} {ftype} {fault or 'faithful'}"
            print(f"{'ok  ' if ok else 'FAIL'} {label}" + ("" if ok else f": rc {rc}, stderr:\n{err}"))
            failures += not ok
    print(f"test_check_gguf: {len(CASES) - failures} of {len(CASES)} cases behave")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
