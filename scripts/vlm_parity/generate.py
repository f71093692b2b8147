#!/usr/bin/env python3
"""Builds the VLM parity fixtures: tiny random-weight models made *in transformers*, and what
transformers computes on fixed inputs. elite's tests (tests/vlm_parity.rs) load the same model
directories through elite's own loader and compare.

Not part of CI. Run it from anywhere:

    python3 scripts/vlm_parity/generate.py            # all families
    python3 scripts/vlm_parity/generate.py llava      # one family

On first use it creates its own virtual environment (scripts/vlm_parity/.venv, ignored by git)
with the pinned PyTorch and transformers from PyPI and re-runs itself there; set
VLM_PARITY_PYTHON to an interpreter that already has them to skip that.

For each family it writes tests/data/vlm_parity/<family>/:
  model/                 save_pretrained of the model (safetensors, config) and of its processor
                         (tokenizer.json, tokenizer/processor configs with the chat template)
  image_*.png            the input images
  cases.json             the inputs: chat messages in the processor's format, generation length
  expected.safetensors   per case: pixel_values, input_ids, prefill_logits (the last
                         PREFILL_KEPT positions of the prompt), step_logits (8 greedy decode steps), tokens (the greedy
                         tokens), and for the padded batch case the same with a batch dimension

Everything is seeded and single-threaded, so a rerun rewrites the files bit for bit.

Processors: the PIL backends of transformers' image processors (CLIPImageProcessorPil, ...),
the classic "slow" processors, whose integer resampling elite reproduces exactly. The default
torchvision backends resample in floating point and differ from them by a few intensity levels.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OUT = REPO / "tests" / "data" / "vlm_parity"
PINNED = [
    "torch==2.15.0",
    "transformers==5.24.0",
    "safetensors",
    "numpy",
    # Pillow 13 runs the vertical pass first when the height shrinks much more than the
    # width (python-pillow/Pillow#9549), which moves some pixels by a level or two; elite
    # follows the horizontal-first order every release before it used.
    "pillow==12.3.0",
]
# The processors of families with video inputs import torchvision's transforms (pure Python).
# No torchvision built for torch 2.15 is on PyPI; 0.29's transforms work with it and are
# installed without its dependencies (they would pull in torch 2.14).
NO_DEPS = ["torchvision==0.29.2"]
STEPS = 8
# Prefill logits are kept for the last positions only, so the fixtures stay small.
PREFILL_KEPT = 16


def ensure_environment():
    """Re-executes under a Python that has torch and transformers."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401

        return
    except ImportError:
        pass
    python = os.environ.get("VLM_PARITY_PYTHON")
    if not python:
        venv = HERE / ".venv"
        python = str(venv / "bin" / "python")
        if not Path(python).exists():
            subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
            subprocess.check_call([python, "-m", "pip", "install", "-q", *PINNED])
            subprocess.check_call([python, "-m", "pip", "install", "-q", "--no-deps", *NO_DEPS])
    os.execv(python, [python, __file__, *sys.argv[1:]])


# ---------------------------------------------------------------------------
# The tokenizer: byte-level BPE over the 256 bytes plus the special tokens the families'
# templates need (the same vocabulary elite's `model make-tiny` writes).

SPECIAL_TOKENS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<s>", True),
    ("</s>", True),
    ("<unk>", True),
    ("<image>", True),
    ("<bos>", True),
    ("<eos>", True),
    ("<pad>", True),
    ("<think>", False),
    ("</think>", False),
]
VOCAB = 256 + len(SPECIAL_TOKENS)


def special(token, tokens=None):
    return 256 + [t for t, _ in (tokens or SPECIAL_TOKENS)].index(token)


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = [""] * 256
    for b, c in zip(bs, cs):
        table[b] = chr(c)
    return table


def tokenizer_json(bos=None, tokens=None):
    """The tokenizer; with `bos`, encoding with special tokens prepends it (as Llama's does).
    `tokens` replaces SPECIAL_TOKENS (a family with a vocabulary of its own)."""
    tokens = tokens or SPECIAL_TOKENS
    table = bytes_to_unicode()
    post = None
    if bos is not None:
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [special(bos, tokens)],
                                         "tokens": [bos]}}}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": 256 + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": s}
            for i, (t, s) in enumerate(tokens)
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {c: i for i, c in enumerate(table)}, "merges": []},
    }


def fast_tokenizer(bos=None, tokens=None, **special_tokens):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(json.dumps(tokenizer_json(bos, tokens)))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special_tokens)


# ---------------------------------------------------------------------------
# Inputs

def make_images(directory):
    """Deterministic RGB test images: smooth gradients with a seeded texture."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(20261201)
    specs = {"wide": (40, 24), "large": (83, 61), "tall": (21, 37)}
    images = {}
    for name, (w, h) in specs.items():
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=-1)
        noise = rng.integers(-40, 41, size=(h, w, 3))
        arr = np.clip(base + noise, 0, 255).astype(np.uint8)
        path = directory / f"image_{name}.png"
        Image.fromarray(arr).save(path, optimize=False)
        images[name] = path.name
    return images


def text_part(text):
    return {"type": "text", "text": text}


def image_part(name):
    return {"type": "image", "image": name}


def standard_cases(images, two_images=True):
    cases = [
        {"name": "nonsquare", "messages": [{"role": "user", "content": [
            image_part(images["wide"]), text_part("What is shown here?")]}]},
        {"name": "large", "messages": [{"role": "user", "content": [
            image_part(images["large"]), text_part("Describe the picture in detail.")]}]},
        {"name": "text_only", "messages": [
            {"role": "system", "content": [text_part("You answer briefly.")]},
            {"role": "user", "content": [text_part("Name three colours.")]}]},
    ]
    if two_images:
        cases.append({"name": "two_images", "messages": [{"role": "user", "content": [
            image_part(images["wide"]), image_part(images["tall"]),
            text_part("Compare the two images.")]}]})
    return cases


def batch_case(images):
    """Three prompts of different lengths, run as one left-padded batch."""
    return {"name": "batch", "rows": [
        [{"role": "user", "content": [image_part(images["wide"]), text_part("Hi?")]}],
        [{"role": "user", "content": [image_part(images["tall"]),
                                      text_part("What are the main colours of this image?")]}],
        [{"role": "user", "content": [image_part(images["large"]), text_part("Tell a story.")]}],
    ]}


# ---------------------------------------------------------------------------
# Running transformers

def greedy(model, inputs, steps=STEPS):
    """Prefill logits (batch, seq, vocab), then `steps` greedy decode steps.

    Returns (prefill_logits, step_logits (batch, steps, vocab), tokens (batch, steps))."""
    import torch

    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        prefill = out.logits.float()
        past = out.past_key_values
        last = prefill[:, -1, :]
        mask = inputs.get("attention_mask")
        step_logits, tokens = [], []
        for _ in range(steps):
            tok = last.argmax(-1)
            check_margin(last)
            tokens.append(tok)
            feed = {"input_ids": tok[:, None], "past_key_values": past, "use_cache": True}
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                feed["attention_mask"] = mask
            out = model(**feed)
            past = out.past_key_values
            last = out.logits[:, -1, :].float()
            step_logits.append(last)
    return prefill, torch.stack(step_logits, 1), torch.stack(tokens, 1)


def greedy_generate(model, inputs, steps=STEPS):
    """The same as `greedy`, through `generate` (which keeps model-specific decode state such
    as Qwen-VL's multimodal position offsets)."""
    import torch

    with torch.no_grad():
        prefill = model(**inputs).logits.float()
        # No end-of-sequence token: the reference runs all steps, choosing by raw argmax.
        out = model.generate(**inputs, max_new_tokens=steps + 1, do_sample=False,
                             eos_token_id=None, output_logits=True,
                             return_dict_in_generate=True)
    logits = [x.float() for x in out.logits]
    for x in logits[:steps]:
        check_margin(x)
    n = inputs["input_ids"].shape[1]
    tokens = out.sequences[:, n:n + steps]
    return prefill, torch.stack(logits[1:steps + 1], 1), tokens


def check_margin(logits):
    """A greedy choice decided by less than 1e-3 would make token equality fragile."""
    top = logits.topk(2, dim=-1).values
    gap = (top[:, 0] - top[:, 1]).min().item()
    if gap < 1e-3:
        print(f"  warning: greedy margin {gap:.2e} is small", file=sys.stderr)


def load_images(directory, messages):
    from PIL import Image

    names = [p["image"] for m in messages for p in m["content"] if p["type"] == "image"]
    return [Image.open(directory / n).convert("RGB") for n in names]


def processor_messages(messages):
    """The messages as the chat template sees them (images as bare placeholders)."""
    return [{"role": m["role"], "content": [
        {"type": "image"} if p["type"] == "image" else p for p in m["content"]]} for m in messages]


class TextProcessor:
    """A text-only model's tokenizer behind the processor calls used here: content parts
    become one string (what text tokenizers' templates expect)."""

    def __init__(self, tokenizer, **template_kwargs):
        self.tokenizer = tokenizer
        self.template_kwargs = template_kwargs

    def apply_chat_template(self, messages, **kwargs):
        flat = [{"role": m["role"], "content": "".join(
            p.get("text", "") for p in m["content"])} for m in messages]
        return self.tokenizer.apply_chat_template(flat, **kwargs, **self.template_kwargs)

    def __call__(self, text, images=None, **kwargs):
        assert not images, "a text model takes no images"
        return self.tokenizer(text, **kwargs)


def encode(processor, text, images, **kwargs):
    """The processor call of transformers' `apply_chat_template(tokenize=True)`: no special
    tokens added when the rendered prompt already starts with BOS."""
    bos = processor.tokenizer.bos_token
    if bos is not None and (text[0] if isinstance(text, list) else text).startswith(bos):
        kwargs["add_special_tokens"] = False
    return processor(text=text, images=images, return_tensors="pt", **kwargs)


def run_cases(directory, processor, model, cases, batch, extra_inputs=lambda enc: {},
              decode=None):
    """Runs every case and the batch; writes cases.json and expected.safetensors."""
    import torch
    from safetensors.torch import save_file

    decode = decode or greedy
    tensors = {}
    for case in cases:
        msgs = case["messages"]
        text = processor.apply_chat_template(processor_messages(msgs), add_generation_prompt=True,
                                             tokenize=False)
        images = load_images(directory, msgs) or None
        enc = encode(processor, text, images)
        inputs = {k: v for k, v in enc.items() if k != "attention_mask"}
        inputs.update(extra_inputs(enc))
        prefill, steps, tokens = decode(model, inputs)
        n = case["name"]
        case["prompt"] = text
        tensors[f"{n}.input_ids"] = enc["input_ids"][0].to(torch.int64)
        if "pixel_values" in enc:
            tensors[f"{n}.pixel_values"] = enc["pixel_values"].float()
        tensors[f"{n}.prefill_logits"] = prefill[0, -PREFILL_KEPT:]
        tensors[f"{n}.step_logits"] = steps[0]
        tensors[f"{n}.tokens"] = tokens[0].to(torch.int64)
    if batch is not None:
        texts, images = [], []
        for msgs in batch["rows"]:
            texts.append(processor.apply_chat_template(processor_messages(msgs),
                                                       add_generation_prompt=True, tokenize=False))
            images.extend(load_images(directory, msgs))
        processor.tokenizer.padding_side = "left"
        enc = encode(processor, texts, images or None, padding=True)
        inputs = dict(enc)
        inputs.update(extra_inputs(enc))
        prefill, steps, tokens = decode(model, inputs)
        batch["prompts"] = texts
        tensors["batch.input_ids"] = enc["input_ids"].to(torch.int64)
        tensors["batch.attention_mask"] = enc["attention_mask"].to(torch.int64)
        tensors["batch.last_logits"] = prefill[:, -1, :].contiguous()
        tensors["batch.step_logits"] = steps
        tensors["batch.tokens"] = tokens.to(torch.int64)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(directory / "expected.safetensors"), metadata={"steps": str(STEPS)})
    (directory / "cases.json").write_text(
        json.dumps({"steps": STEPS, "cases": cases, "batch": batch}, indent=1) + "\n")


def write_model(directory, model, processor):
    target = directory / "model"
    model.save_pretrained(target, safe_serialization=True)
    processor.save_pretrained(target)
    # Fixtures stay small: drop files elite does not read and that only repeat others.
    for name in ("special_tokens_map.json",):
        (target / name).unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# Families

# A Vicuna-style template in the shape of the llava-hf ones (role prefixes, one <image>
# line per image before the text, "ASSISTANT:" as the generation prompt); written for these
# fixtures.
LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ part['text'] }}\n{% endfor %}"
    "{% else %}{{ message['role'].upper() + ': ' }}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ part['text'] + ' ' }}{% endgeneration %}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def llava_configs(next_):
    from transformers import CLIPVisionConfig, LlamaConfig

    text = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=512,
                       bos_token_id=special("<s>"), eos_token_id=special("</s>"),
                       pad_token_id=special("<pad>"), tie_word_embeddings=False,
                       initializer_range=0.2)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2, image_size=16, patch_size=4,
                              projection_dim=16, hidden_act="quick_gelu",
                              initializer_range=0.2)
    return text, vision


def family_llava(directory, next_=False):
    import torch
    from transformers import (LlavaConfig, LlavaForConditionalGeneration, LlavaNextConfig,
                              LlavaNextForConditionalGeneration, LlavaNextProcessor,
                              LlavaProcessor)
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(0)
    text, vision = llava_configs(next_)
    common = dict(text_config=text, vision_config=vision, image_token_index=special("<image>"),
                  projector_hidden_act="gelu", vision_feature_layer=-2,
                  vision_feature_select_strategy="default")
    tok = fast_tokenizer(bos="<s>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                         pad_token="<pad>")
    if next_:
        from transformers.models.llava_next.image_processing_pil_llava_next import \
            LlavaNextImageProcessorPil

        pinpoints = [[16, 32], [32, 16], [32, 32]]
        config = LlavaNextConfig(image_grid_pinpoints=pinpoints, **common)
        model = LlavaNextForConditionalGeneration(config)
        # transformers initialises image_newline from a normal with std 1/sqrt(hidden); any
        # fixed values would do, these are the seeded ones.
        improc = LlavaNextImageProcessorPil(size={"shortest_edge": 16},
                                            crop_size={"height": 16, "width": 16},
                                            image_grid_pinpoints=pinpoints)
        processor = LlavaNextProcessor(image_processor=improc, tokenizer=tok, patch_size=4,
                                       vision_feature_select_strategy="default",
                                       num_additional_image_tokens=1,
                                       chat_template=LLAVA_TEMPLATE)
    else:
        config = LlavaConfig(**common)
        model = LlavaForConditionalGeneration(config)
        improc = CLIPImageProcessorPil(size={"shortest_edge": 16},
                                       crop_size={"height": 16, "width": 16})
        processor = LlavaProcessor(image_processor=improc, tokenizer=tok, patch_size=4,
                                   vision_feature_select_strategy="default",
                                   num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    model.eval()
    write_model(directory, model, processor)
    images = make_images(directory)
    cases = standard_cases(images)
    extra = (lambda enc: {k: enc[k] for k in ("image_sizes",) if k in enc}) if next_ else (lambda enc: {})
    run_cases(directory, processor, model, cases, batch_case(images), extra)


def pil_resize_cases(directory):
    """Pillow's resampling on a random image: elite's `pil_resize` must equal it exactly."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    rng = np.random.default_rng(7)
    src = rng.integers(0, 256, size=(31, 23, 3), dtype=np.uint8)
    out = {"source": torch.from_numpy(src)}
    sizes = [(16, 16), (11, 29), (40, 9), (7, 5), (46, 62), (23, 12), (5, 31)]
    for name, code in (("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)):
        for w, h in sizes:
            img = Image.fromarray(src).resize((w, h), resample=code)
            out[f"{name}.{w}x{h}"] = torch.from_numpy(np.asarray(img).copy())
    save_file(out, str(directory / "expected.safetensors"))


# A ChatML template in the shape of Qwen3's (role blocks, the empty thinking block when
# thinking is switched off); written for these fixtures.
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)


def family_qwen3(directory):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=8, max_position_embeddings=512, rope_theta=1_000_000.0,
                         rms_norm_eps=1e-6, tie_word_embeddings=False,
                         bos_token_id=special("<|endoftext|>"),
                         eos_token_id=special("<|im_end|>"), initializer_range=0.2)
    model = Qwen3ForCausalLM(config).eval()
    tok = fast_tokenizer(eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = QWEN3_TEMPLATE
    processor = TextProcessor(tok, enable_thinking=False)
    model.save_pretrained(directory / "model", safe_serialization=True)
    tok.save_pretrained(directory / "model")
    cases = [
        {"name": "text_only", "messages": [
            {"role": "system", "content": [text_part("You answer briefly.")]},
            {"role": "user", "content": [text_part("Name three colours.")]}]},
        {"name": "multi_turn", "messages": [
            {"role": "user", "content": [text_part("Hello!")]},
            {"role": "assistant", "content": [text_part("Hi, how can I help?")]},
            {"role": "user", "content": [text_part("  Count to five, please.  ")]}]},
    ]
    batch = {"name": "batch", "rows": [
        [{"role": "user", "content": [text_part("Hi?")]}],
        [{"role": "user", "content": [text_part("What are the main colours of a rainbow?")]}],
        [{"role": "user", "content": [text_part("Tell a story.")]}],
    ]}
    run_cases(directory, processor, model, cases, batch)


class PromptProcessor:
    """PaliGemma has no chat template: its prompt is the text of the messages joined by
    newlines (elite's convention), which the processor prefixes with the image tokens and BOS
    and ends with a newline."""

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = processor.tokenizer

    def apply_chat_template(self, messages, **kwargs):
        return "\n".join(p["text"] for m in messages for p in m["content"] if p["type"] == "text")

    def __call__(self, text, images=None, add_special_tokens=None, **kwargs):
        return self.processor(text=text, images=images, **kwargs)


def family_paligemma(directory):
    import torch
    from transformers import (GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration,
                              PaliGemmaProcessor, SiglipVisionConfig)
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    torch.manual_seed(0)
    text = GemmaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                       head_dim=8, max_position_embeddings=512, rms_norm_eps=1e-6,
                       rope_theta=10000.0, hidden_activation="gelu_pytorch_tanh",
                       bos_token_id=special("<bos>"), eos_token_id=special("<eos>"),
                       pad_token_id=special("<pad>"), initializer_range=0.2)
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                num_attention_heads=2, image_size=16, patch_size=4,
                                layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
                                vision_use_head=False)
    config = PaliGemmaConfig(text_config=text, vision_config=vision,
                             image_token_index=special("<image>"), projection_dim=32,
                             hidden_size=32, initializer_range=0.2)
    model = PaliGemmaForConditionalGeneration(config).eval()
    tok = fast_tokenizer(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                         unk_token="<unk>")
    improc = SiglipImageProcessorPil(size={"height": 16, "width": 16})
    improc.image_seq_length = 16
    processor = PaliGemmaProcessor(image_processor=improc, tokenizer=tok)
    write_model(directory, model, processor)
    images = make_images(directory)
    cases = [c for c in standard_cases(images, two_images=False) if c["name"] != "text_only"]
    run_cases(directory, PromptProcessor(processor), model, cases, batch_case(images))


# A ChatML template in the shape of the Qwen-VL ones (each image as a vision block before
# the text, no default system prompt); written for these fixtures.
QWEN_VL_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def family_qwen3_vl(directory):
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import \
        Qwen2VLImageProcessorPil

    torch.manual_seed(0)
    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                max_position_embeddings=512, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                                 "mrope_section": [2, 1, 1], "mrope_interleaved": True},
                initializer_range=0.2, bos_token_id=special("<|endoftext|>"),
                eos_token_id=special("<|im_end|>"), tie_word_embeddings=True)
    vision = dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32,
                  num_position_embeddings=16, deepstack_visual_indexes=[0],
                  hidden_act="gelu_pytorch_tanh", initializer_range=0.2)
    config = Qwen3VLConfig(text_config=text, vision_config=vision,
                           image_token_id=special("<|image_pad|>"),
                           video_token_id=special("<|video_pad|>"),
                           vision_start_token_id=special("<|vision_start|>"),
                           vision_end_token_id=special("<|vision_end|>"),
                           tie_word_embeddings=True)
    model = Qwen3VLForConditionalGeneration(config).eval()
    tok = fast_tokenizer(eos_token="<|im_end|>", pad_token="<|endoftext|>")
    improc = Qwen2VLImageProcessorPil(patch_size=4, temporal_patch_size=2, merge_size=2,
                                      size={"shortest_edge": 256, "longest_edge": 1024},
                                      image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    video = Qwen3VLVideoProcessor(patch_size=4, temporal_patch_size=2, merge_size=2)
    processor = Qwen3VLProcessor(image_processor=improc, tokenizer=tok, video_processor=video,
                                 chat_template=QWEN_VL_TEMPLATE)
    write_model(directory, model, processor)
    images = make_images(directory)
    run_cases(directory, processor, model, standard_cases(images), batch_case(images),
              lambda enc: {k: enc[k] for k in ("image_grid_thw",) if k in enc},
              decode=greedy_generate)


def family_qwen2_vl(directory, v25=False):
    """Qwen2-VL, or with `v25` Qwen2.5-VL (windowed vision attention, RMSNorm and SwiGLU in
    the vision tower). Both: Qwen2 decoder (q/k/v biases) with sectioned multimodal RoPE."""
    import torch
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import \
        Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    torch.manual_seed(0)
    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                 "mrope_section": [2, 1, 1]},
                initializer_range=0.2, bos_token_id=special("<|endoftext|>"),
                eos_token_id=special("<|im_end|>"), tie_word_embeddings=False)
    common = dict(image_token_id=special("<|image_pad|>"),
                  video_token_id=special("<|video_pad|>"),
                  vision_start_token_id=special("<|vision_start|>"),
                  vision_end_token_id=special("<|vision_end|>"), tie_word_embeddings=False)
    if v25:
        from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                                  Qwen2_5_VLProcessor)

        # Windows of 16 pixels = 2×2 merged tokens; block 1 attends over the whole image.
        vision = dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2,
                      patch_size=4, spatial_merge_size=2, temporal_patch_size=2,
                      out_hidden_size=32, window_size=16, fullatt_block_indexes=[1],
                      hidden_act="silu", initializer_range=0.2)
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
        proc_class = Qwen2_5_VLProcessor
    else:
        from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                                  Qwen2VLProcessor)

        vision = dict(depth=2, embed_dim=16, hidden_size=32, mlp_ratio=2, num_heads=2,
                      patch_size=4, spatial_merge_size=2, temporal_patch_size=2,
                      hidden_act="quick_gelu", initializer_range=0.2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **common)
        model = Qwen2VLForConditionalGeneration(config).eval()
        proc_class = Qwen2VLProcessor
    tok = fast_tokenizer(eos_token="<|im_end|>", pad_token="<|endoftext|>")
    improc = Qwen2VLImageProcessorPil(patch_size=4, temporal_patch_size=2, merge_size=2,
                                      size={"shortest_edge": 256, "longest_edge": 1024},
                                      image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    video = Qwen2VLVideoProcessor(patch_size=4, temporal_patch_size=2, merge_size=2)
    processor = proc_class(image_processor=improc, tokenizer=tok, video_processor=video,
                           chat_template=QWEN_VL_TEMPLATE)
    write_model(directory, model, processor)
    images = make_images(directory)
    run_cases(directory, processor, model, standard_cases(images), batch_case(images),
              lambda enc: {k: enc[k] for k in ("image_grid_thw",) if k in enc},
              decode=greedy_generate)


# Pixtral's vocabulary: the shared special tokens, then the Mistral control and image tokens
# its processor and template use (own list, so the other families' vocabulary is unchanged;
# elite's `model make-tiny pixtral` appends the same ones).
PIXTRAL_TOKENS = SPECIAL_TOKENS + [
    ("[INST]", True),
    ("[/INST]", True),
    ("[IMG]", True),
    ("[IMG_BREAK]", True),
    ("[IMG_END]", True),
]

# A Mistral-style template in the shape of the Pixtral ones (BOS, each user turn in
# [INST]...[/INST] with its parts in order and [IMG] for an image, the system text before
# the first user turn's parts, assistant turns closed by EOS, no generation prompt);
# written for these fixtures.
PIXTRAL_TEMPLATE = (
    "{{- bos_token }}"
    "{%- set ns = namespace(system='') %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{%- for part in message['content'] %}{%- if part['type'] == 'text' %}"
    "{%- set ns.system = ns.system + part['text'] + '\n\n' %}{%- endif %}{%- endfor %}"
    "{%- elif message['role'] == 'user' %}"
    "{{- '[INST]' + ns.system }}{%- set ns.system = '' %}"
    "{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '[IMG]' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}"
    "{{- '[/INST]' }}"
    "{%- else %}"
    "{%- for part in message['content'] %}{%- if part['type'] == 'text' %}"
    "{{- part['text'] }}{%- endif %}{%- endfor %}{{- eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)


def family_pixtral(directory):
    """Pixtral: LLaVA with transformers' PixtralVisionModel (2-D RoPE ViT at the image's own
    patch grid) and a Mistral text model. The text model's head_dim is not hidden/heads, as
    in Pixtral-12B."""
    import importlib.util

    import torch
    from transformers import (LlavaConfig, LlavaForConditionalGeneration, MistralConfig,
                              PixtralVisionConfig)
    from transformers.models.pixtral import image_processing_pil_pixtral
    from transformers.models.pixtral.image_processing_pil_pixtral import \
        PixtralImageProcessorPil

    if importlib.util.find_spec("torchvision") is None:
        # PixtralProcessor imports one helper (the token count for a size, unused here)
        # from the torchvision image processor module; without torchvision, the PIL module
        # provides the same function. The processor's own code is unchanged.
        sys.modules.setdefault("transformers.models.pixtral.image_processing_pixtral",
                               image_processing_pil_pixtral)
    from transformers.models.pixtral.processing_pixtral import PixtralProcessor

    torch.manual_seed(0)
    sp = lambda t: special(t, PIXTRAL_TOKENS)  # noqa: E731
    text = MistralConfig(vocab_size=256 + len(PIXTRAL_TOKENS), hidden_size=32,
                         intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default",
                                          "rope_theta": 1_000_000_000.0},
                         max_position_embeddings=512, sliding_window=None,
                         bos_token_id=sp("<s>"), eos_token_id=sp("</s>"),
                         pad_token_id=sp("<pad>"), tie_word_embeddings=False,
                         initializer_range=0.2)
    vision = PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, image_size=32, patch_size=4,
                                 hidden_act="silu",
                                 rope_parameters={"rope_type": "axial", "rope_theta": 10000.0},
                                 initializer_range=0.2)
    config = LlavaConfig(text_config=text, vision_config=vision,
                         image_token_index=sp("[IMG]"), projector_hidden_act="gelu",
                         vision_feature_layer=-1, vision_feature_select_strategy="full")
    model = LlavaForConditionalGeneration(config).eval()
    tok = fast_tokenizer(bos="<s>", tokens=PIXTRAL_TOKENS, bos_token="<s>", eos_token="</s>",
                         unk_token="<unk>", pad_token="<pad>")
    improc = PixtralImageProcessorPil(size={"longest_edge": 32},
                                      patch_size={"height": 4, "width": 4})
    processor = PixtralProcessor(image_processor=improc, tokenizer=tok, patch_size=4,
                                 chat_template=PIXTRAL_TEMPLATE)
    write_model(directory, model, processor)
    images = make_images(directory)
    run_cases(directory, processor, model, standard_cases(images), batch_case(images))


# InternVL's vocabulary: the shared special tokens, then the image wrapper, image context and
# video tokens its processor uses (own list, as Pixtral's; `model make-tiny internvl`
# appends the same ones).
INTERNVL_TOKENS = SPECIAL_TOKENS + [
    ("<img>", True),
    ("</img>", True),
    ("<IMG_CONTEXT>", True),
    ("<video>", True),
]

# A ChatML template in the shape of the InternVL "-hf" ones (each image as an <IMG_CONTEXT>
# line before the text, no default system prompt); written for these fixtures.
INTERNVL_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<IMG_CONTEXT>\\n' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def randomize_constants(model, seed):
    """Gives the parameters transformers initialises to constants (class token, position
    table, layer scales, norms) seeded random values, so that the parity test sees every
    one of them used in the right place."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "language_model" in name:
                continue
            if any(k in name for k in ("cls_token", "position_embeddings", "lambda_", "norm")):
                base = 1.0 if name.endswith("norm.weight") or "lambda_" in name else 0.0
                p.copy_(base + 0.5 * torch.randn(p.shape, generator=g))


def family_internvl(directory, big=False):
    """InternVL (2.5 / 3 "-hf" layout): InternViT tiles with pixel-shuffle downsampling and
    an MLP projector before a Qwen2 decoder. With `big`, the InternViT-6B options (RMSNorm
    layers, per-projection query/key RMSNorm, a final vision norm) and a Qwen3 decoder."""
    import torch
    from transformers import (InternVLConfig, InternVLForConditionalGeneration,
                              InternVLProcessor)
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import \
        GotOcr2ImageProcessorPil

    torch.manual_seed(0)
    sp = lambda t: special(t, INTERNVL_TOKENS)  # noqa: E731
    text = dict(model_type="qwen3" if big else "qwen2", vocab_size=256 + len(INTERNVL_TOKENS),
                hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                rms_norm_eps=1e-6, rope_parameters={"rope_type": "default",
                                                    "rope_theta": 1_000_000.0},
                initializer_range=0.2, bos_token_id=sp("<|endoftext|>"),
                eos_token_id=sp("<|im_end|>"), tie_word_embeddings=big)
    if big:
        text["head_dim"] = 16
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=2, image_size=[16, 16], patch_size=[4, 4],
                  attention_bias=not big, use_qk_norm=big,
                  norm_type="rms_norm" if big else "layer_norm", use_mean_pooling=not big,
                  hidden_act="gelu", layer_norm_eps=1e-6, initializer_range=0.2)
    config = InternVLConfig(text_config=text, vision_config=vision,
                            image_token_id=sp("<IMG_CONTEXT>"), image_seq_length=4,
                            downsample_ratio=0.5, projector_hidden_act="gelu",
                            vision_feature_layer=-1, vision_feature_select_strategy="default",
                            tie_word_embeddings=big)
    model = InternVLForConditionalGeneration(config).eval()
    randomize_constants(model, 1)
    tok = fast_tokenizer(tokens=INTERNVL_TOKENS, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>",
                         extra_special_tokens={"start_image_token": "<img>",
                                               "end_image_token": "</img>",
                                               "context_image_token": "<IMG_CONTEXT>",
                                               "video_token": "<video>"})
    improc = GotOcr2ImageProcessorPil(size={"height": 16, "width": 16}, crop_to_patches=False,
                                      min_patches=1, max_patches=4,
                                      image_mean=[0.485, 0.456, 0.406],
                                      image_std=[0.229, 0.224, 0.225])
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

    video = InternVLVideoProcessor(size={"height": 16, "width": 16})
    processor = InternVLProcessor(image_processor=improc, tokenizer=tok, video_processor=video,
                                  image_seq_length=4, chat_template=INTERNVL_TEMPLATE)
    write_model(directory, model, processor)
    images = make_images(directory)
    run_cases(directory, processor, model, standard_cases(images), batch_case(images))


FAMILIES = {
    "qwen2_vl": family_qwen2_vl,
    "qwen2_5_vl": lambda d: family_qwen2_vl(d, v25=True),
    "pil_resize": pil_resize_cases,
    "qwen3_vl": family_qwen3_vl,
    "paligemma": family_paligemma,
    "qwen3": family_qwen3,
    "llava": lambda d: family_llava(d, next_=False),
    "llava_next": lambda d: family_llava(d, next_=True),
    "pixtral": family_pixtral,
    "internvl": family_internvl,
    "internvl_big": lambda d: family_internvl(d, big=True),
}


def main():
    ensure_environment()
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    wanted = sys.argv[1:] or list(FAMILIES)
    for name in wanted:
        if name not in FAMILIES:
            sys.exit(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")
        directory = OUT / name
        if directory.exists():
            for p in sorted(directory.rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
        directory.mkdir(parents=True, exist_ok=True)
        print(f"{name}: writing {directory.relative_to(REPO)}")
        FAMILIES[name](directory)


if __name__ == "__main__":
    main()
