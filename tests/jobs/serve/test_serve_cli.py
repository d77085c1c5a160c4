"""`maskdex serve` as a user runs it: a process that serves until Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from tests.support.ports import free_port

pytestmark = pytest.mark.slow


def test_maskdex_serve_answers_until_interrupted(serve_db, tmp_path):
    db, _ = serve_db
    config = tmp_path / "service.yaml"
    config.write_text("maskdex:\n  device: cpu\n  limits: {max_k: 7}\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "maskdex.jobs.cli", "serve", "--db", db, "--port", str(port),
                                "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, "RAY_ADDRESS": ""})
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, process.stdout.read()[-3000:]
            try:
                if requests.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "maskdex serve did not come up"
            time.sleep(1)
        assert len(requests.post(url + "/search", json={"text": "a cat", "k": 2}, timeout=60).json()) == 2
        refused = requests.post(url + "/search", json={"text": "a cat", "k": 8}, timeout=60)
        assert refused.status_code == 400 and "between 1 and 7" in refused.json()["error"]
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    assert "stopping" in output
