"""Every kind of bad request gets a 4xx JSON error naming the problem, and writes nothing."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from tests.support.service import TOKEN, png_bytes, scene_example

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {TOKEN}"}
UNKNOWN_ID = "0" * 64


def _jpeg(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG")
    return out.getvalue()


SCENE, SCENE_LABELS, SCENE_NAMES = scene_example(seed=3, must=0)
GOOD_PNG = png_bytes(SCENE)
TRUNCATED = GOOD_PNG[: len(GOOD_PNG) // 2]
TOO_MANY_PIXELS = png_bytes(np.zeros((1001, 1000, 3), np.uint8))  # the tests' limit is 1,000,000
TOO_BIG = os.urandom(2_100_000)  # the tests' upload limit is 2,000,000 bytes
LABELS = png_bytes(SCENE_LABELS.astype(np.uint8))


def _upload(image: bytes = GOOD_PNG, **fields) -> dict:
    return {"files": {"image": ("x.png", image, "image/png")},
            "data": {"set": "scenes", **fields}}


def _support(image: bytes = GOOD_PNG, labels: bytes = LABELS, **fields) -> dict:
    return {"files": {"image": ("x.png", image, "image/png"), "labels": ("l.png", labels, "image/png")},
            "data": {"set": "bad-input", "classes": ",".join(SCENE_NAMES), **fields}, "headers": AUTH}


CASES = {
    # /search
    "empty text": ("post", "/search", {"json": {"text": ""}}, 400, "empty"),
    "blank text": ("post", "/search", {"json": {"text": "   "}}, 400, "empty"),
    "over-long text": ("post", "/search", {"json": {"text": "a" * 201}}, 400, "limit"),
    "k zero": ("post", "/search", {"json": {"text": "cat", "k": 0}}, 400, "k must"),
    "k negative": ("post", "/search", {"json": {"text": "cat", "k": -5}}, 400, "k must"),
    "k above the maximum": ("post", "/search", {"json": {"text": "cat", "k": 51}}, 400, "k must"),
    "huge k": ("post", "/search", {"json": {"text": "cat", "k": 10**40}}, 400, "k must"),
    "k as a string": ("post", "/search", {"json": {"text": "cat", "k": "3"}}, 422, "k"),
    "k as a float": ("post", "/search", {"json": {"text": "cat", "k": 2.5}}, 422, "k"),
    "text missing": ("post", "/search", {"json": {"k": 3}}, 400, "nothing to search with"),
    "text not a string": ("post", "/search", {"json": {"text": ["cat"]}}, 422, "text"),
    "unknown field": ("post", "/search", {"json": {"text": "cat", "kk": 3}}, 422, "kk"),
    "body not JSON": ("post", "/search", {"data": b"\xff{not json", "headers": {"Content-Type": "application/json"}},
                      400, "not JSON"),
    "body a JSON list": ("post", "/search", {"json": ["cat"]}, 422, "JSON object"),
    "bad filter type": ("post", "/search", {"json": {"text": "cat", "filters": {"min_area": "big"}}}, 422,
                        "min_area"),
    "bad filter id": ("post", "/search", {"json": {"text": "cat", "filters": {"image_ids": ["x' OR 1=1"]}}}, 400,
                      "image id"),
    # /images
    "unknown image id": ("get", f"/images/{UNKNOWN_ID}", {}, 404, "no image"),
    "malformed image id": ("get", "/images/not-an-id", {}, 400, "image id"),
    "unknown image regions": ("get", f"/images/{UNKNOWN_ID}/regions", {}, 404, "no image"),
    "a path for an id": ("get", "/images/..%2F..%2Fetc%2Fpasswd", {}, 404, "Not Found"),
    "a file name for an id": ("get", "/images/passwd", {}, 400, "image id"),
    # /segment
    "random bytes as image": ("post", "/segment", _upload(os.urandom(5000)), 400, "not a readable image"),
    "truncated image": ("post", "/segment", _upload(TRUNCATED), 400, "image"),
    "empty image": ("post", "/segment", _upload(b""), 400, "empty"),
    "upload over the size limit": ("post", "/segment", _upload(TOO_BIG), 413, "limit"),
    "image over the pixel limit": ("post", "/segment", _upload(TOO_MANY_PIXELS), 413, "pixels"),
    "unknown set": ("post", "/segment", _upload(set="nope"), 400, "no support set 'nope'"),
    "too many classes": ("post", "/segment", _upload(classes=",".join(f"c{i}" for i in range(9))), 400,
                         "limit is 8"),
    "repeated classes": ("post", "/segment", _upload(classes="sky,sky"), 400, "more than once"),
    "bad mode": ("post", "/segment", _upload(mode="bogus"), 422, "mode"),
    "bad seed": ("post", "/segment", _upload(seed="1e999"), 400, "seed"),
    "image missing": ("post", "/segment", {"data": {"set": "scenes"}, "files": {"x": ("x", b"1")}}, 400,
                      "image is missing"),
    "unknown image id to segment": ("post", "/segment", {"json": {"image_id": UNKNOWN_ID, "set": "scenes"}}, 404,
                                    "no image"),
    "no image at all": ("post", "/segment", {"json": {"set": "scenes"}}, 400, "send an image"),
    "malformed multipart": ("post", "/segment", {"data": b"--zz\r\ngarbage",
                                                 "headers": {"Content-Type": "multipart/form-data; boundary=zz"}},
                            400, ""),
    # /supports
    "label map of another size": ("post", "/supports", _support(labels=png_bytes(np.zeros((10, 12), np.uint8))), 400,
                                  "label map is 12x10"),
    "label ids outside the classes": ("post", "/supports", _support(labels=png_bytes(np.full((64, 64), 7, np.uint8))),
                                      400, "outside the class list"),
    "label map not a PNG": ("post", "/supports", _support(labels=_jpeg(np.zeros((64, 64), np.uint8))), 400, "PNG"),
    "label map truncated": ("post", "/supports", _support(labels=LABELS[:40]), 400, "label map"),
    "support image truncated": ("post", "/supports", _support(image=TRUNCATED), 400, "image"),
    "labels missing": ("post", "/supports", {"files": {"image": ("x.png", GOOD_PNG)}, "data": {"set": "s", "classes": "a"},
                                             "headers": AUTH}, 400, "labels is missing"),
    "set missing": ("post", "/supports", _support(set=""), 400, "set"),
    "classes missing": ("post", "/supports", _support(classes=""), 400, "classes"),
    "too many support classes": ("post", "/supports", _support(classes=",".join(f"c{i}" for i in range(9))), 400,
                                 "limit is 8"),
    "class named but absent": ("post", "/supports", _support(classes=",".join(SCENE_NAMES) + ",extra"), 400,
                               "cover no pixel"),
    "support as JSON": ("post", "/supports", {"json": {"set": "x"}, "headers": AUTH}, 415, "multipart"),
    # routing
    "unknown route": ("get", "/nothing-here", {}, 404, "Not Found"),
    "wrong method": ("get", "/search", {}, 405, "Method Not Allowed"),
    "unknown static file": ("get", "/static/api.py", {}, 404, "no page"),
}


@pytest.fixture(scope="module", autouse=True)
def scenes(service):
    """The set the segment cases name, so that they fail for their own reason."""
    assert service.add_support("scenes", SCENE, SCENE_LABELS, SCENE_NAMES).status_code == 200


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_is_a_4xx_naming_the_problem(service, case):
    method, path, kwargs, status, words = CASES[case]
    before = service.get("/supports").json()
    response = getattr(service, method)(path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert words in response.json()["error"]
    assert service.get("/supports").json() == before


def test_the_good_version_of_the_bad_requests_works(service):
    """The bad cases fail for the reason named, not because the baseline request is broken."""
    added = service.post("/supports", **_support())
    assert added.status_code == 200, added.text
    segmented = service.post("/segment", **_upload(set="bad-input"))
    assert segmented.status_code == 200, segmented.text
