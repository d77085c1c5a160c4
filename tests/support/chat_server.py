"""A small OpenAI-compatible chat-completions server on loopback, for the re-ranker's HTTP tests.

`answer(prompt, image)` decides each reply: from the tiny transformers model (real model output), a
literal string, or a misbehaviour (sleep past the client's timeout, HTTP 500, a body that is not a
chat completion). The image arrives as the data URL the client sends and is decoded here.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


class Misbehave(Exception):
    def __init__(self, status: int, body: bytes, delay_s: float = 0.0):
        self.status, self.body, self.delay_s = status, body, delay_s


class ChatServer:
    def __init__(self, answer: Callable[[str, np.ndarray], str]):
        self.answer = answer
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def do_POST(self):
                import time

                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "model": body.get("model"),
                                        "authorization": self.headers.get("Authorization")})
                parts = body["messages"][0]["content"]
                prompt = next(part["text"] for part in parts if part["type"] == "text")
                url = next(part["image_url"]["url"] for part in parts if part["type"] == "image_url")
                image = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
                try:
                    text = server.answer(prompt, image)
                    status, payload, delay = 200, json.dumps({
                        "id": "chatcmpl-test", "object": "chat.completion", "model": body.get("model"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}]}).encode(), 0.0
                except Misbehave as odd:
                    status, payload, delay = odd.status, odd.body, odd.delay_s
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "ChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def tiny_model_answer():
    """answer() from the tiny Qwen2.5-VL: the prompt and image as a chat, greedy decoding."""
    import torch

    from maskdex.operators.rerank.tiny import tiny_model_and_processor

    model, processor = tiny_model_and_processor()
    lock = threading.Lock()

    def answer(prompt: str, image: np.ndarray) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=[Image.fromarray(image)], return_tensors="pt")
        with lock, torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
        return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]

    return answer
