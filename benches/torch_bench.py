"""transformers' side of benches/inference_bench.rs.

Usage: python torch_bench.py DIR BATCH NEW_TOKENS

Loads the model directory with transformers (f32, CPU), reads the inputs elite prepared
(`DIR/inputs.safetensors`: input ids and the image tensors under transformers' names), runs
BATCH copies of them with greedy decoding and end-of-sequence ignored (times taken from a
logits processor: the prefill ends at the first token's scores, the decode is the steps after
it), and prints
`RESULT <prompt tokens> <prefill tokens/s> <decode tokens/s> <peak MB>`, the peak being the
process's maximum resident set (ru_maxrss), as elite's VmHWM."""
import json
import resource
import sys
import time

import torch
import transformers
from safetensors.torch import load_file

path, batch, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = json.load(open(f"{path}/config.json"))
auto = (transformers.AutoModelForImageTextToText if "vision_config" in cfg
        else transformers.AutoModelForCausalLM)
model = auto.from_pretrained(path, dtype=torch.float32).eval()
x = load_file(f"{path}/inputs.safetensors")

inputs = {"input_ids": x["input_ids"].repeat(batch, 1)}
inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
for key in ("mm_token_type_ids", "token_type_ids", "image_grid_thw", "image_sizes"):
    if key in x:
        inputs[key] = x[key].repeat(batch, 1)
if "pixel_values" in x:
    pv = x["pixel_values"]
    inputs["pixel_values"] = pv.repeat(batch, *([1] * (pv.dim() - 1)))
prompt = inputs["input_ids"].shape[1]


class Stamps(transformers.LogitsProcessor):
    """Records when each token's scores are ready: the first right after the prefill, then
    one per decode step."""

    def __init__(self):
        self.times = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def run(n):
    stamps = Stamps()
    t0 = time.perf_counter()
    out = model.generate(**inputs, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                         pad_token_id=0, logits_processor=[stamps])
    return t0, stamps.times, out


with torch.inference_mode():
    run(2)  # warm-up
    t0, times, out = run(new)
assert out.shape[1] == prompt + new, out.shape
assert len(times) == new, len(times)
prefill = times[0] - t0
decode = max(times[-1] - times[0], 1e-9)  # new - 1 decode steps
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"RESULT\t{prompt}\t{batch * prompt / prefill:.1f}\t{batch * (new - 1) / decode:.1f}\t{peak:.0f}")
