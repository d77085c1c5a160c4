"""A real S3-compatible server on loopback for tests (moto's server), and the environment that points
pyarrow's and boto3's S3 clients at it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.support.ports import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def s3_server():
    """Start moto's S3 server on a free loopback port; yield its environment (endpoint and credentials)."""
    port = free_port()
    executable = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    process = subprocess.Popen([executable, "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(endpoint, timeout=2)
                break
            except requests.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on port {port}")
                time.sleep(0.2)
        yield {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
    finally:
        process.terminate()
        process.wait(timeout=10)


def s3_client(environment: dict):
    import boto3

    return boto3.client("s3", endpoint_url=environment["AWS_ENDPOINT_URL"],
                        aws_access_key_id=environment["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=environment["AWS_SECRET_ACCESS_KEY"],
                        region_name=environment["AWS_DEFAULT_REGION"])

