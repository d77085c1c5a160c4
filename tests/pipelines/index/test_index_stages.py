"""Model stages called in-process on real batches: one bad image fails alone, the rest index."""

import numpy as np
from skimage import data

from maskdex.pipelines.index.stages import FAILED, OK, PENDING, EmbedStage, MaskStage, _run_with_retry


def _batch(images, statuses):
    column = np.empty(len(images), dtype=object)
    column[:] = images
    return {"uri": np.asarray([f"img{i}" for i in range(len(images))], dtype=object),
            "image_id": np.asarray([f"{i:064x}" for i in range(len(images))], dtype=object),
            "status": np.asarray(statuses, dtype=object), "error": np.asarray([""] * len(images), dtype=object),
            "width": np.asarray([im.shape[1] for im in images]), "height": np.asarray([im.shape[0] for im in images]),
            "image": column}


def test_a_model_error_fails_only_its_image_and_names_the_cause():
    good = data.coffee()[:120, :160]
    broken = np.zeros((0, 7, 3), np.uint8)  # SAM 2 cannot take an image without pixels
    batch = _batch([good, broken, good], [PENDING, PENDING, "skipped"])
    masks = MaskStage("tiny", None, "cpu", None, {}, threads=1)
    embed = EmbedStage("tiny", None, "cpu", None, 0.5, 64, threads=1)
    out = embed(masks(batch))
    assert list(out["status"]) == [OK, FAILED, "skipped"]
    assert out["error"][1].startswith("SAM 2 failed: BadImageError") and "no pixels" in out["error"][1]
    assert out["region_embeddings"][0].shape[0] > 0 and out["region_embeddings"][1].shape[0] == 0
    assert "image" not in out, "pixels must not travel past the embedding stage"


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
