"""Model stages called in-process on real batches: one bad image fails alone, the rest index."""

import numpy as np
from skimage import data

from maskdex.operators.registry.presets import embedding_dim, get_preset
from maskdex.pipelines.index.claims import start_claims
from maskdex.pipelines.index.stages import FAILED, OK, PENDING, EmbedStage, MaskStage, _run_with_retry
from maskdex.storage.index_store import IndexStore
from maskdex.storage.region_fragments import RegionFragments


def _batch(images, statuses):
    column = np.empty(len(images), dtype=object)
    column[:] = images
    return {"uri": np.asarray([f"img{i}" for i in range(len(images))], dtype=object),
            "image_id": np.asarray([f"{i:064x}" for i in range(len(images))], dtype=object),
            "status": np.asarray(statuses, dtype=object), "error": np.asarray([""] * len(images), dtype=object),
            "width": np.asarray([im.shape[1] for im in images]), "height": np.asarray([im.shape[0] for im in images]),
            "image": column}


def test_a_model_error_fails_only_its_image_and_names_the_cause(tmp_path, ray_local):
    preset = get_preset("tiny")
    store = IndexStore.open(str(tmp_path / "db"), models=preset.fingerprint, embed_dim=embedding_dim(preset.alpha_clip))
    good = data.coffee()[:120, :160]
    broken = np.zeros((0, 7, 3), np.uint8)  # SAM 2 cannot take an image without pixels
    batch = _batch([good, broken, good], [PENDING, PENDING, "skipped"])
    masks = MaskStage("tiny", None, "cpu", None, {}, threads=1)
    embed = EmbedStage("tiny", None, "cpu", None, 0.5, 64, threads=1, regions_uri=store.regions_dataset_uri,
                       models=store.models, claims=start_claims())
    out = embed(masks(batch))
    assert list(out["status"]) == [OK, FAILED, "skipped"]
    assert out["error"][1].startswith("SAM 2 failed: BadImageError") and "no pixels" in out["error"][1]
    assert out["n_regions"][0] > 0 and out["n_regions"][1] == 0
    written = RegionFragments.from_json(out["fragments"][0])
    assert (written.images, written.rows) == (2, out["n_regions"][0]), "the good and the failed image"
    assert not {"image", "regions", "region_embeddings"} & set(out), "pixels, masks and region embeddings stay"


def test_retry_runs_once_more_then_reports():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory")
        return "done"

    assert _run_with_retry(flaky, "SAM 2") == ("done", None) and len(calls) == 2

    def broken():
        raise RuntimeError("CUDA out of memory")

    assert _run_with_retry(broken, "Alpha-CLIP") == (None, "Alpha-CLIP failed: RuntimeError: CUDA out of memory")
