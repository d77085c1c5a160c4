"""Region mode on an indexed image: RNS classifies the regions the index stored, without running SAM 2."""

import numpy as np
import pytest
import torch
from PIL import Image

from maskdex.operators.common import rle as rle_codec
from maskdex.operators.rns.units import paint_regions
from maskdex.pipelines.index.job import run_index
from maskdex.pipelines.fewshot.segmenter import Segmenter
from maskdex.storage import IndexStore
from tests.support.corpus import index_settings
from tests.support.synthetic import SEGMENT_SETTINGS, add_scenes, scene


@pytest.mark.slow
def test_region_mode_reuses_the_stored_masks_of_an_indexed_image(tmp_path, ray_local):
    image, _, _ = scene(np.random.default_rng(3), size=(96, 96))
    path = tmp_path / "indexed.png"
    Image.fromarray(image).save(path)
    db = str(tmp_path / "db")
    assert run_index([str(path)], db, index_settings()).ok == 1
    segmenter = Segmenter(db, SEGMENT_SETTINGS, create=True)
    add_scenes(segmenter, "scenes", per_class=1, seed=0)

    result = segmenter.segment(str(path), "scenes", mode="region")
    assert result.regions == "index"
    index = IndexStore.open(db, fingerprint=None, embed_dim=None, read_only=True)
    stored = index.regions_of(result.image_id)
    assert stored
    masks = torch.from_numpy(np.stack([rle_codec.decode(region["rle"]) for region in stored]))
    region_map = paint_regions(masks).numpy()
    for region in np.unique(region_map):  # each stored region got one class, whole
        assert len(np.unique(result.labels[region_map == region])) == 1

    # The same pixels without their file: nothing to look up, so SAM 2 proposes the regions.
    assert segmenter.segment(image, "scenes", mode="region").regions == "sam2"
