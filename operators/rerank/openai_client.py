"""The OpenAI-compatible backend: POST /v1/chat/completions on a server the user already runs (vLLM,
SGLang, Ollama, ...), one request per candidate, several in flight at once (the server batches them).

Endpoint, model name and key come from the service config or CLI options, never from a search request.
Every failure (refused connection, timeout, HTTP error, a body that is not a chat completion) becomes a
Reply.error naming the cause; this class never raises for what the server does.

Box convention (`box_convention`): "pixels" (default): absolute pixels of the image as sent. The image
is resized here the way Qwen2.5-VL's processor would (sides multiples of 28, at most `max_pixels`),
so a Qwen2.5-VL server feeds it to the model unchanged and its pixel boxes are in that frame.
"normalized-1000": 0..1000 on both axes (Qwen2-VL, Qwen3-VL); "normalized-1": 0..1.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from maskdex.operators.rerank.base import BoxFrame, Reply, Reranker

BOX_CONVENTIONS = ("pixels", "normalized-1000", "normalized-1")
_FACTOR = 28  # Qwen2.5-VL: patch 14 x spatial merge 2


def qwen_resize(height: int, width: int, *, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280,
                factor: int = _FACTOR) -> tuple[int, int]:
    """(h, w): multiples of `factor`, aspect kept, pixel count within bounds (Qwen2.5-VL's rule)."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


class OpenAIReranker(Reranker):
    def __init__(self, endpoint: str, model: str, *, api_key: str | None = None, timeout_s: float = 60.0,
                 concurrency: int = 8, max_tokens: int = 256, max_pixels: int = 28 * 28 * 1280,
                 box_convention: str = "pixels", prompt_template: str | None = None):
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"the re-rank endpoint must be an http(s) URL, got {endpoint!r}")
        if box_convention not in BOX_CONVENTIONS:
            raise ValueError(f"unknown box convention {box_convention!r}; choose one of {', '.join(BOX_CONVENTIONS)}")
        if not model:
            raise ValueError("the OpenAI-compatible backend needs a model name (--rerank-model)")
        if concurrency < 1 or timeout_s <= 0:
            raise ValueError(f"concurrency must be >= 1 and timeout > 0, got {concurrency}, {timeout_s}")
        base = endpoint.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model
        self._key = api_key
        self.timeout_s = timeout_s
        self.batch_size = concurrency
        self.max_tokens = max_tokens
        self.max_pixels = max_pixels
        self.box_convention = box_convention
        self.name = f"openai:{model}@{self.url}"
        if prompt_template is not None:
            self.prompt_template = prompt_template
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="rerank-http")

    def judge(self, queries: list[str], images: list[np.ndarray]) -> list[Reply]:
        return list(self._pool.map(lambda pair: self._ask(self.prompt(pair[0]), pair[1]), zip(queries, images)))

    def _ask(self, prompt: str, image: np.ndarray) -> Reply:
        data_url, frame = self._encode(image)
        body = {"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": data_url}},
                    {"type": "text", "text": prompt}]}]}
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read(4_000_000)
        except urllib.error.HTTPError as error:
            detail = error.read(300).decode("utf-8", "replace").strip()
            return Reply(None, None, f"re-rank server answered HTTP {error.code}" + (f": {detail}" if detail else ""))
        except (TimeoutError, socket.timeout):
            return Reply(None, None, f"re-rank server did not answer within {self.timeout_s:g} s")
        except urllib.error.URLError as error:
            reason = error.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                return Reply(None, None, f"re-rank server did not answer within {self.timeout_s:g} s")
            return Reply(None, None, f"cannot reach the re-rank server at {self.url}: {reason}")
        except (OSError, http.client.HTTPException) as error:
            return Reply(None, None, f"re-rank server connection failed: {type(error).__name__}: {error}")
        try:
            text = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return Reply(None, None, "re-rank server's answer is not a chat completion: "
                         + raw[:120].decode("utf-8", "replace"))
        if isinstance(text, list):  # content parts
            text = "".join(part.get("text", "") for part in text if isinstance(part, dict))
        if not isinstance(text, str):
            return Reply(None, None, "re-rank server's message content is not text")
        return Reply(text, frame)

    def _encode(self, image: np.ndarray) -> tuple[str, BoxFrame]:
        from PIL import Image

        height, width = image.shape[:2]
        h, w = qwen_resize(height, width, max_pixels=self.max_pixels)
        buffer = io.BytesIO()
        Image.fromarray(image).resize((w, h), Image.BICUBIC).save(buffer, format="JPEG", quality=90)
        url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        if self.box_convention == "pixels":
            return url, BoxFrame.pixels(w, h)
        return url, BoxFrame.normalized(1000.0 if self.box_convention == "normalized-1000" else 1.0)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
