"""`POST /search {"rerank": true}` on the real service: its Reranker deployment talks to a loopback
chat-completions server that answers from the tiny Qwen2.5-VL, then misbehaves; maskdex never answers 5xx."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import pytest
from PIL import Image

from maskdex.operators.common import rle
from tests.support.chat_server import ChatServer, Misbehave, tiny_model_answer
from tests.support.ports import free_port
from tests.support.service import Service, service_config, wait_until_healthy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chat_server():
    server = ChatServer(tiny_model_answer())
    server.default_answer = server.answer
    with server:
        yield server


@pytest.fixture(scope="module")
def rerank_service(serve_db, ray_local, chat_server):
    from ray import serve

    from maskdex.jobs.serve.app import start
    from maskdex.jobs.serve.config import parse_config

    db, photos = serve_db
    config = service_config(db, rerank={"backend": "openai", "model": "tiny-served", "endpoint": chat_server.url,
                                        "top": 2, "timeout_s": 2.0, "batch_size": 4,
                                        "batching": {"max_batch_size": 4, "batch_wait_timeout_s": 0.05}})
    config["deployments"]["Reranker"] = {"ray_actor_options": {"num_cpus": 0.5}}
    url = start(parse_config(config), host="127.0.0.1", port=free_port())
    wait_until_healthy(url, 120)
    yield Service(url, db, photos)
    serve.shutdown()


def _search(service, **body):
    response = service.post("/search", json={"text": "a cat", "k": 3, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_rerank_over_the_service_keeps_unusable_replies_in_place(rerank_service, chat_server):
    chat_server.answer = chat_server.default_answer
    first = _search(rerank_service)
    assert all("rerank" not in result for result in first)
    results = _search(rerank_service, rerank=True)
    assert [r["rerank"]["status"] for r in results][2] == "skipped"
    for rank, result in enumerate(results):
        rerank = result["rerank"]
        assert rerank["rank"] == rank
        if rerank["status"] in ("unparsed", "error", "skipped"):
            assert result["image_id"] == first[rank]["image_id"]
        if rerank["status"] != "skipped":
            assert "reply" in rerank or rerank["status"] == "error"
            assert result["first_stage_region"] == first[rerank["first_stage_rank"]]["region"]
        regions = rerank_service.get(f"/images/{result['image_id']}/regions").json()
        assert rle.decode(result["region"]["rle"]).shape == (regions["height"], regions["width"])
    assert any(request["model"] == "tiny-served" for request in chat_server.requests)


def test_concurrent_reranked_searches_each_get_their_own_candidates(rerank_service, chat_server):
    chat_server.answer = chat_server.default_answer
    texts = ["a cat", "a cup of coffee", "an astronaut", "a flag"]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda text: rerank_service.post("/search", json={"text": text, "k": 2,
                                                                                  "rerank": True}), texts))
    for text, answer in zip(texts, answers):
        assert answer.status_code == 200, answer.text
        plain = _search(rerank_service, text=text, k=2)
        assert sorted(r["image_id"] for r in answer.json()) == sorted(r["image_id"] for r in plain)


def _thumbnail(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((8, 8), Image.BILINEAR), dtype=np.float32)


def _confirm_second(service, first):
    """An answer() that confirms the first stage's second candidate (told apart by its look) with a box, and
    rejects everything else."""
    second = _thumbnail(np.asarray(Image.open(io.BytesIO(service.get(f"/images/{first[1]['image_id']}").content))
                                   .convert("RGB")))
    others = [_thumbnail(np.asarray(Image.open(io.BytesIO(service.get(f"/images/{r['image_id']}").content))
                                    .convert("RGB"))) for r in first if r is not first[1]]

    def answer(prompt, image):
        small = _thumbnail(image)
        if np.abs(small - second).mean() < min(np.abs(small - other).mean() for other in others):
            return 'Yes: {"present": "yes", "boxes": [[0, 0, 56, 56]]}'
        return "no"

    return answer


def test_a_confirmed_candidate_moves_ahead(rerank_service, chat_server):
    first = _search(rerank_service, k=3)
    chat_server.answer = _confirm_second(rerank_service, first)
    try:
        results = _search(rerank_service, k=3, rerank=True, rerank_top=2)
    finally:
        chat_server.answer = chat_server.default_answer
    assert [r["image_id"] for r in results] == [first[i]["image_id"] for i in (1, 0, 2)]
    assert [r["rerank"]["status"] for r in results] == ["confirmed", "rejected", "skipped"]
    assert results[0]["rerank"]["moved"] and results[1]["rerank"]["moved"]
    assert results[0]["first_stage_region"] == first[1]["region"]
    assert results[0]["rerank"]["box"] is not None and results[0]["rerank"]["iou"] > 0


def test_the_page_shows_what_the_reranker_moved_with_the_matched_mask(rerank_service, chat_server):
    import os

    from tests.jobs.serve.test_serve_browser import CHROMIUM, CHROMIUM_ARGS, PAINTED

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    first = _search(rerank_service, k=3)
    chat_server.answer = _confirm_second(rerank_service, first)
    try:
        expected = _search(rerank_service, k=3, rerank=True, rerank_top=2)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(rerank_service.url + "/")
            page.get_by_label("Describe what to find").fill("a cat")
            page.get_by_label("How many results").select_option("3")
            page.get_by_label("Double-check the top results with a vision-language model").check()
            page.get_by_role("button", name="Search", exact=True).click()
            page.wait_for_function("document.getElementById('search-status').textContent.includes('results for')",
                                   timeout=60_000)
            cards = page.query_selector_all(".result")
            shown = [(card.get_attribute("data-image-id"), card.get_attribute("data-rerank"),
                      card.get_attribute("data-moved"), card.query_selector(".rerank").inner_text(),
                      card.query_selector("canvas.mask").evaluate(PAINTED)) for card in cards]
            browser.close()
    finally:
        chat_server.answer = chat_server.default_answer
    assert not errors, errors
    assert [s[0] for s in shown] == [r["image_id"] for r in expected]
    assert [s[1] for s in shown] == ["confirmed", "rejected", "skipped"]
    assert [s[2] for s in shown] == ["true", "true", "false"]
    assert "moved up 1" in shown[0][3] and "was #2" in shown[0][3]
    # The mask drawn on the moved card is the region the re-ranker's box matched.
    assert shown[0][4] == rle.area(expected[0]["region"]["rle"])


@pytest.mark.parametrize("misbehaviour, cause", [
    (Misbehave(500, b'{"error": "boom"}'), "HTTP 500"),
    (Misbehave(200, b"nonsense"), "not a chat completion"),
    (Misbehave(200, b"{}", delay_s=4.0), "did not answer within"),
])
def test_a_failing_model_server_degrades_to_first_stage_order(rerank_service, chat_server, misbehaviour, cause):
    first = _search(rerank_service)

    def answer(prompt, image):
        raise misbehaviour

    chat_server.answer = answer
    try:
        results = _search(rerank_service, rerank=True)
    finally:
        chat_server.answer = chat_server.default_answer
    assert [r["image_id"] for r in results] == [r["image_id"] for r in first]
    assert [r["region"] for r in results] == [r["region"] for r in first]
    assert all(cause in r["rerank"]["reason"] for r in results[:2])


def test_rerank_options_are_checked(rerank_service):
    response = rerank_service.post("/search", json={"text": "a cat", "rerank": True, "rerank_top": 0})
    assert response.status_code == 400 and "rerank_top" in response.json()["error"]
    response = rerank_service.post("/search", json={"text": "a cat", "rerank": "yes"})
    assert response.status_code == 422
