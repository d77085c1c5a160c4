"""The vector index agrees with exact search on a clustered table of 100k regions."""

import numpy as np
import pytest

from benchmarks.synthetic_regions import clustered_embeddings, index_rows, queries_near
from maskdex.storage import IndexStore

ROWS, DIM, REGIONS_PER_IMAGE = 100_000, 64, 10
COMMIT_ROWS = 20_000
# Clusters of 300 span several of the 316 IVF partitions, so probing matters. Measured recall@10
# with the same settings: 0.92 to 0.94 with clusters of 100 (harder), 1.0 with clusters of 1000.
CLUSTER_SIZE = 300


@pytest.mark.slow
def test_ann_recall_at_10_against_exact_search(tmp_path):
    store = IndexStore.open(str(tmp_path / "index"), fingerprint="recall-test", embed_dim=DIM)
    embeddings = clustered_embeddings(ROWS, DIM, cluster_size=CLUSTER_SIZE)
    for start in range(0, ROWS, COMMIT_ROWS):
        store.commit(*index_rows(embeddings[start:start + COMMIT_ROWS], REGIONS_PER_IMAGE,
                                 first_image=start // REGIONS_PER_IMAGE))

    report = store.upkeep.maybe_build_index()
    assert report["vector_index"] == "built" and report["num_partitions"] == round(np.sqrt(ROWS))

    recalls = []
    for query in queries_near(embeddings, 50):
        exact = {r["image_id"] for r in store.search(query, k=10, exact=True)}
        approximate = {r["image_id"] for r in store.search(query, k=10)}
        recalls.append(len(exact & approximate) / 10)
    assert np.mean(recalls) >= 0.95, f"recall@10 {np.mean(recalls):.3f}"
