"""The query service for tests: a small tiny-preset index built once, and the real application started on
the local Ray (loopback, a free port) for a test module. Import the fixtures into a test module."""

from __future__ import annotations

import io
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from skimage import data

from tests.synthetic import example, scene

TOKEN = "test-token-123"
PHOTOS = ("coffee", "chelsea", "astronaut")


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


@pytest.fixture(scope="session")
def serve_db(tmp_path_factory, ray_local) -> tuple[str, dict[str, Path]]:
    """A tiny-preset index of three small photos."""
    from pipelines.index_job import run_index
    from tests.corpus import index_settings

    root = tmp_path_factory.mktemp("serve_corpus")
    photos = {}
    for name in PHOTOS:
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        image.thumbnail((160, 160))
        photos[name] = root / f"{name}.jpg"
        image.save(photos[name], quality=90)
    db = str(tmp_path_factory.mktemp("serve_db") / "db")
    run_index([str(path) for path in photos.values()], db, index_settings(commit_every=4))
    return db, photos


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def service(serve_db, ray_local) -> Service:
    from ray import serve

    from jobs.serve.app import start
    from jobs.serve.config import parse_config

    db, photos = serve_db
    url = start(parse_config(service_config(db)), host="127.0.0.1", port=free_port())
    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(url + "/healthz", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service at {url} did not answer /healthz")
        time.sleep(0.5)
    yield Service(url, db, photos)
    serve.shutdown()
