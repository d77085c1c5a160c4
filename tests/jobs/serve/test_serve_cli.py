"""`maskdex serve` as a user runs it: a process that serves until Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import requests

from tests.support.ports import free_port
from tests.support.service import wait_until_healthy

pytestmark = pytest.mark.slow


def test_maskdex_serve_answers_until_interrupted(serve_db, tmp_path):
    db, _ = serve_db
    config = tmp_path / "service.yaml"
    config.write_text("maskdex:\n  device: cpu\n  limits: {max_k: 7}\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "maskdex.jobs.cli", "serve", "--db", db, "--port", str(port),
                                "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, "RAY_ADDRESS": ""}, start_new_session=True,
                               preexec_fn=_as_from_a_terminal)
    try:
        wait_until_healthy(url, 180, process)
        assert len(requests.post(url + "/search", json={"text": "a cat", "k": 2}, timeout=60).json()) == 2
        refused = requests.post(url + "/search", json={"text": "a cat", "k": 8}, timeout=60)
        assert refused.status_code == 400 and "between 1 and 7" in refused.json()["error"]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=120)
        finally:  # never leave its Ray instance behind, holding ports the next tests need
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert process.returncode == 0, output[-3000:]
    assert "stopping" in output


def _as_from_a_terminal() -> None:
    # A shell runs background commands with SIGINT ignored, and a child inherits that; a terminal's
    # Ctrl-C reaches a process whose SIGINT has its default handling.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
