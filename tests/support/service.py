"""The query service for tests: a client for it, the request payloads, and the service config the fixtures in
tests/jobs/serve/conftest.py start it with."""

from __future__ import annotations

import io
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from tests.support.synthetic import example, scene

TOKEN = "test-token-123"
PHOTOS = ("coffee", "chelsea", "astronaut")


def wait_until_healthy(url: str, seconds: float, process: subprocess.Popen | None = None) -> None:
    """Poll GET /healthz until it answers 200. A refused connection or a read timeout means "not yet":
    Serve's proxy listens before the app answers, and a loaded machine can take seconds to reply.
    `process`: the service's own process, whose exit (with its output) ends the wait at once."""
    deadline = time.monotonic() + seconds
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the service process exited with {process.returncode}:\n"
                               f"{process.stdout.read()[-3000:] if process.stdout else ''}")
        try:
            if requests.get(url + "/healthz", timeout=5).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service at {url} did not answer /healthz within {seconds:.0f} s")
        time.sleep(0.5)


@dataclass
class Service:
    url: str
    db: str
    photos: dict[str, Path]  # name -> indexed file

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=120, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=120, **kwargs)

    def add_support(self, set_name: str, image: np.ndarray, labels: np.ndarray, classes: list[str],
                    token: str | None = TOKEN) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        files = {"image": ("image.png", png_bytes(image), "image/png"),
                 "labels": ("labels.png", png_bytes(labels.astype(np.uint8)), "image/png")}
        return self.post("/supports", files=files, data={"set": set_name, "classes": ",".join(classes)},
                         headers=headers)


def png_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def scene_example(seed: int, must: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    image, labels, _ = scene(np.random.default_rng(seed), must=must)
    renumbered, names = example(labels)
    return image, renumbered, names


def service_config(db: str, **maskdex) -> dict:
    return {"maskdex": {"db": db, "preset": "tiny", "device": "cpu", "token": TOKEN, "rns_steps": 60,
                        "limits": {"max_k": 50, "max_upload_bytes": 2_000_000, "max_pixels": 1_000_000,
                                   "max_classes": 8, "max_text_chars": 200}, **maskdex},
            "deployments": {"TextEncoder": {"ray_actor_options": {"num_cpus": 0.5}}}}
