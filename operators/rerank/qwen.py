"""The local transformers backend: a Qwen2.5-VL (any size, or the tiny one) answering on this machine.

Box convention: Qwen2.5-VL grounds in absolute pixels of the image it was fed, which its processor
resized to multiples of 28 within [min_pixels, max_pixels]; that size is read back from
image_grid_thw (grid x patch size) for each image, so the rescale to the original is exact.
"""

from __future__ import annotations

import numpy as np
import torch

from maskdex.operators.common.device import resolve_device
from maskdex.operators.rerank.base import BoxFrame, Reply, Reranker


class TransformersReranker(Reranker):
    def __init__(self, model, processor, *, device="auto", dtype: str | None = "bfloat16", batch_size: int = 8,
                 max_new_tokens: int = 128, name: str = "transformers", prompt_template: str | None = None):
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}")
        self.device = resolve_device(device)
        # bf16 only where it is fast (a GPU); on CPU float32 is both faster and exact.
        self.dtype = getattr(torch, dtype) if (dtype and self.device.type == "cuda") else torch.float32
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.processor = processor
        self.processor.tokenizer.padding_side = "left"  # generation appends on the right of every row
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.name = name
        if prompt_template is not None:
            self.prompt_template = prompt_template
        patch = getattr(processor.image_processor, "patch_size", 14)
        self._patch = int(patch if isinstance(patch, int) else patch[0])

    def judge(self, queries: list[str], images: list[np.ndarray]) -> list[Reply]:
        out: list[Reply] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            try:
                out += self._generate(queries[start:start + self.batch_size], chunk)
            except (RuntimeError, ValueError) as error:  # e.g. out of memory or an image the processor refuses
                out += [Reply(None, None, f"{type(error).__name__}: {error}")] * len(chunk)
        return out

    @torch.inference_mode()
    def _generate(self, queries: list[str], images: list[np.ndarray]) -> list[Reply]:
        from PIL import Image

        texts = [self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt(query)}]}],
            add_generation_prompt=True, tokenize=False) for query in queries]
        inputs = self.processor(text=texts, images=[Image.fromarray(image) for image in images],
                                return_tensors="pt", padding=True)
        grids = inputs["image_grid_thw"].tolist()
        inputs = {key: (value.to(self.device, dtype=self.dtype) if value.is_floating_point() else value.to(self.device))
                  for key, value in inputs.items()}
        generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = generated[:, inputs["input_ids"].shape[1]:]
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return [Reply(reply, BoxFrame.pixels(w * self._patch, h * self._patch)) for reply, (_, h, w) in zip(texts, grids)]

    def close(self) -> None:
        self.model = None
