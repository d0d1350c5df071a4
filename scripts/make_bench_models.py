#!/usr/bin/env python3
"""Writes random-weight Hugging Face checkpoints of the real Qwen2.5-0.5B and Qwen2.5-1.5B shapes for benchmarks.

    /path/to/torchvenv/bin/python scripts/make_bench_models.py [OUT_DIR]    # default /work/bench/hf

Needs torch + transformers (scripts/requirements-fixtures.txt) and assets/qwen3/ (scripts/setup.sh). The output
(~1 GB + ~3 GB of bf16 safetensors) is NOT part of the repository; scripts/bench.sh converts it with qwen-convert.

Shapes are those of the public config.json files of Qwen/Qwen2.5-0.5B and Qwen/Qwen2.5-1.5B:

    model            hidden  layers  heads  kv heads  head_dim  FFN    vocab   tied  rope_theta  dtype
    qwen2.5-0.5b     896     24      14     2         64        4864   151936  yes   1e6         bf16
    qwen2.5-1.5b     1536    28      12     2         128       8960   151936  yes   1e6         bf16

Weights are random (numpy default_rng, fixed seed per model): 2-D matrices N(0, 0.02) like the HF initialiser,
q/k/v biases N(0, 0.02), RMSNorm weights 1. Speed depends only on shapes and types, not on values, so these
stand in for the real checkpoints (which we may not download). The tokenizer is the Qwen3 one from assets/
(151669 entries, all below vocab 151936, same byte-level BPE family as Qwen2.5).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "assets" / "qwen3"

# name -> (hidden, layers, heads, kv heads, ffn, max_window_layers, seed)
MODELS = {
    "qwen2.5-0.5b": (896, 24, 14, 2, 4864, 21, 505),
    "qwen2.5-1.5b": (1536, 28, 12, 2, 8960, 21, 1515),
}
VOCAB = 151936


def config(hidden: int, layers: int, heads: int, kv: int, ffn: int, mwl: int) -> dict:
    # Field for field the public Qwen2.5 base config.json, bar the name.
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": ffn,
        "max_position_embeddings": 32768,
        "max_window_layers": mwl,
        "model_type": "qwen2",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": VOCAB,
    }


def tensors(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """Qwen2ForCausalLM state dict (tied: no lm_head.weight), bf16."""
    rng = np.random.default_rng(seed)
    h, ff = cfg["hidden_size"], cfg["intermediate_size"]
    hd = h // cfg["num_attention_heads"]
    q_dim, kv_dim = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd

    def normal(*shape: int) -> torch.Tensor:
        x = rng.standard_normal(shape, dtype=np.float32) * 0.02
        return torch.from_numpy(x).to(torch.bfloat16)

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, dtype=torch.bfloat16)

    out = {"model.embed_tokens.weight": normal(VOCAB, h), "model.norm.weight": ones(h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = ones(h)
        out[p + "post_attention_layernorm.weight"] = ones(h)
        out[p + "self_attn.q_proj.weight"] = normal(q_dim, h)  # [q_dim, hidden]
        out[p + "self_attn.q_proj.bias"] = normal(q_dim)
        out[p + "self_attn.k_proj.weight"] = normal(kv_dim, h)  # [kv_dim, hidden]
        out[p + "self_attn.k_proj.bias"] = normal(kv_dim)
        out[p + "self_attn.v_proj.weight"] = normal(kv_dim, h)
        out[p + "self_attn.v_proj.bias"] = normal(kv_dim)
        out[p + "self_attn.o_proj.weight"] = normal(h, q_dim)  # [hidden, q_dim]
        out[p + "mlp.gate_proj.weight"] = normal(ff, h)  # [ffn, hidden]
        out[p + "mlp.up_proj.weight"] = normal(ff, h)
        out[p + "mlp.down_proj.weight"] = normal(h, ff)  # [hidden, ffn]
    return out


def main() -> int:
    out_root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/work/bench/hf")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if not (TOKENIZER / f).is_file():
            print(f"error: {TOKENIZER / f} is missing; run scripts/setup.sh first", file=sys.stderr)
            return 1
    for name, (h, layers, heads, kv, ff, mwl, seed) in MODELS.items():
        d = out_root / name
        d.mkdir(parents=True, exist_ok=True)
        cfg = config(h, layers, heads, kv, ff, mwl)
        (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        gen = {"bos_token_id": 151643, "eos_token_id": 151643, "max_new_tokens": 2048}
        (d / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(TOKENIZER / f, d / f)
        sd = tensors(cfg, seed)
        n_params = sum(t.numel() for t in sd.values())
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        print(f"{d}: {n_params / 1e6:.1f} M parameters, {len(sd)} tensors")
        del sd
    return 0


if __name__ == "__main__":
    sys.exit(main())
