"""Re-ranker presets and building them: the only place that reads a re-ranker's weight files.

`tiny` is a seeded random-weight Qwen2.5-VL with a home-made tokenizer (operators/rerank/tiny.py):
no file, no download. A Qwen2.5-VL preset is a directory in the weights directory holding the released
Hugging Face files (config.json, *.safetensors, tokenizer and preprocessor files), e.g.
$MASKDEX_WEIGHTS/Qwen2.5-VL-7B-Instruct/; any other directory of a Qwen2.5-VL checkpoint can be named
with `--rerank-model PATH`. Only safetensors are read. `openai` is a client for a server the user runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from maskdex.operators.registry import remote_weights
from maskdex.operators.registry.weights import (
    MissingWeightsError,
    downloads_allowed,
    weights_dir,
    weights_location,
)

# tiny: the transformers backend with the random-weight tiny Qwen2.5-VL, whatever `model` says.
BACKENDS = ("transformers", "openai", "tiny")
# Sizes of the released instruct models: folder name in the weights directory = the hub repo's name.
QWEN25_VL = {
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen2.5-vl-32b": "Qwen/Qwen2.5-VL-32B-Instruct",
    "qwen2.5-vl-72b": "Qwen/Qwen2.5-VL-72B-Instruct",
}
DEFAULT_MODEL = "qwen2.5-vl-7b"
# The top-N that the second stage looks at unless told otherwise. MaTIR's count is not public; 20 keeps
# a 7B model's re-rank around a few seconds per query on one GPU and covers mAP@50's usual relevant set.
DEFAULT_TOP = 20


@dataclass(frozen=True)
class RerankSettings:
    """Everything that picks and tunes a re-ranker (CLI options and the service config map onto it)."""

    backend: str = "transformers"  # transformers | openai | tiny
    model: str = DEFAULT_MODEL  # transformers: tiny, a preset name or a checkpoint directory; openai: served name
    top: int = DEFAULT_TOP  # first-stage candidates the re-ranker looks at
    batch_size: int = 8  # candidates per generate call (transformers) or requests in flight (openai)
    max_new_tokens: int = 128
    device: str = "auto"
    dtype: str | None = "bfloat16"  # on GPU; CPU always runs float32
    max_pixels: int | None = None  # image size the model sees (None: the checkpoint's own setting)
    endpoint: str | None = None  # openai: base URL, e.g. http://localhost:8001/v1
    api_key: str | None = None  # openai: sent as a bearer token
    timeout_s: float = 60.0  # openai: per request
    box_convention: str = "pixels"  # openai: how the served model writes boxes (see openai_client.py)
    prompt: str | None = None  # a question template with {query}; None: operators/rerank/base.py's

    def check(self) -> "RerankSettings":
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown re-rank backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.top < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("re-rank top, batch size and max new tokens must all be >= 1")
        if self.backend == "openai" and not self.endpoint:
            raise ValueError("the openai re-rank backend needs an endpoint (--rerank-endpoint URL)")
        if self.prompt is not None and "{query}" not in self.prompt:
            raise ValueError("the re-rank prompt must contain {query} where the search text goes")
        return self


def build_reranker(settings: RerankSettings, *, weights: str | os.PathLike | None = None):
    """A Reranker for the settings; MissingWeightsError names the folder a real model was looked for in."""
    settings.check()
    if settings.backend == "openai":
        from maskdex.operators.rerank.openai_client import OpenAIReranker

        options = {} if settings.max_pixels is None else {"max_pixels": settings.max_pixels}
        return OpenAIReranker(settings.endpoint, settings.model, api_key=settings.api_key,
                              timeout_s=settings.timeout_s, concurrency=settings.batch_size,
                              max_tokens=settings.max_new_tokens, box_convention=settings.box_convention,
                              prompt_template=settings.prompt, **options)
    from maskdex.operators.rerank.qwen import TransformersReranker

    if settings.backend == "tiny" or settings.model == "tiny":
        from maskdex.operators.rerank.tiny import tiny_model_and_processor

        model, processor = tiny_model_and_processor()
    else:
        model, processor = load_qwen25_vl(settings.model, weights, max_pixels=settings.max_pixels)
    return TransformersReranker(model, processor, device=settings.device, dtype=settings.dtype,
                                batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens,
                                name="transformers:tiny" if settings.backend == "tiny" else f"transformers:{settings.model}",
                                prompt_template=settings.prompt)


def qwen25_vl_dir(model: str, weights: str | os.PathLike | None = None) -> Path:
    """The checkpoint directory of a preset name (in the weights directory) or of an explicit path."""
    if model in QWEN25_VL:
        hub_id = QWEN25_VL[model]
        folder = hub_id.split("/", 1)[1]
        location = weights_location(weights)
        if remote_weights.is_remote(location):  # copied into this node's cache, which weights_dir names
            remote_weights.cached_tree(location, folder)
        path = weights_dir(weights) / folder
    else:
        hub_id, path = None, Path(model).expanduser()
        if not path.is_absolute() and not path.exists():
            raise ValueError(f"unknown re-rank model {model!r}: choose tiny, one of {', '.join(QWEN25_VL)}, "
                             "or give the path of a Qwen2.5-VL checkpoint directory")
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return path
    if hub_id is not None and downloads_allowed():
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(hub_id, local_dir=path, allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    raise MissingWeightsError(
        f"re-rank model {model!r}: no Qwen2.5-VL checkpoint at {path} (it needs config.json, *.safetensors and "
        f"the tokenizer/preprocessor files{f' of {hub_id}' if hub_id else ''}). Put them there, point "
        "--weights-dir or $MASKDEX_WEIGHTS at the directory that holds the folder"
        + (", or set MASKDEX_ALLOW_DOWNLOAD=1 on a machine with internet access." if hub_id else "."))


def load_qwen25_vl(model: str, weights: str | os.PathLike | None = None, *, max_pixels: int | None = None):
    """(model, processor) of a released Qwen2.5-VL checkpoint directory; safetensors only, no network."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from maskdex.operators.registry.weights import BadCheckpointError

    path = qwen25_vl_dir(model, weights)
    options = {} if max_pixels is None else {"max_pixels": max_pixels}
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True, **options)
        network, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, local_files_only=True, use_safetensors=True, dtype="auto", output_loading_info=True)
    except (OSError, ValueError, KeyError) as error:
        raise BadCheckpointError(f"cannot load the Qwen2.5-VL checkpoint at {path}: {error}") from error
    # transformers fills missing weights with random ones and only warns: a partial checkpoint is an error here.
    problems = {label: sorted(info.get(key) or []) for key, label in (
        ("missing_keys", "missing keys"), ("mismatched_keys", "shape mismatches"), ("unexpected_keys", "unexpected keys"))}
    problems = {label: [str(item) for item in items] for label, items in problems.items() if items}
    if problems:
        raise BadCheckpointError(f"the Qwen2.5-VL checkpoint at {path} does not fit the model: " + "; ".join(
            f"{len(items)} {label}: {', '.join(items[:10])}" + (" ..." if len(items) > 10 else "")
            for label, items in problems.items()))
    return network, processor
