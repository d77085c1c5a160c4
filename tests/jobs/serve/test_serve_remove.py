"""Removing images from a running service's index over real HTTP: POST /admin/remove behind the write
token, and a removal by the CLI that a service started earlier follows."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time

import pytest

from maskdex.storage.tables import READER_CONSISTENCY
from tests.support.paths import REPO
from tests.support.ports import free_port
from tests.support.service import TOKEN, Service, service_config, wait_until_healthy

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def removable(serve_db, ray_local, tmp_path_factory) -> Service:
    """The service over a copy of the session's index, which these tests take images out of."""
    from ray import serve

    from maskdex.jobs.serve.app import start
    from maskdex.jobs.serve.config import parse_config

    db, photos = serve_db
    copy = str(tmp_path_factory.mktemp("removable") / "db")
    shutil.copytree(db, copy)
    url = start(parse_config(service_config(copy)), host="127.0.0.1", port=free_port())
    wait_until_healthy(url, 120)
    yield Service(url, copy, photos)
    serve.shutdown()


def _found(service: Service) -> set[str]:
    response = service.post("/search", json={"text": "a photo", "k": 10})
    assert response.status_code == 200, response.text
    return {hit["image_id"] for hit in response.json()}


def _settle() -> None:
    time.sleep(READER_CONSISTENCY.total_seconds() + 0.5)  # the service looks for new versions this often


@pytest.mark.slow
def test_admin_remove_takes_images_out_of_search_and_the_cli_removal_is_followed(removable):
    ids = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in removable.photos.items()}
    assert _found(removable) == set(ids.values())  # the search warms the service's caches

    assert removable.post("/admin/remove", json={"image_ids": [ids["coffee"]]}).status_code == 401
    bad = removable.post("/admin/remove", json={"image_ids": ["x' OR 1=1"]}, headers=AUTH)
    assert bad.status_code == 400 and "not an image id" in bad.json()["error"]
    both = removable.post("/admin/remove", json={"image_ids": [], "uri_prefix": "/"}, headers=AUTH)
    assert both.status_code == 400 and "either image_ids or uri_prefix" in both.json()["error"]
    dry = removable.post("/admin/remove", json={"image_ids": [ids["coffee"]], "dry_run": True}, headers=AUTH)
    assert dry.status_code == 200 and (dry.json()["images"], dry.json()["dry_run"]) == (1, True)
    _settle()
    assert _found(removable) == set(ids.values())

    removed = removable.post("/admin/remove", json={"image_ids": [ids["coffee"]]}, headers=AUTH)
    assert removed.status_code == 200, removed.text
    assert removed.json()["images"] == 1 and removed.json()["regions"] > 0
    _settle()
    assert _found(removable) == {ids["chelsea"], ids["astronaut"]}
    assert removable.get(f"/images/{ids['coffee']}").status_code == 404
    assert removable.get(f"/images/{ids['coffee']}/regions").status_code == 404

    # Another process removes by uri prefix: the running service follows.
    cli = subprocess.run([sys.executable, "-m", "maskdex.jobs.cli", "remove", "--db", removable.db,
                          "--uri-prefix", str(removable.photos["chelsea"])], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert cli.returncode == 0 and "removed 1 images" in cli.stdout, cli.stderr
    _settle()
    assert _found(removable) == {ids["astronaut"]}
