"""32 concurrent clients for a bounded time: every request answered with a 200, and a support example
added meanwhile is used by the next /segment."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import requests

from tests.support.service import png_bytes, scene_example

pytestmark = pytest.mark.slow

CLIENTS = 32
SECONDS = 20
QUERIES = ("a cat", "coffee", "an astronaut", "grass", "a cup", "a person")


def test_32_clients_get_no_errors_and_a_new_support_is_used_meanwhile(service):
    stop = threading.Event()
    answers: list[tuple[str, int | str]] = []
    lock = threading.Lock()
    counter = itertools.count()
    image_id = service.post("/search", json={"text": "coffee", "k": 1}).json()[0]["image_id"]

    def client():
        session = requests.Session()
        while not stop.is_set():
            n = next(counter)
            try:
                if n % 5 == 4:
                    status = session.get(f"{service.url}/images/{image_id}/regions", timeout=120).status_code
                else:
                    response = session.post(service.url + "/search", json={"text": QUERIES[n % len(QUERIES)], "k": 3},
                                            timeout=120)
                    status = response.status_code if len(response.json()) == 3 else "wrong length"
            except requests.RequestException as error:
                status = repr(error)
            with lock:
                answers.append((f"request {n}", status))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)  # the load is on before the write
        image, labels, names = scene_example(seed=21, must=1)
        added = service.add_support("under-load", image, labels, names)
        assert added.status_code == 200, added.text
        test_image = png_bytes(scene_example(seed=22, must=0)[0])
        segmented = service.post("/segment", files={"image": ("t.png", test_image, "image/png")},
                                 data={"set": "under-load"})
        assert segmented.status_code == 200, segmented.text
        assert sorted(segmented.json()["visual_support"]) == sorted(names)
        time.sleep(SECONDS)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    failures = [answer for answer in answers if answer[1] != 200]
    assert len(answers) > CLIENTS and not failures, failures[:5]
    assert service.get("/healthz").json()["status"] == "ok"
