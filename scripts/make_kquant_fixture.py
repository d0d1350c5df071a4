#!/usr/bin/env python3
"""Writes the K-quant fixture tests/fixtures/kquants/{hf,ref}/qwen2_k256 (committed; never run at test time).

The fixtures of make_fixtures.py have widths of 40..96, so a K-quant file of them holds no K tensor at all
(rows must be whole 256-blocks). This one is a Qwen2 model whose widths are multiples of 256 where K types
apply and not where the fallbacks should kick in:

  qwen2_k256  Qwen2, hidden 256 (4 heads of 64, 2 kv heads), ffn 384 (ffn_down rows of 384: llama.cpp's
              K fallback q5_0 / q5_1 / q8_0), 2 layers, vocab 320, untied, bf16 source, q/k/v biases.

ref/qwen2_k256:
  ids.json, logits.npy     as make_fixtures.py (transformers float32, eager attention, on the files as stored),
                           the text's ids twice over (28: enough for the K-quant prefill GEMM)
  floor_<t>.npy            t = q4_K, q5_K, q6_K: the forward with every 2-D weight replaced by the dequantized
                           tensor of `qwen-convert -t t` (our reference quantizers, byte-identical to
                           llama-quantize's on the same input; read back with the gguf package) and every
                           linear input rounded as the matmul does: q8_K blocks of 256 (quantize_row_q8_K_ref)
                           for K weights, q8_0 blocks for q8_0/q5_0, q8_1 plus its f16 block sums for q5_1.
  meta.json                text, sizes, per-type mean KL(ref || floor), top-1 agreement, the type of every weight

Run (needs the packages of scripts/requirements-fixtures.txt and a built qwen-convert):
  cargo build --release -p qwen-convert
  /tmp/torchvenv/bin/python scripts/make_kquant_fixture.py [path/to/qwen-convert]
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader
from gguf import quants
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (shared tokenizer, config, weights, reference helpers)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "kquants"
K_TYPES = ["q4_K", "q5_K", "q6_K"]
MODEL = {"name": "qwen2_k256", "arch": "qwen2", "hidden": 256, "ffn": 384, "layers": 2, "heads": 4, "kv": 2,
         "vocab": 320, "tied": False, "dtype": "bfloat16", "eps": 1e-6, "theta": 10000.0, "seed": 256,
         "style": "torch_dtype"}
HF_OF_GGUF = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
              "ffn_down": "mlp.down_proj"}


def hf_name(gguf_name: str) -> str:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    blk, i, rest = gguf_name.split(".", 2)
    what, kind = rest.rsplit(".", 1)
    if blk != "blk" or what not in HF_OF_GGUF:
        raise mf.FixtureError(f"no HF name for {gguf_name}")
    return f"model.layers.{i}.{HF_OF_GGUF[what]}.{kind}"


def round_q8_k(x: torch.Tensor) -> torch.Tensor:
    """quantize_row_q8_K_ref then dequantize: per 256 values, max = the first value of largest magnitude,
    iscale = -127/max, q = min(nearest_int(iscale * v), 127) (half to even), value = (1/iscale) * q (f32)."""
    a = x.detach().to(torch.float32).numpy()
    flat = a.reshape(-1, 256).astype(np.float32)
    idx = np.abs(flat).argmax(-1)
    mx = flat[np.arange(flat.shape[0]), idx]
    out = np.zeros_like(flat)
    nz = mx != 0
    iscale = (np.float32(-127.0) / mx[nz]).astype(np.float32)
    q = np.minimum(np.rint((iscale[:, None] * flat[nz]).astype(np.float32)), 127).astype(np.float32)
    d = (np.float32(1.0) / iscale).astype(np.float32)
    out[nz] = (d[:, None] * q).astype(np.float32)
    return torch.from_numpy(out.reshape(a.shape)).to(x.dtype)


def q5_1_mins(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The f16 minimum of every q5_1 block (bytes 2..4 of 24): [rows, cols/32]."""
    b = np.ascontiguousarray(raw).reshape(rows, cols // 32, 24)
    return np.ascontiguousarray(b[..., 2:4]).view(np.float16)[..., 0].astype(np.float64)


@torch.no_grad()
def floor_from_file(model: torch.nn.Module, ids: list[int], path: Path) -> tuple[np.ndarray, dict]:
    fm = copy.deepcopy(model)
    params = dict(fm.named_parameters())
    rd = GGUFReader(str(path))
    types, act = {}, {}
    for t in rd.tensors:
        if len(t.shape) < 2:
            continue
        name = hf_name(t.name)
        p = params[name]
        w = quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(tuple(p.shape))
        p.copy_(torch.from_numpy(np.ascontiguousarray(w)))
        tname = t.tensor_type.name.lower().replace("_k", "_K")
        types[name] = tname
        act[name] = (tname, q5_1_mins(t.data, p.shape[0], p.shape[1]) if tname == "q5_1" else None)
    hooks = []
    for mname, mod in fm.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        tname, mins = act[mname + ".weight"]
        if tname.endswith("_K"):
            hooks.append(mod.register_forward_pre_hook(lambda _m, args: (round_q8_k(args[0]),)))
        elif mins is None:
            wt = "f16" if tname == "f16" else "q8_0"
            hooks.append(mod.register_forward_pre_hook(lambda _m, args, wt=wt: (mf.round_activation(args[0], wt),)))
        else:
            def pre(m_, args):
                m_.raw_input = args[0]
                return (mf.round_activation(args[0], "q5_1"),)

            def post(m_, _args, out, mins=mins):
                return out + mf.q8_1_correction(m_.raw_input, mins)

            hooks.append(mod.register_forward_pre_hook(pre))
            hooks.append(mod.register_forward_hook(post))
    logits = mf.run(fm, ids)
    for h in hooks:
        h.remove()
    return logits, types


def main() -> int:
    conv = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target" / "release" / "qwen-convert"
    if not conv.exists():
        print(f"error: {conv} not found (cargo build --release -p qwen-convert)", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    m = MODEL
    hf_dir, ref_dir = OUT / "hf" / m["name"], OUT / "ref" / m["name"]
    for d in (hf_dir, ref_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    ranks, merges = mf.build_bpe()
    n_tok = len(ranks)
    tok, tok_cfg = mf.hf_tokenizer_files(ranks, merges, [], merges_as_pairs=False)
    mf.dump_json(hf_dir / "tokenizer_config.json", tok_cfg)
    mf.dump_json(hf_dir / "tokenizer.json", tok)
    mf.dump_json(hf_dir / "config.json", mf.hf_config(m, n_tok))
    ids = Tokenizer.from_file(str(hf_dir / "tokenizer.json")).encode(mf.TEXT, add_special_tokens=False).ids
    # Twice over (28 ids): a prompt of 16+ tokens takes the K-quant prefill GEMM at the avx512 level.
    ids = ids * 2

    config = AutoConfig.from_pretrained(str(hf_dir))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager").eval()
    mf.fill_weights(model, m)
    save_file(mf.state_dict_for_save(model, m), str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    loaded = mf.load_hf(hf_dir)
    ref = mf.run(loaded, ids)
    mf.dump_json(ref_dir / "ids.json", ids)
    np.save(ref_dir / "logits.npy", ref.astype(np.float32))
    meta = {"text": mf.TEXT, "n_ids": len(ids), "vocab_size": m["vocab"], "source_dtype": m["dtype"],
            "arch": m["arch"], "tied": m["tied"], "logits_absmax": float(np.abs(ref).max()),
            "logits_std": float(ref.std()), "floor": {}}
    print(f"{m['name']}: ids {len(ids)}, logits {ref.shape}, |max| {meta['logits_absmax']:.2f}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        for t in K_TYPES:
            path = Path(tmp) / f"{t}.gguf"
            subprocess.run([str(conv), "-i", str(hf_dir), "-o", str(path), "-t", t, "-q"], check=True)
            fl, types = floor_from_file(loaded, ids, path)
            np.save(ref_dir / f"floor_{t}.npy", fl.astype(np.float32))
            kl, top1 = mf.kl_top1(ref, fl)
            meta["floor"][t] = {"kl_mean": kl, "top1": top1, "weight_types": types}
            print(f"  floor {t}: KL {kl:.5f}  top-1 {top1:.3f}  types {sorted(set(types.values()))}", file=sys.stderr)
    mf.dump_json(ref_dir / "meta.json", meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
