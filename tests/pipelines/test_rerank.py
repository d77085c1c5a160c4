"""MaTIR's second stage over a real tiny-preset index: the tiny Qwen2.5-VL inside `maskdex search --rerank`,
and the OpenAI-compatible client over real loopback HTTP (a real model's answers, literal answers, and a
server that times out, fails or talks nonsense)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from maskdex.operators.common import rle
from maskdex.operators.registry.rerankers import RerankSettings, build_reranker
from maskdex.pipelines.rerank import ResultReranker, search_and_rerank
from maskdex.pipelines.search import TextSearcher
from tests.support.chat_server import ChatServer, Misbehave, tiny_model_answer
from tests.support.corpus import index_thumbnails

PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")
QUERY = "a cat"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, ray_local) -> tuple[str, dict[str, str]]:
    db, paths = index_thumbnails(tmp_path_factory, "rerank", PHOTOS)
    return db, {name: str(path) for name, path in paths.items()}


@pytest.fixture(scope="module")
def searcher(indexed) -> TextSearcher:
    return TextSearcher(indexed[0])


def _first_stage(searcher, k):
    return searcher.search(QUERY, k=k)


def _check_regions_decode(results):
    for result in results:
        width, height = Image.open(result["uri"]).size
        for key in ("region", "first_stage_region"):
            if key in result:
                assert rle.decode(result[key]["rle"]).shape == (height, width)


def _check_unusable_stay(results, first):
    """Unparsed and failed candidates sit where the first stage put them; the rest keep their relative order
    within confirmed and within rejected, confirmed first."""
    first_ids = [r["image_id"] for r in first]
    for rank, result in enumerate(results):
        status = result["rerank"]["status"]
        assert result["rerank"]["first_stage_rank"] == first_ids.index(result["image_id"])
        assert result["rerank"]["rank"] == rank
        if status in ("unparsed", "error", "skipped"):
            assert first_ids[rank] == result["image_id"], (rank, status)
    movable = [r for r in results if r["rerank"]["status"] in ("confirmed", "rejected")]
    keys = [(r["rerank"]["status"] != "confirmed", r["rerank"]["first_stage_rank"]) for r in movable]
    assert keys == sorted(keys)


@pytest.mark.slow
def test_tiny_backend_end_to_end_in_the_cli(indexed, searcher, capsys):
    from maskdex.jobs.cli import main

    db, _ = indexed
    first = _first_stage(searcher, 4)
    assert main(["search", QUERY, "--db", db, "-k", "4", "--rerank", "--rerank-model", "tiny", "--rerank-top", "3",
                 "--rerank-device", "cpu", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert sorted(r["image_id"] for r in results) == sorted(r["image_id"] for r in first)
    _check_regions_decode(results)
    _check_unusable_stay(results, first)
    statuses = [r["rerank"]["status"] for r in results]
    assert statuses[3] == "skipped" and all(s != "skipped" for s in statuses[:3])
    # Random weights babble: the seeded tiny model's replies are not a verdict, and each says so.
    unparsed = [r["rerank"] for r in results if r["rerank"]["status"] == "unparsed"]
    assert unparsed, statuses
    assert all(item["reason"] and "reply" in item for item in unparsed)
    assert [r["image_id"] for r in results] == [r["image_id"] for r in first]

    assert main(["search", QUERY, "--db", db, "-k", "4", "--rerank", "--rerank-backend", "tiny", "--rerank-top", "3",
                 "--rerank-device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "kept their first-stage rank" in table and "unparsed" in table


def test_literal_replies_over_http_reorder_and_point_at_the_stored_mask(indexed, searcher):
    """One candidate is rejected, one confirmed with a box drawn round one of its stored regions, one gets
    prose: confirmed moves to the front, the matched region has the highest box IoU, prose keeps its place."""
    db, paths = indexed
    first = _first_stage(searcher, 4)
    thumbnails = [_thumbnail(np.asarray(Image.open(result["uri"]).convert("RGB"))) for result in first]
    confirmed_rank, rejected_rank, prose_rank = 2, 0, 1
    target = first[confirmed_rank]
    regions = searcher.store.regions_of(target["image_id"])
    chosen = regions[len(regions) // 2]
    width, height = Image.open(target["uri"]).size
    from maskdex.operators.rerank.openai_client import qwen_resize

    frame_h, frame_w = qwen_resize(height, width)
    x, y, w, h = chosen["bbox"]
    box = [x * frame_w / width, y * frame_h / height, (x + w) * frame_w / width, (y + h) * frame_h / height]

    def answer(prompt, image):
        assert QUERY in prompt
        rank = _rank_of_sent_image(image, thumbnails)
        if rank == confirmed_rank:
            return f'Here you go: {{"present": "yes", "boxes": [{", ".join(f"{v:.1f}" for v in box)}]}}'.replace(
                "[", "[[", 1).replace("]", "]]", 1)
        if rank == rejected_rank:
            return "No."
        return "I am not sure what to say about this picture."

    with ChatServer(answer) as server:
        reranker = ResultReranker(build_reranker(RerankSettings(backend="openai", model="served-model",
                                                                endpoint=server.url, api_key="sk-local",
                                                                timeout_s=30)), searcher.store, top=3)
        results = search_and_rerank(searcher, reranker, QUERY, k=4)
        assert all(request["path"] == "/v1/chat/completions" and request["model"] == "served-model"
                   and request["authorization"] == "Bearer sk-local" for request in server.requests)
    _check_regions_decode(results)
    _check_unusable_stay(results, first)
    assert [r["rerank"]["first_stage_rank"] for r in results] == [confirmed_rank, prose_rank, rejected_rank, 3]
    top = results[0]
    assert top["rerank"]["status"] == "confirmed" and top["rerank"]["moved"]
    assert top["first_stage_region"] == first[confirmed_rank]["region"]
    # The returned region is the stored one whose box overlaps the reply's box most (ties: query score).
    query = searcher.embed([QUERY])[0]
    returned_box = np.array(top["rerank"]["box"], dtype=float)
    expected = max(regions, key=lambda r: (round(_iou_xywh(r["bbox"], returned_box), 9),
                                           float(np.dot(r["embedding"], query))))
    assert top["region"]["region_id"] == expected["region_id"]
    assert top["rerank"]["iou"] == pytest.approx(_iou_xywh(expected["bbox"], returned_box))
    assert top["region"]["score"] == pytest.approx(float(np.dot(expected["embedding"], query)), abs=1e-5)
    assert np.allclose(returned_box, chosen["bbox"], atol=1.5)  # rescaled back from the sent frame
    assert results[1]["rerank"]["status"] == "unparsed" and not results[1]["rerank"]["moved"]
    assert results[2]["rerank"]["status"] == "rejected"
    assert results[3]["rerank"]["status"] == "skipped"


def _thumbnail(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((8, 8), Image.BILINEAR), dtype=np.float32)


def _rank_of_sent_image(image, thumbnails):
    """Which candidate the client sent (resized and JPEG-coded): the one it looks most like."""
    small = _thumbnail(image)
    return int(np.argmin([np.abs(small - thumbnail).mean() for thumbnail in thumbnails]))


def _iou_xywh(a, b) -> float:
    ax1, ay1, ax2, ay2 = a[0], a[1], a[0] + a[2], a[1] + a[3]
    bx1, by1, bx2, by2 = b[0], b[1], b[0] + b[2], b[1] + b[3]
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@pytest.mark.slow
def test_openai_client_gets_the_tiny_model_s_answers_over_http(indexed, searcher):
    answer = tiny_model_answer()
    with ChatServer(answer) as server:
        client = build_reranker(RerankSettings(backend="openai", model="tiny", endpoint=server.url, batch_size=2))
        images = [np.asarray(Image.open(r["uri"]).convert("RGB")) for r in _first_stage(searcher, 2)]
        replies = client.replies(QUERY, images)
        results = search_and_rerank(searcher, ResultReranker(client, searcher.store, top=3), QUERY, k=3)
        client.close()
    assert all(reply.error is None and isinstance(reply.text, str) for reply in replies)
    assert all(reply.frame.kind == "pixels" and reply.frame.width % 28 == 0 for reply in replies)
    assert {r["rerank"]["status"] for r in results} <= {"unparsed", "confirmed", "rejected"}
    assert all("reply" in r["rerank"] for r in results)
    _check_regions_decode(results)
    _check_unusable_stay(results, _first_stage(searcher, 3))


@pytest.mark.parametrize("misbehaviour, cause", [
    (Misbehave(500, b'{"error": "CUDA out of memory"}'), "HTTP 500"),
    (Misbehave(200, b"<html>hello</html>"), "not a chat completion"),
    (Misbehave(200, b'{"choices": []}'), "not a chat completion"),
    (Misbehave(200, b"{}", delay_s=3.0), "did not answer within"),
])
def test_a_failing_server_degrades_to_first_stage_order_with_the_cause(indexed, searcher, misbehaviour, cause):
    def answer(prompt, image):
        raise misbehaviour

    first = _first_stage(searcher, 3)
    with ChatServer(answer) as server:
        reranker = ResultReranker(build_reranker(RerankSettings(backend="openai", model="m", endpoint=server.url,
                                                                timeout_s=1.0)), searcher.store, top=3)
        results = search_and_rerank(searcher, reranker, QUERY, k=3)
    assert [r["image_id"] for r in results] == [r["image_id"] for r in first]
    assert [r["region"] for r in results] == [r["region"] for r in first]
    for result in results:
        assert result["rerank"]["status"] == "error"
        assert cause in result["rerank"]["reason"]


def test_an_unreachable_server_and_an_unreadable_image_are_named(indexed, searcher, tmp_path):
    from tests.support.ports import free_port

    reranker = ResultReranker(build_reranker(RerankSettings(
        backend="openai", model="m", endpoint=f"http://127.0.0.1:{free_port()}/v1", timeout_s=2)), searcher.store, top=2)
    first = _first_stage(searcher, 2)
    results = reranker.rerank(QUERY, first)
    assert [r["image_id"] for r in results] == [r["image_id"] for r in first]
    assert all("cannot reach" in r["rerank"]["reason"] for r in results)
    gone = [{**first[0], "uri": str(tmp_path / "moved.jpg")}, first[1]]
    results = reranker.rerank(QUERY, gone)
    assert results[0]["rerank"]["status"] == "error" and "cannot load the image" in results[0]["rerank"]["reason"]


def test_bad_settings_are_refused_with_a_message():
    with pytest.raises(ValueError, match="endpoint"):
        build_reranker(RerankSettings(backend="openai", model="m"))
    with pytest.raises(ValueError, match="backend"):
        build_reranker(RerankSettings(backend="vllm"))
    with pytest.raises(ValueError, match="unknown re-rank model"):
        build_reranker(RerankSettings(model="qwen9-vl"))


def test_a_missing_qwen_checkpoint_names_the_folder(tmp_path, monkeypatch):
    from maskdex.operators.registry.weights import MissingWeightsError

    monkeypatch.delenv("MASKDEX_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(MissingWeightsError, match="Qwen2.5-VL-3B-Instruct"):
        build_reranker(RerankSettings(model="qwen2.5-vl-3b"), weights=tmp_path)
