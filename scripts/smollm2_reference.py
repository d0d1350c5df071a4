#!/usr/bin/env python3
"""transformers float32 reference for the SmolLM2 folder made by scripts/smollm2_to_hf.py (run once, output committed).

    bash scripts/setup.sh      # makes assets/smollm2-hf
    /path/to/torchvenv/bin/python scripts/smollm2_reference.py

Writes tests/fixtures/smollm2/ (text.txt is the input, written by hand):
  chat.json           ChatML prompt "What is the capital of France?" rendered with the folder's chat template:
                      prompt text, prompt_ids, greedy answer_ids (up to and including <|im_end|>), answer_text
  reference.json      for text.txt tokenized without special tokens: ids [n], and per position of a single forward
                      pass from position 0: argmax [n], top16_ids [n][16], top16_logits [n][16] (float32 values,
                      descending) and logsumexp [n] (natural log of the sum of exp(logits) over the vocabulary)
                      + mean_kl_act_q8 / mean_kl_f16: what 8-bit activation rounding (ggml on the Q4_1 file) and
                      f16 weights+activations (ggml on an f16 conversion) alone cost, as mean KL(ref || variant)
  last_logits.npy     float32 [49152]: all logits of the last position of text.txt
Needs torch + transformers (scripts/requirements-fixtures.txt); never runs at test time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
HF = ROOT / "assets" / "smollm2-hf"
OUT = ROOT / "tests" / "fixtures" / "smollm2"
QUESTION = "What is the capital of France?"
EXPECTED = "The capital of France is Paris."
TOP_K = 16


def round_q8(x: torch.Tensor) -> torch.Tensor:
    from gguf import GGMLQuantizationType as GT
    from gguf import quants

    a = x.detach().to(torch.float32).numpy()
    flat = a.reshape(-1, a.shape[-1])
    q = quants.dequantize(quants.quantize(flat, GT.Q8_0), GT.Q8_0)
    return torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32).reshape(a.shape))


@torch.no_grad()
def variant_logits(model, ids: list[int], kind: str) -> torch.Tensor:
    import copy

    m = copy.deepcopy(model)
    if kind == "f16":
        for p in m.parameters():
            if p.dim() == 2:
                p.copy_(p.to(torch.float16).to(torch.float32))
        fn = lambda x: x.to(torch.float16).to(torch.float32)  # noqa: E731
    else:
        fn = round_q8
    for mod in m.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.register_forward_pre_hook(lambda _m, args: (fn(args[0]),))
    return m(input_ids=torch.tensor([ids]), use_cache=False).logits[0].to(torch.float32)


def mean_kl(ref: torch.Tensor, other: torch.Tensor) -> float:
    lp = torch.log_softmax(ref.double(), -1)
    lq = torch.log_softmax(other.double(), -1)
    return (lp.exp() * (lp - lq)).sum(-1).mean().item()


def main() -> int:
    if not (HF / "config.json").is_file():
        print(f"error: smollm2_reference: {HF} is missing; run scripts/setup.sh", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(HF))
    model = AutoModelForCausalLM.from_pretrained(str(HF), dtype=torch.float32, attn_implementation="eager").eval()

    # (a) greedy chat answer
    messages = [{"role": "user", "content": QUESTION}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=32, do_sample=False, eos_token_id=im_end,
                             pad_token_id=im_end)
    answer_ids = out[0, len(prompt_ids):].tolist()
    answer_text = tok.decode(answer_ids, skip_special_tokens=True)
    if answer_text.strip() != EXPECTED:
        print(f"error: smollm2_reference: greedy answer {answer_text!r}, expected {EXPECTED!r}", file=sys.stderr)
        return 1
    chat = {"question": QUESTION, "prompt": prompt, "prompt_ids": prompt_ids, "answer_ids": answer_ids,
            "answer_text": answer_text}

    # (b) logits on real text, one forward pass from position 0
    text = (OUT / "text.txt").read_text(encoding="utf-8")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].to(torch.float32)  # [n, vocab]
    top = torch.topk(logits, TOP_K, dim=-1)
    lse = torch.logsumexp(logits.double(), dim=-1)
    nll = (lse - logits.double().gather(1, torch.tensor(ids[1:] + [ids[-1]])[:, None])[:, 0])[:-1].mean().item()
    # What rounding alone costs (helps set test thresholds): KL(ref || variant) averaged over positions.
    #   act_q8: inputs of every linear layer rounded to q8_0/q8_1 blocks of 32 (ggml's CPU matmul on the
    #           Q4_1/Q8_0 weights of the original GGUF; the folder holds exactly those weights)
    #   f16:    weights and linear inputs rounded to f16 (ggml's CPU matmul on an f16 conversion)
    kl = {name: mean_kl(logits, variant_logits(model, ids, name)) for name in ("act_q8", "f16")}
    ref = {
        "model": "SmolLM2-135M-Instruct (assets/smollm2-hf from the Q4_1 GGUF), transformers float32, eager attention",
        "n_ids": len(ids),
        "vocab_size": int(logits.shape[1]),
        "mean_nll_next_token": nll,
        "mean_kl_act_q8": kl["act_q8"],
        "mean_kl_f16": kl["f16"],
        "ids": ids,
        "argmax": logits.argmax(-1).tolist(),
        "top16_ids": top.indices.tolist(),
        "top16_logits": [[float(np.float32(x)) for x in row] for row in top.values.tolist()],
        "logsumexp": [float(np.float32(x)) for x in lse.tolist()],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "chat.json", "w", encoding="utf-8") as f:
        json.dump(chat, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(OUT / "reference.json", "w", encoding="utf-8") as f:
        json.dump(ref, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    np.save(OUT / "last_logits.npy", logits[-1].numpy().astype(np.float32))
    print(f"smollm2_reference: answer {answer_text!r}; text {len(ids)} ids, mean next-token NLL {nll:.3f}, "
          f"KL act_q8 {kl['act_q8']:.5f}, KL f16 {kl['f16']:.6f}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
