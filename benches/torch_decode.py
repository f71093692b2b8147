"""Decode throughput of PyTorch transformers on a model directory written by
make_random_model (same config and weights as the Rust benchmark).

Usage: python3 torch_decode.py DIR NEW_TOKENS  -> prints decode tokens/s.
Text-only prompt of 64 tokens; greedy; EOS ignored (min_new_tokens)."""
import json
import sys
import time

import torch
import transformers

torch.set_num_threads(max(1, torch.get_num_threads()))
path, n = sys.argv[1], int(sys.argv[2])
cfg = json.load(open(f"{path}/config.json"))
if "vision_config" in cfg:
    model = transformers.AutoModelForImageTextToText.from_pretrained(path, torch_dtype=torch.float32)
else:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
model.eval()
ids = torch.randint(0, 256, (1, 64))
kw = dict(do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
with torch.inference_mode():
    model.generate(ids, **kw)  # warm-up
    t0 = time.perf_counter()
    model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False, pad_token_id=0)
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.generate(ids, **kw)
    total = time.perf_counter() - t0
print((n - 1) / max(total - prefill, 1e-9))
