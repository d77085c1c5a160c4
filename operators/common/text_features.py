"""Text embeddings from any CLIP text tower, optionally averaged over prompt templates."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def embed_texts(
    encode_tokens: Callable[[torch.Tensor], torch.Tensor],
    tokenizer,
    texts: Sequence[str],
    templates: Sequence[str] | None = None,
    *,
    device: torch.device = torch.device("cpu"),
    batch_size: int = 256,
) -> torch.Tensor:
    """(len(texts), D) L2-normalised float32 on the CPU.

    With templates, each text's embedding is the normalised mean of its normalised per-template
    embeddings (the CLIP prompt-ensembling recipe).
    """
    texts = list(texts)
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"texts must be non-empty strings, got {text!r}")
    prompts = [t.format(text) for text in texts for t in templates] if templates else texts
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            tokens = tokenizer(prompts[start : start + batch_size]).to(device)
            chunks.append(F.normalize(encode_tokens(tokens).float(), dim=-1).cpu())
    if not chunks:
        return torch.empty(0, 0)
    embeddings = torch.cat(chunks)
    if templates:
        embeddings = embeddings.view(len(texts), len(templates), -1).mean(dim=1)
    return F.normalize(embeddings, dim=-1)
