"""The query service over real HTTP: search as the CLI does it, images, segmentation, support sets."""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image
from skimage import data

from maskdex.operators.common import rle as rle_codec
from tests.support.service import TOKEN, png_bytes, scene_example

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def searcher(serve_db):
    from maskdex.pipelines.search import TextSearcher

    return TextSearcher(serve_db[0], device="cpu")


def _same_results(got: list[dict], expected: list[dict]) -> None:
    assert [r["image_id"] for r in got] == [r["image_id"] for r in expected]
    for mine, theirs in zip(got, expected):
        assert mine["uri"] == theirs["uri"]
        assert mine["region"]["region_id"] == theirs["region"]["region_id"]
        assert mine["region"]["rle"] == theirs["region"]["rle"]
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-4)


def test_health_and_page(service):
    assert service.get("/healthz").json()["status"] == "ok"
    page = service.get("/")
    assert page.status_code == 200 and "maskdex" in page.text and "text/html" in page.headers["content-type"]
    assert "decodeRle" in service.get("/static/app.js").text


def test_search_matches_the_in_process_searcher_and_the_cli(service, searcher, capsys):
    from maskdex.jobs.cli import main

    response = service.post("/search", json={"text": "a cat", "k": 3})
    assert response.status_code == 200, response.text
    results = response.json()
    assert len(results) == 3
    _same_results(results, searcher.search("a cat", k=3))
    assert main(["search", "a cat", "--db", service.db, "-k", "3", "--json"]) == 0
    _same_results(results, json.loads(capsys.readouterr().out))
    only = results[1]["image_id"]
    filtered = service.post("/search", json={"text": "a cat", "k": 3, "filters": {"image_ids": [only]}}).json()
    assert [r["image_id"] for r in filtered] == [only]


def test_rerank_without_a_reranker_configured_is_a_clear_400(service):
    response = service.post("/search", json={"text": "a cat", "k": 3, "rerank": True})
    assert response.status_code == 400 and "no re-ranker" in response.json()["error"]


def test_concurrent_queries_are_answered_each_with_its_own_results(service, searcher):
    texts = ["a cat", "a cup of coffee", "an astronaut", "a flag", "grass", "a rocket"] * 3
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda text: service.post("/search", json={"text": text, "k": 2}), texts))
    # Batched with others, a query's embedding differs from its own by rounding only (the tiny preset's
    # random weights put many regions within that of each other, so the best region may change).
    for text, answer in zip(texts, answers):
        assert answer.status_code == 200, answer.text
        expected = searcher.search(text, k=2)
        assert [r["image_id"] for r in answer.json()] == [r["image_id"] for r in expected]
        assert [r["score"] for r in answer.json()] == pytest.approx([r["score"] for r in expected], abs=2e-2)


def test_an_indexed_image_and_its_regions(service, searcher):
    for name, path in service.photos.items():
        image_id = next(r["image_id"] for r in searcher.search(name, k=3) if r["uri"] == str(path))
        response = service.get(f"/images/{image_id}")
        assert response.status_code == 200 and response.content == path.read_bytes()
        assert response.headers["content-type"] == "image/jpeg"
        regions = service.get(f"/images/{image_id}/regions").json()
        stored = searcher.store.regions_of(image_id)
        assert [r["region_id"] for r in regions["regions"]] == [r["region_id"] for r in stored]
        for region in regions["regions"]:
            assert "embedding" not in region
            assert rle_codec.decode(region["rle"]).shape == (regions["height"], regions["width"])


def test_segmenting_an_upload_returns_labels_masks_and_support(service):
    for cls in range(4):
        added = service.add_support("scenes", *scene_example(seed=cls, must=cls))
        assert added.status_code == 200, added.text
    sets = service.get("/supports").json()["sets"]
    assert set(sets["scenes"]) == {"sky", "grass", "brick", "sand"}

    photo = Image.fromarray(data.chelsea()).resize((120, 80))
    response = service.post("/segment", files={"image": ("cat.png", png_bytes(np.asarray(photo)), "image/png")},
                            data={"set": "scenes", "classes": "sky,grass,brick,sand", "mode": "patch"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["classes"] == ["sky", "grass", "brick", "sand"]
    assert (result["width"], result["height"]) == (120, 80) and result["used_fallback"] is False
    assert set(result["visual_support"]) == set(result["classes"])
    labels = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["labels_png"]))))
    assert labels.shape == (80, 120) and labels.max() < 4
    for index, name in enumerate(result["classes"]):
        assert np.array_equal(rle_codec.decode(result["masks"][name]), labels == index)
        assert (labels == index).mean() == pytest.approx(result["pixel_fractions"][name], abs=1e-5)


def test_an_added_example_changes_the_next_segmentation(service):
    image, labels, names = scene_example(seed=10, must=1)
    only_grass = (labels == names.index("grass")).astype(np.int64)
    only_grass[only_grass == 0] = 255
    assert service.add_support("fresh", image, np.where(only_grass == 1, 0, 255), ["grass"]).status_code == 200
    test_image = png_bytes(scene_example(seed=11, must=0)[0])

    def segment() -> dict:
        response = service.post("/segment", files={"image": ("t.png", test_image, "image/png")},
                                data={"set": "fresh", "classes": '["grass", "sky"]'})
        assert response.status_code == 200, response.text
        return response.json()

    before = segment()
    assert before["visual_support"] == ["grass"] and before["text_support"] == ["grass", "sky"]
    sky_image, sky_labels, sky_names = scene_example(seed=12, must=0)
    assert service.add_support("fresh", sky_image, sky_labels, sky_names).status_code == 200
    after = segment()
    assert sorted(after["visual_support"]) == ["grass", "sky"]
    assert after["support_images"]["sky"] == 1 and after["support_images"]["grass"] == 2
    assert after["labels_png"] != before["labels_png"]


def test_segmenting_an_indexed_image_by_id_uses_its_stored_regions(service, searcher):
    image_id = searcher.search("coffee", k=1)[0]["image_id"]
    response = service.post("/segment", json={"image_id": image_id, "set": "scenes", "mode": "region"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["regions"] == "index" and result["image_id"] == image_id


def test_writes_need_the_token_and_refused_ones_write_nothing(service):
    before = service.get("/supports").json()
    example = scene_example(seed=20, must=2)
    for token in (None, "wrong", TOKEN + "x"):
        response = service.add_support("locked", *example, token=token)
        assert response.status_code == 401 and "token" in response.json()["error"]
    assert service.get("/supports").json() == before


def test_request_metrics_reach_the_prometheus_endpoint(service, ray_local):
    port = ray_local._private.worker.global_worker.node.metrics_export_port
    service.get("/healthz")
    deadline = time.monotonic() + 60  # the metrics agent exports every few seconds
    while True:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if "maskdex_requests" in text and "maskdex_request_latency_ms" in text:
            break
        assert time.monotonic() < deadline, "no maskdex metrics exported"
        time.sleep(2)
    assert 'route="/healthz"' in text


def test_concurrent_segmentations_each_equal_their_result_alone(service):
    for cls in range(4):
        assert service.add_support("together", *scene_example(seed=20 + cls, must=cls)).status_code == 200
    images = [png_bytes(scene_example(seed=30 + index, must=index % 4)[0]) for index in range(4)]

    def segment(index: int) -> dict:
        response = service.post("/segment", files={"image": ("t.png", images[index % 4], "image/png")},
                                data={"set": "together", "classes": "sky,grass,brick,sand", "seed": str(index)})
        assert response.status_code == 200, response.text
        return response.json()

    alone = [segment(index) for index in range(6)]
    with ThreadPoolExecutor(6) as pool:  # 6 requests at once: the segmenter trains their heads together
        together = list(pool.map(segment, range(6)))
    for single, batched in zip(alone, together):
        assert batched["labels_png"] == single["labels_png"] and batched == single
    bad = service.post("/segment", files={"image": ("t.png", images[0], "image/png")},
                       data={"set": "together", "mode": "diagonal"})
    assert bad.status_code == 422 and "mode" in bad.text  # refused before it reaches a batch
