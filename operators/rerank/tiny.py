"""A random-weight Qwen2.5-VL and a home-made tokenizer, built with no file and no download.

transformers builds Qwen2.5-VL from a config alone, and its image processor needs no files, but the
Qwen2 tokenizer needs the released vocab/merges files (a download). So the tiny backend trains a
small byte-level BPE tokenizer (the `tokenizers` library, seeded, on a fixed list of strings: the
prompt and the JSON a reply is made of) and registers Qwen's special tokens on it, so the real
processor, chat template, `generate` and decoding run exactly as they do for a released checkpoint.
Its replies are noise, which is what the parser must survive.
"""

from __future__ import annotations

import torch

# Qwen's chat and vision markers, in the order that gives them their ids after the learned vocab.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")
# Enough text for a vocabulary that covers the prompt, yes/no and JSON boxes.
_TRAINING_TEXT = (
    'Is there a dog in the image? Answer with JSON: {"present": "yes", "boxes": [[12, 30, 140, 96]]}',
    '{"present": "no", "boxes": []} {"bbox_2d": [0, 0, 56, 56], "label": "cat"}',
    "yes no Yes No the a an of on in with person car tree sky red blue green 0123456789 , . : [ ] { } \" '",
    "system user assistant You are a helpful assistant. Look at the picture and find the object.",
)
# The same chat layout as Qwen2.5-VL's released template (system, user turn with the image, assistant).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Small enough that a CPU generates a reply for 20 candidates in seconds.
TINY_MAX_PIXELS = 112 * 112
TINY_MIN_PIXELS = 56 * 56


def tiny_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(_TRAINING_TEXT, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                      padding_side="left", chat_template=CHAT_TEMPLATE,
                                      extra_special_tokens={"image_token": "<|image_pad|>",
                                                            "video_token": "<|video_pad|>"})
    return wrapped


def tiny_processor():
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    images = Qwen2VLImageProcessor(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS)
    # The processor insists on a video processor; the re-ranker never sends video.
    videos = Qwen2VLVideoProcessor()
    return Qwen2_5_VLProcessor(image_processor=images, tokenizer=tiny_tokenizer(), video_processor=videos,
                               chat_template=CHAT_TEMPLATE)


def tiny_config(tokenizer):
    from transformers import Qwen2_5_VLConfig

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                # head_dim 16: mrope splits its 8 frequencies over (time, height, width).
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
                bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)


def tiny_model_and_processor(seed: int = 0):
    """(model, processor): a seeded random-weight Qwen2.5-VL and a processor that fits it."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    processor = tiny_processor()
    config = tiny_config(processor.tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    return model.eval(), processor
