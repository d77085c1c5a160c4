"""`maskdex remove` as a subprocess on a real LanceDB directory: each way of naming images, --dry-run,
--json, and bad input refused with exit 2 and a message, nothing changed."""

from __future__ import annotations

import json
import subprocess
import sys

import lancedb
import pytest

from benchmarks.synthetic_regions import clustered_embeddings, index_rows
from maskdex.storage.index_store import IndexStore
from tests.support.paths import REPO


def maskdex(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maskdex.jobs.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def _counts(db: str) -> tuple[int, int]:
    connection = lancedb.connect(db)
    return connection.open_table("images").count_rows(), connection.open_table("regions").count_rows()


@pytest.mark.slow
def test_remove_by_id_file_and_prefix_with_dry_run_and_bad_input(tmp_path):
    db = str(tmp_path / "db")
    images, regions = index_rows(clustered_embeddings(120, 16, cluster_size=10), regions_per_image=4)
    IndexStore.open(db, fingerprint="remove-cli-test", embed_dim=16).commit(images, regions)
    ids = [row["image_id"] for row in images]  # 30 images, uris file:///synthetic/000000NN.jpg

    dry = maskdex("remove", "--db", db, "--uri-prefix", "file:///synthetic/0000001", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert (json.loads(dry.stdout)["images"], json.loads(dry.stdout)["regions"]) == (10, 40)
    assert _counts(db) == (30, 120)

    by_id = maskdex("remove", "--db", db, "--image-id", ids[0], ids[1], "--json")
    assert by_id.returncode == 0 and json.loads(by_id.stdout)["images"] == 2, by_id.stderr
    listed = tmp_path / "takedown.txt"
    listed.write_text(f"# request 7\n{ids[2]}\n\n{ids[1]}\n")  # one already removed: reported, not an error
    from_file = maskdex("remove", "--db", db, "--ids-file", str(listed))
    assert from_file.returncode == 0 and "removed 1 images" in from_file.stdout
    assert "not in the index (1)" in from_file.stdout
    prefix = maskdex("remove", "--db", db, "--uri-prefix", "file:///synthetic/0000001")
    assert prefix.returncode == 0 and "removed 10 images, 40 regions" in prefix.stdout
    assert _counts(db) == (17, 68)

    for args, message in [(("--image-id", "nope"), "is not an image id"),
                          (("--ids-file", str(tmp_path / "missing.txt")), "cannot read the ids file"),
                          (("--uri-prefix", ""), "--uri-prefix is empty")]:
        refused = maskdex("remove", "--db", db, *args)
        assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr
    both = maskdex("remove", "--db", db, "--image-id", ids[5], "--uri-prefix", "x")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    missing = maskdex("remove", "--db", str(tmp_path / "none"), "--image-id", ids[5])
    assert missing.returncode == 2 and "no maskdex index" in missing.stderr
    assert _counts(db) == (17, 68)
