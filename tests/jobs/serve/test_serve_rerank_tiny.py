"""The Reranker deployment holding the tiny transformers Qwen2.5-VL itself (no model server): real replies,
which are noise, so every re-ranked result keeps its first-stage rank and says why."""

from __future__ import annotations

import pytest

from maskdex.operators.common import rle
from tests.support.ports import free_port
from tests.support.service import Service, service_config, wait_until_healthy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_rerank_service(serve_db, ray_local):
    from ray import serve

    from maskdex.jobs.serve.app import start
    from maskdex.jobs.serve.config import parse_config

    db, photos = serve_db
    config = service_config(db, rerank={"backend": "tiny", "top": 3, "device": "cpu", "max_new_tokens": 16,
                                        "batching": {"max_batch_size": 6, "batch_wait_timeout_s": 0.05}})
    url = start(parse_config(config), host="127.0.0.1", port=free_port())
    wait_until_healthy(url, 180)
    yield Service(url, db, photos)
    serve.shutdown()


def test_tiny_reranker_in_the_service(tiny_rerank_service):
    first = tiny_rerank_service.post("/search", json={"text": "a cat", "k": 3}).json()
    response = tiny_rerank_service.post("/search", json={"text": "a cat", "k": 3, "rerank": True})
    assert response.status_code == 200, response.text
    results = response.json()
    assert len(results) == 3
    for rank, result in enumerate(results):
        rerank = result["rerank"]
        assert rerank["first_stage_rank"] == [r["image_id"] for r in first].index(result["image_id"])
        if rerank["status"] == "unparsed":
            assert result["image_id"] == first[rank]["image_id"] and rerank["reason"] and "reply" in rerank
        regions = tiny_rerank_service.get(f"/images/{result['image_id']}/regions").json()
        assert rle.decode(result["region"]["rle"]).shape == (regions["height"], regions["width"])
    assert any(r["rerank"]["status"] == "unparsed" for r in results)
