"""Query by example over a real tiny-preset index (real Ray index job, real LanceDB): an indexed region's
stored embedding, a user's image whole / box / mask, text and example together, and bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from maskdex.operators.common import rle as rle_codec
from maskdex.pipelines.search import Example, Query, TextSearcher
from maskdex.storage.search import combine_queries

pytestmark = pytest.mark.slow
from tests.support.corpus import index_thumbnails

PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, ray_local) -> tuple[str, dict[str, str]]:
    db, paths = index_thumbnails(tmp_path_factory, "example", PHOTOS)
    return db, {name: str(path) for name, path in paths.items()}


@pytest.fixture(scope="module")
def searcher(indexed) -> TextSearcher:
    return TextSearcher(indexed[0], device="cpu")


class EncoderCalls:
    """Counts the real encoder's image and text passes (it still runs)."""

    def __init__(self, encoder, monkeypatch):
        self.count = 0
        for name in ("encode", "embed_texts"):
            real = getattr(encoder, name)

            def counted(*args, _real=real, **kwargs):
                self.count += 1
                return _real(*args, **kwargs)

            monkeypatch.setattr(encoder, name, counted)


def _bytes(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _image_id(searcher, path: str) -> str:
    return Example(_bytes(path)).image_id


def _png(mask: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(out, format="PNG")
    return out.getvalue()


def test_an_indexed_photo_as_the_query_finds_itself_first(searcher, indexed):
    found_itself = 0
    for name, path in indexed[1].items():
        image_id = _image_id(searcher, path)
        rgb = np.asarray(Image.open(path).convert("RGB"))
        vector, _ = searcher.query_vector(Query(example=Example(_bytes(path))))
        # The whole image is embedded as the index embeds a region whose mask is every pixel.
        whole = searcher.encoder.embed_regions(rgb, [np.ones(rgb.shape[:2], bool)])[0].numpy()
        np.testing.assert_allclose(vector, whole, atol=1e-4)
        results = searcher.search(example=Example(_bytes(path)), k=4)
        assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
        # The tiny preset's random SAM 2 proposes masks of most of the image for these photos, and those
        # are the nearest regions to the whole image; rocket's masks are smaller, so it may not win.
        if name != "rocket":
            assert results[0]["image_id"] == image_id, name
            found_itself += 1
        left_out = searcher.search(example=Example(_bytes(path)), k=4, exclude_self=True)
        assert image_id not in [r["image_id"] for r in left_out] and len(left_out) == len(PHOTOS) - 1
    assert found_itself == 3


def test_like_uses_the_stored_embedding_without_a_model_call(searcher, indexed, monkeypatch):
    calls = EncoderCalls(searcher.encoder, monkeypatch)
    image_id = _image_id(searcher, indexed[1]["chelsea"])
    results = searcher.search(like=f"{image_id}:0", k=3)
    assert calls.count == 0
    assert results[0]["image_id"] == image_id
    assert results[0]["region"]["region_id"] == f"{image_id}:0"
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-5)
    whole = searcher.search(like=image_id, k=3)
    assert calls.count == 0 and whole[0]["score"] <= 1.0 + 1e-5
    searcher.search(example=Example(_bytes(indexed[1]["chelsea"])), k=1)
    assert calls.count == 1  # the counter sees a real pass


def test_a_mask_or_a_box_restricts_the_query_as_the_index_embeds_a_region(searcher, indexed):
    path = indexed[1]["astronaut"]
    image_id = _image_id(searcher, path)
    rgb = np.asarray(Image.open(path).convert("RGB"))
    for region in searcher.store.regions_of(image_id)[:3]:
        mask = rle_codec.decode(region["rle"])
        vector, _ = searcher.query_vector(Query(example=Example(_bytes(path), mask=_png(mask))))
        np.testing.assert_allclose(vector, region["embedding"], atol=1e-4)
        results = searcher.search(example=Example(_bytes(path), mask=_png(mask)), k=2)
        assert results[0]["image_id"] == image_id
        assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    x, y, w, h = 30, 20, 50, 60
    box_vector, _ = searcher.query_vector(Query(example=Example(_bytes(path), box=(x, y, w, h))))
    rectangle = np.zeros(rgb.shape[:2], dtype=bool)
    rectangle[y:y + h, x:x + w] = True
    expected = searcher.encoder.embed_regions(rgb, [rectangle], [[x, y, w, h]])[0].numpy()
    np.testing.assert_allclose(box_vector, expected, atol=1e-4)
    whole, _ = searcher.query_vector(Query(example=Example(_bytes(path))))
    assert float(box_vector @ whole) < 0.9999  # the box changed the query


def test_text_and_example_together_rank_between_the_two(searcher, indexed):
    text = "a cup of coffee"
    image_id = _image_id(searcher, indexed[1]["rocket"])
    like = f"{image_id}:0"
    by_text = [r["image_id"] for r in searcher.search(text, k=4)]
    t, _ = searcher.query_vector(Query(text=text))
    e, _ = searcher.query_vector(Query(like=like))
    for weight, expected in ((0.0, t), (1.0, e)):
        vector, _ = searcher.query_vector(Query(text=text, like=like, weight=weight))
        np.testing.assert_allclose(vector, expected, atol=1e-6)
    both, _ = searcher.query_vector(Query(text=text, like=like))
    np.testing.assert_allclose(both, combine_queries(t, e, 0.5), atol=1e-6)
    assert np.linalg.norm(both) == pytest.approx(1.0, abs=1e-5)
    # The example's image: first by the example, where the text put it, and between the two for both.
    mixed = [r["image_id"] for r in searcher.search(text, like=like, k=4)]
    assert 0 <= mixed.index(image_id) <= by_text.index(image_id)
    assert float(both @ t) > float(e @ t) and float(both @ e) > float(t @ e)


@pytest.mark.parametrize("query, problem", [
    (Query(), "nothing to search with"),
    (Query(text="   "), "text is empty"),
    (Query(like="ab" * 32), "no image"),
    (Query(text="x", weight=1.5), "between 0 and 1"),
    (Query(example=Example(b"not an image at all")), "not a usable image"),
    (Query(example=Example(b"x"), like="ab" * 32), "not both"),
])
def test_bad_queries_name_the_problem(searcher, query, problem):
    with pytest.raises(ValueError, match=problem):
        searcher.query_vector(query)


def test_bad_regions_of_an_example_name_the_problem(searcher, indexed):
    path = indexed[1]["coffee"]
    width, height = Image.open(path).size
    image_id = _image_id(searcher, path)
    cases = [(Example(_bytes(path), box=(width - 10, 0, 20, 20)), "not inside"),
             (Example(_bytes(path), box=(0, 0, 0, 5)), "not inside"),
             (Example(_bytes(path), mask=_png(np.ones((5, 5), bool))), "but the image is"),
             (Example(_bytes(path), mask=_png(np.zeros((height, width), bool))), "mask is empty"),
             (Example(_bytes(path), mask=b"junk"), "mask is not a readable image")]
    for example, problem in cases:
        with pytest.raises(ValueError, match=problem):
            searcher.query_vector(Query(example=example))
    with pytest.raises(ValueError, match="has no region 999"):
        searcher.query_vector(Query(like=f"{image_id}:999"))
