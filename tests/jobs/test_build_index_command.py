"""`maskdex build-index` on a real LanceDB directory: what it does to an index the table has outgrown."""

import json

from benchmarks.synthetic_regions import clustered_embeddings, index_rows
from maskdex.jobs.cli import main
from maskdex.storage import IndexStore

DIM = 32


def build_index(db: str, capsys, *flags: str) -> dict:
    assert main(["build-index", "--db", db, *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_build_index_retrains_an_outgrown_index_and_refreshes_one_that_fits(tmp_path, capsys):
    db = str(tmp_path / "index")
    store = IndexStore.open(db, fingerprint="build-index-test", embed_dim=DIM)
    store.commit(*index_rows(clustered_embeddings(2000, DIM, cluster_size=20), regions_per_image=5))
    first = build_index(db, capsys, "--force")  # 2,000 rows: below MIN_ROWS, so only by force
    assert (first["vector_index"], first["trained_rows"]) == ("built", 2000)

    # Rows a killed run left behind its last training: the index no longer fits the table.
    store.commit(*index_rows(clustered_embeddings(2500, DIM, cluster_size=20, seed=3), regions_per_image=5,
                             first_image=1000))
    retrained = build_index(db, capsys)
    assert (retrained["vector_index"], retrained["trained_rows"]) == ("built", 4500)
    assert retrained["num_partitions"] > first["num_partitions"]

    again = build_index(db, capsys)
    assert (again["vector_index"], again["trained_rows"]) == ("refreshed", 4500)
    assert IndexStore.open(db, fingerprint=None, embed_dim=None, read_only=True).stats()["unindexed_rows"] == 0
