"""Model stages called in-process on real batches: one bad image fails alone, the rest index; the
run's claims, and a batch run twice (a Ray Data retry) committing its regions once."""

import lancedb
import numpy as np
from skimage import data

from maskdex.operators.registry.presets import embedding_dim, get_preset
from maskdex.pipelines.index.claims import batch_key, start_claims
from maskdex.pipelines.index.stages import FAILED, OK, PENDING, EmbedStage, MaskStage, _run_with_retry, image_row
from maskdex.storage.index_store import IndexStore
from maskdex.storage.index_writer import CommitPolicy, IndexWriter
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
    store = IndexStore.open(str(tmp_path / "db"), fingerprint=preset.fingerprint, embed_dim=embedding_dim(preset.alpha_clip))
    good = data.coffee()[:120, :160]
    broken = np.zeros((0, 7, 3), np.uint8)  # SAM 2 cannot take an image without pixels
    batch = _batch([good, broken, good], [PENDING, PENDING, "skipped"])
    masks = MaskStage("tiny", None, "cpu", None, {}, threads=1)
    embed = EmbedStage("tiny", None, "cpu", None, 0.5, 64, threads=1, regions_uri=store.regions_dataset_uri,
                       fingerprint=store.fingerprint, claims=start_claims())
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


def test_claims_give_each_image_one_input_and_a_retried_batch_its_own_again(ray_local):
    claims = start_claims()
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    first = batch_key(["/x.jpg", "/y.jpg"])
    assert ray_local.get(claims.claim.remote([a, b], ["/x.jpg", "/y.jpg"], first)) == [True, True]
    assert ray_local.get(claims.claim.remote([a, b], ["/x.jpg", "/y.jpg"], first)) == [True, True], "a retry"
    # A copy under another name, and the same uri in another batch (a parquet row read twice): copies.
    other = batch_key(["/copy.jpg", "/x.jpg"])
    assert ray_local.get(claims.claim.remote([a, a], ["/copy.jpg", "/x.jpg"], other)) == [False, False]
    # Two copies in one batch: the first owns it.
    third = batch_key(["/z.jpg", "/z2.jpg"])
    assert ray_local.get(claims.claim.remote([c, c], ["/z.jpg", "/z2.jpg"], third)) == [True, False]
    assert ray_local.get(claims.size.remote()) == 3


def test_a_batch_retried_after_its_claim_commits_its_regions_once(tmp_path, ray_local):
    preset = get_preset("tiny")
    store = IndexStore.open(str(tmp_path / "db"), fingerprint=preset.fingerprint, embed_dim=embedding_dim(preset.alpha_clip))
    batch = _batch([data.coffee()[:120, :160], data.chelsea()[:100, :140]], [PENDING, PENDING])
    masks = MaskStage("tiny", None, "cpu", None, {}, threads=1)
    embed = EmbedStage("tiny", None, "cpu", None, 0.5, 64, threads=1, regions_uri=store.regions_dataset_uri,
                       fingerprint=store.fingerprint, claims=start_claims())
    masked = masks(batch)
    first = embed(masked)  # claimed and wrote; then, say, its actor died before the output reached the driver
    retry = embed(masked)  # Ray Data runs the batch again
    assert list(first["status"]) == list(retry["status"]) == [OK, OK]

    writer = IndexWriter(store, CommitPolicy(background_upkeep=False))

    def deliver(out):
        rows = [{key: values[i] for key, values in out.items()} for i in range(len(out["uri"]))]
        return writer.add([image_row(row, store.fingerprint) for row in rows], RegionFragments.from_json(rows[0]["fragments"]))

    assert deliver(retry) == [True, True]
    assert deliver(first) == [False, False], "were the first attempt's output delivered too, it is dropped"
    writer.close()
    regions = lancedb.connect(store.uri).open_table("regions").to_arrow()["region_id"].to_pylist()
    assert len(regions) == len(set(regions)) == int(retry["n_regions"].sum()) > 0
    assert store.stats()["images_ok"] == 2
