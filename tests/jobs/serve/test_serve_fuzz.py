"""Hundreds of malformed requests: none may get a 5xx, and the service must still answer afterwards."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.service import TOKEN, png_bytes, scene_example

pytestmark = pytest.mark.slow

REQUESTS = 600
ENDPOINTS = ("/search", "/segment", "/supports", "/images/{}", "/images/{}/regions")
HUGE = (10**40, -(10**40), 2**63, 1e308, -1e308, float("inf"), float("nan"))


def _value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice((True, False))
    if kind == 2:
        return rng.choice(HUGE + (0, -1, 1, 3))
    if kind == 3:
        return rng.random() * rng.choice((1, 1e9, -1e9))
    if kind in (4, 5, 6):
        return "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.choice((0, 1, 5, 40, 300))))
    if kind in (7, 8):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(("text", "k", "filters", "set", "classes", "mode", "image_id", "seed", "x")): _value(rng, depth + 1)
            for _ in range(rng.randrange(5))}


def _json_body(rng: random.Random) -> bytes:
    body = {key: _value(rng) for key in rng.sample(("text", "k", "oversample", "templates", "filters", "set",
                                                    "classes", "mode", "image_id", "seed", "shots_only"),
                                                   rng.randrange(1, 5))}
    text = json.dumps(body, allow_nan=True)
    if rng.random() < 0.15:  # cut short: not JSON any more
        text = text[: rng.randrange(len(text) + 1)]
    return text.encode("utf-8", "surrogatepass")


def _fuzz_request(rng: random.Random, url: str) -> tuple[str, str, dict]:
    endpoint = rng.choice(ENDPOINTS)
    if "{}" in endpoint:
        garbage = "".join(rng.choice("0123456789abcdefXYZ%._-~") for _ in range(rng.choice((1, 12, 64, 65))))
        return "get", url + endpoint.format(garbage), {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    roll = rng.random()
    if roll < 0.45:
        return "post", url + endpoint, {"data": _json_body(rng), "headers": {**headers, "Content-Type": "application/json"}}
    if roll < 0.85:
        image = rng.randbytes(rng.choice((0, 1, 64, 5000)))
        if rng.random() < 0.3:  # a real PNG header with garbage after it
            image = png_bytes(scene_example(seed=rng.randrange(100), must=0)[0])[:60] + image
        fields = {key: str(_value(rng))[:200] for key in rng.sample(("set", "classes", "mode", "seed", "shots_only"),
                                                                      rng.randrange(5))}
        files = {name: ("f", rng.randbytes(rng.randrange(200)) if name == "labels" else image)
                 for name in rng.sample(("image", "labels", "other"), rng.randrange(1, 3))}
        return "post", url + endpoint, {"files": files, "data": fields, "headers": headers}
    return "post", url + endpoint, {"data": rng.randbytes(rng.randrange(300)),
                                    "headers": {**headers, "Content-Type": rng.choice(
                                        ("multipart/form-data; boundary=x", "application/octet-stream", "text/plain",
                                         "application/json", "multipart/form-data"))}}


def test_malformed_requests_never_get_a_5xx(service):
    rng = random.Random(1234)
    plans = [_fuzz_request(rng, service.url) for _ in range(REQUESTS)]

    def send(plan):
        method, url, kwargs = plan
        try:
            response = requests.request(method, url, timeout=60, **kwargs)
        except requests.RequestException as error:
            return url, None, repr(error)
        return url, response.status_code, response.text[:300]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(send, plans))
    failures = [answer for answer in answers if answer[1] is None or answer[1] >= 500]
    assert not failures, failures[:5]
    assert all(400 <= status < 500 for _, status, _ in answers if status not in (200,)), answers
    assert service.get("/healthz").json()["status"] == "ok"
