"""Build a tiny random-weight Qwen2-VL model that vLLM can serve on a CPU.

Usage (with the vLLM venv's python, see tests/vllm/install.sh):
    .venv-vllm/bin/python tests/vllm/build_tiny_vlm.py OUT_DIR

No download: weights are random (fixed seed), the tokenizer is a byte-level
BPE trained here on a few sentences. Its output is noise; it exists so that
integration tests can exercise the real server (images, structured output,
reasoning parser, errors). Idempotent: a complete OUT_DIR is left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Bump when anything below changes, so stale builds get rebuilt.
BUILD_VERSION = "tiny-qwen2vl-v2-ctx32k"
STAMP = ".tiny-vlm-complete"

# Pixels bound an image's token count: 28x28 px per token after the 2x2 merge.
# 256 tokens max (448x448 px); a 256x256 image becomes 252x252 = 81 tokens.
MIN_PIXELS = 28 * 28 * 4
MAX_PIXELS = 28 * 28 * 256

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Not "special": they must survive skip_special_tokens so that the reasoning
# parser sees them in the decoded text (as in Qwen3).
THINK = ["<think>", "</think>"]

# ChatML. Image parts (any of the shapes vLLM or transformers pass) become the
# Qwen2-VL placeholder. Thinking defaults to on, like Qwen3 and like vLLM's
# qwen3 reasoning parser; enable_thinking=false closes an empty think block in
# the prompt so that the whole answer is content.
CHAT_TEMPLATE = (
    # newlines are jinja string literals: {%- -%} would eat raw ones
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] }}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] in ('image', 'image_url') or 'image' in part -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' -%}"
    "{{ part['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and not enable_thinking -%}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
)

# Training text for the tokenizer: written for this file, any text would do.
CORPUS = [
    "The quarterly report lists revenue by region and by product line.",
    "Table 3 on page 12 compares the error rates of four methods.",
    "Question: what is the total shown in the second chart? Answer: 42.",
    "A long document has many pages, figures, tables and footnotes.",
    "The model reads the page image and answers in short JSON.",
    "Figure 2 plots accuracy against the number of training steps.",
    '{"answer": "yes", "page": 3, "evidence": ["table", "chart"]}',
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 2024 3.14 -7",
    "Let me think step by step before giving the final answer.",
    "Das Dokument enthält Grafiken; le tableau montre les résultats.",
]

TOKENIZER_VOCAB = 640  # bytes (256) + merges + added tokens
TEXT = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
)  # room for many page images
# head_dim 32 -> 16 rotary pairs split over (time, height, width)
MROPE_SECTION = [4, 6, 6]
VISION = dict(
    depth=1,
    embed_dim=64,
    num_heads=2,
    mlp_ratio=2,
    hidden_size=TEXT["hidden_size"],
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    in_channels=3,
)
SEED = 1234


def is_complete(out: Path) -> bool:
    stamp = out / STAMP
    return stamp.is_file() and stamp.read_text().strip() == BUILD_VERSION


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB - len(SPECIAL) - len(THINK),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte encodes
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL,
        model_max_length=TEXT["max_position_embeddings"],
    )
    fast.add_tokens(THINK)  # plain added tokens: single ids, kept in decoded text
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build(out: Path) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    torch.manual_seed(SEED)
    tok = build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL + THINK}
    assert all(isinstance(i, int) and i >= 0 for i in ids.values()), ids
    for t in THINK:  # the reasoning parsers look these up as single tokens
        assert tok.encode(t, add_special_tokens=False) == [ids[t]], t
    vocab = (len(tok) + 63) // 64 * 64  # room for every id, padded

    text_cfg = dict(
        TEXT,
        vocab_size=vocab,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        rope_scaling={"type": "mrope", "mrope_section": MROPE_SECTION, "rope_theta": 1e6},
    )
    config = Qwen2VLConfig(
        text_config=text_cfg,
        vision_config=dict(VISION),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    model = Qwen2VLForConditionalGeneration(config).to(torch.bfloat16).eval()
    # Default init leaves logits nearly flat; wider embeddings give the random
    # model some preference between tokens (still noise, but less uniform).
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.05)

    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )

    image_proc = Qwen2VLImageProcessor(
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        patch_size=VISION["patch_size"],
        merge_size=VISION["spatial_merge_size"],
        temporal_patch_size=VISION["temporal_patch_size"],
    )
    # The processor insists on a video processor even though no video is served.
    video_proc = Qwen2VLVideoProcessor(
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        patch_size=VISION["patch_size"],
        merge_size=VISION["spatial_merge_size"],
        temporal_patch_size=VISION["temporal_patch_size"],
    )
    processor = Qwen2VLProcessor(
        image_processor=image_proc, tokenizer=tok, video_processor=video_proc, chat_template=CHAT_TEMPLATE
    )

    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    tok.save_pretrained(out)
    # A plain jinja file is what vLLM and transformers both look for first.
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    n_params = sum(p.numel() for p in model.parameters())
    (out / "tiny_vlm_info.json").write_text(
        json.dumps(
            {
                "build": BUILD_VERSION,
                "params": n_params,
                "vocab_size": vocab,
                "special_ids": ids,
                "min_pixels": MIN_PIXELS,
                "max_pixels": MAX_PIXELS,
            },
            indent=1,
            sort_keys=True,
        )
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1]).resolve()
    if is_complete(out):
        print(f"tiny VLM already built in {out}")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build beside OUT_DIR and swap in at the end: an interrupted build never
    # looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        build(tmp)
        (tmp / STAMP).write_text(BUILD_VERSION + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.chmod(0o755)  # mkdtemp made it private
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    info = json.loads((out / "tiny_vlm_info.json").read_text())
    print(f"built tiny VLM in {out}: {info['params']} params, vocab {info['vocab_size']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
