"""GET /healthz is a readiness check: 503 naming what it waits for while the model replicas cannot start,
200 only once a search can be served (and then one is)."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.support.ports import free_port
from tests.support.service import service_config

pytestmark = pytest.mark.slow
# What the ingress replica reserves (config.DEFAULT_ACTOR_OPTIONS["Api"]): all the local Ray leaves free
# while the test holds the rest, so the Api starts and the model deployments cannot.
API_CPUS = 0.1


def _hold_cpus(ray, cpus: float) -> list:
    """Actors that hold `cpus` of the local Ray's CPUs until killed (Ray takes fractions only below 1)."""
    @ray.remote
    class Hold:
        def ping(self) -> bool:
            return True

    whole, part = int(cpus), round(cpus - int(cpus), 4)
    holders = [Hold.options(num_cpus=1).remote() for _ in range(whole)]
    if part > 0:
        holders.append(Hold.options(num_cpus=part).remote())
    ray.get([holder.ping.remote() for holder in holders])
    return holders


def _health(url: str) -> tuple[int, dict] | None:
    """The service's own answer to /healthz; None while only Serve's proxy answers (or nothing does)."""
    try:
        response = requests.get(url + "/healthz", timeout=10)
    except (requests.ConnectionError, requests.Timeout):
        return None
    if not response.headers.get("content-type", "").startswith("application/json"):
        return None
    return response.status_code, response.json()


def _poll(url: str, wanted, seconds: float) -> tuple[int, dict]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = _health(url)
        if answer is not None and wanted(answer):
            return answer
        time.sleep(0.3)
    raise TimeoutError(f"/healthz at {url} never gave the answer waited for; last: {answer}")


def test_healthz_is_503_until_the_models_are_up_and_200_when_a_search_can_be_served(serve_db, ray_local):
    from ray import serve

    from maskdex.jobs.serve.app import start
    from maskdex.jobs.serve.config import parse_config

    db, _ = serve_db
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    holders = _hold_cpus(ray_local, ray_local.available_resources()["CPU"] - API_CPUS)
    started: dict = {}

    def deploy():
        try:
            started["url"] = start(parse_config(service_config(db)), host="127.0.0.1", port=port)
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            started["error"] = error

    deploying = threading.Thread(target=deploy, daemon=True)
    deploying.start()
    try:
        status, body = _poll(url, lambda answer: True, 180)  # the ingress is up; the models cannot be
        assert status == 503 and body["status"] == "starting", body
        assert any(item.startswith("TextEncoder") for item in body["waiting_for"]), body
        assert any(item.startswith("Segmenter") for item in body["waiting_for"]), body
        assert serve.status().applications["maskdex"].status != "RUNNING"
        assert "url" not in started and "error" not in started

        for holder in holders:
            ray_local.kill(holder)
        holders = []
        status, body = _poll(url, lambda answer: answer[0] != 503, 240)
        assert status == 200 and body["status"] == "ok" and body["db"] == db, body
        found = requests.post(url + "/search", json={"text": "a cat", "k": 2}, timeout=60)
        assert found.status_code == 200 and len(found.json()) == 2
        deploying.join(120)
        assert started.get("url") == url, started
    finally:
        for holder in holders:
            ray_local.kill(holder)
        deploying.join(120)
        serve.shutdown()
