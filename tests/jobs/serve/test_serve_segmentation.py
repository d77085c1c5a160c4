"""GET /images/{id}/segmentation over real HTTP: what `maskdex segment-index` stored, 404 where there is none,
400 for bad parameters."""

from __future__ import annotations

import base64
import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from maskdex.operators.common import rle
from maskdex.pipelines.fewshot.segment_index import SegmentIndexSettings, Selection, run_segment_index
from maskdex.pipelines.fewshot.request import SegmentSpec
from maskdex.pipelines.fewshot.segmenter import SegmentSettings
from maskdex.operators.rns.method import RNSSettings
from maskdex.storage.segmentation_store import SegmentationStore
from tests.support.service import scene_example

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def segmented(service):
    """The service's index segmented with a set added over HTTP, in patch mode (seed 0) and region mode (seed 4)."""
    for cls in range(2):
        assert service.add_support("corpus", *scene_example(seed=60 + cls, must=cls)).status_code == 200
    settings = SegmentIndexSettings(segment=SegmentSettings(device="cpu", rns=RNSSettings(steps=60)))
    # The service's replicas hold some of the shared instance's CPUs.
    settings = replace(settings, actors=replace(settings.actors, num_cpus=0.5))
    patch = run_segment_index(service.db, SegmentSpec("corpus"), Selection(), settings)
    region = run_segment_index(service.db, SegmentSpec("corpus", mode="region", seed=4), Selection(), settings)
    assert patch.ok == region.ok == len(service.photos) and patch.failed == region.failed == 0
    return SegmentationStore.open(service.db, create=False), patch.key, region.key


def test_the_stored_result_comes_back(service, segmented):
    store, patch_key, region_key = segmented
    for row in store.rows(patch_key):
        response = service.get(f"/images/{row['image_id']}/segmentation", params={"set": "corpus"})
        assert response.status_code == 200, response.text
        body = response.json()
        # Two runs match set=corpus; the newest (region mode) answers unless the mode is named.
        assert body["mode"] == "region" and body["seed"] == 4 and body["regions"] == "index"
        response = service.get(f"/images/{row['image_id']}/segmentation", params={"set": "corpus", "mode": "patch"})
        body = response.json()
        assert body["image_id"] == row["image_id"] and body["set"] == "corpus" and body["mode"] == "patch"
        assert body["classes"] == row["classes"] == sorted(body["classes"]) and body["seed"] == 0
        assert base64.b64decode(body["labels_png"]) == row["labels_png"]
        labels = np.asarray(Image.open(io.BytesIO(row["labels_png"])))
        assert labels.shape == (body["height"], body["width"])
        for index, name in enumerate(body["classes"]):
            assert np.array_equal(rle.decode(body["masks"][name]), labels == index)
            assert body["pixel_fractions"][name] == pytest.approx((labels == index).mean(), abs=1e-6)
        assert set(body["found"]) == {name for index, name in enumerate(body["classes"]) if (labels == index).any()}
        assert len(body["colours"]) == len(body["classes"])
        same = service.get(f"/images/{row['image_id']}/segmentation",
                           params={"set": "corpus", "classes": ",".join(row["classes"]), "seed": "0",
                                   "shots_only": "false"})
        assert same.status_code == 200 and same.json()["labels_png"] == body["labels_png"]


def test_none_stored_is_a_404_and_bad_parameters_a_400(service, segmented):
    store, patch_key, _ = segmented
    image_id = store.rows(patch_key)[0]["image_id"]
    url = f"/images/{image_id}/segmentation"
    cases = [
        ({"set": "other"}, 404, f"no segmentation of image {image_id} with set 'other'"),
        ({"set": "corpus", "seed": "9"}, 404, "no segmentation of image"),
        ({"set": "corpus", "classes": "sky"}, 404, "no segmentation of image"),
        ({}, 400, "set is missing"),
        ({"set": "corpus", "mode": "pixels"}, 400, "mode must be one of patch, region"),
        ({"set": "corpus", "seed": "x"}, 400, "seed must be a whole number"),
        ({"set": "corpus", "shots_only": "maybe"}, 400, "shots_only must be true or false"),
        ({"set": "corpus", "colour": "red"}, 400, "unknown query parameter(s) colour"),
    ]
    for params, status, message in cases:
        response = service.get(url, params=params)
        assert response.status_code == status, (params, response.text)
        assert message in response.json()["error"], (params, response.text)
    response = service.get("/images/not-an-id/segmentation", params={"set": "corpus"})
    assert response.status_code == 400 and "64 lowercase hex digits" in response.json()["error"]
    response = service.get(f"/images/{'0' * 64}/segmentation", params={"set": "corpus"})
    assert response.status_code == 404 and "no segmentation of image" in response.json()["error"]
