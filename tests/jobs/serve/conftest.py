"""The query service for the tests in this folder: a small tiny-preset index built once per session, and the
real application started on the local Ray (loopback, a free port) once per test module."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.service import PHOTOS, Service, service_config, wait_until_healthy


@pytest.fixture(scope="session")
def serve_db(tmp_path_factory, ray_local) -> tuple[str, dict[str, Path]]:
    """A tiny-preset index of three small photos."""
    from tests.support.corpus import index_thumbnails

    db, photos = index_thumbnails(tmp_path_factory, "serve", PHOTOS)
    return db, photos


@pytest.fixture(scope="module")
def service(serve_db, ray_local) -> Service:
    from ray import serve

    from maskdex.jobs.serve.app import start
    from maskdex.jobs.serve.config import parse_config

    db, photos = serve_db
    url = start(parse_config(service_config(db)), host="127.0.0.1", port=free_port())
    wait_until_healthy(url, 120)
    yield Service(url, db, photos)
    serve.shutdown()
