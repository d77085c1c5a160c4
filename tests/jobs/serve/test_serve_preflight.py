"""A service config that cannot work is refused before Ray starts, every problem named; a deployment that
fails in its constructor anyway has its cause on the console, not only in Ray's log files."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
import yaml

from maskdex.jobs.serve.app import build_app, exception_line
from maskdex.jobs.serve.preflight import ServicePreflightError
from tests.support.ports import free_port

FAST_FILES = ("sam2.1_hiera_tiny.pt", "open_clip_ViT-B-16_openai.safetensors", "clip_b16_grit+mim_fultune_4xe.pth",
              "open_clip_ViT-B-16_laion2b_s34b_b88k.safetensors")


def _serve(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("MASKDEX_ALLOW_DOWNLOAD", None)
    return subprocess.run([sys.executable, "-m", "maskdex.jobs.cli", "serve", *argv], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_maskdex_serve_names_every_missing_weight_file_and_the_database_and_starts_nothing(tmp_path):
    weights, db = tmp_path / "weights", tmp_path / "no-such-db"
    config = tmp_path / "service.yaml"
    config.write_text(yaml.safe_dump({"maskdex": {"preset": "fast", "weights": str(weights), "device": "cpu"}}))
    done = _serve(["--config", str(config), "--db", str(db), "--port", str(free_port())], timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    for name in FAST_FILES:  # each one, with where it was looked for
        assert str(weights / name) in done.stderr
    assert f"database {db}: no such directory" in done.stderr
    assert "Traceback" not in done.stderr and "Ray" not in done.stderr  # Ray never started
    assert not db.exists() and not weights.exists()


def test_the_serve_builder_refuses_a_preset_without_its_weights_and_a_missing_database(tmp_path, monkeypatch):
    monkeypatch.delenv("MASKDEX_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setenv("MASKDEX_WEIGHTS", str(tmp_path))
    args = {"maskdex": {"db": str(tmp_path / "db"), "preset": "fast"}}
    with pytest.raises(ServicePreflightError) as refused:
        build_app(args)
    message = str(refused.value)
    assert all(str(tmp_path / name) in message for name in FAST_FILES)
    assert "$MASKDEX_WEIGHTS" in message and "no such directory" in message
    assert not (tmp_path / "db").exists()


def test_an_unknown_preset_and_a_rerank_key_that_is_not_set_are_named_together(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VARIABLE", raising=False)
    args = {"maskdex": {"db": "s3://bucket/db", "preset": "huge",
                        "rerank": {"backend": "openai", "endpoint": "http://127.0.0.1:1/v1",
                                   "api_key_env": "NO_SUCH_KEY_VARIABLE"}}}
    with pytest.raises(ServicePreflightError) as refused:
        build_app(args)
    assert "unknown model preset 'huge'" in str(refused.value)
    assert "$NO_SUCH_KEY_VARIABLE, which is not set" in str(refused.value)


def test_the_cause_is_the_last_exception_line_of_a_traceback():
    message = ("The deployment failed to start 3 times in a row. See controller logs for details. Error:\n"
               "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
               "ray.exceptions.RayTaskError(ValueError): ray::Replica.initialize()\n"
               "ValueError: device 'cuda' was asked for, but CUDA is not available on this machine\n")
    assert exception_line(message) == "ValueError: device 'cuda' was asked for, but CUDA is not available on this machine"
    assert exception_line("just words") == "just words"
    several = "Traceback:\n  File x\nServicePreflightError: the service cannot start:\n  - one\n  - two\n"
    assert exception_line(several) == "ServicePreflightError: the service cannot start:\n  - one\n  - two"


@pytest.mark.slow
def test_a_replica_that_fails_in_its_constructor_has_its_cause_on_the_console(serve_db, tmp_path):
    # A device the replicas' machine lacks: only the replica can find out (the driver may have no GPU).
    device = f"cuda:{torch.cuda.device_count() + 3}" if torch.cuda.is_available() else "cuda"
    db, _ = serve_db
    config = tmp_path / "service.yaml"
    config.write_text(yaml.safe_dump({"maskdex": {"preset": "tiny", "device": device}}))
    done = _serve(["--config", str(config), "--db", db, "--port", str(free_port())], timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    report = done.stderr[done.stderr.index("maskdex serve: error: the service did not start"):]
    # Both model deployments need the device; the report comes when the first of them has failed.
    causes = re.findall(r"^deployment (TextEncoder|Segmenter) failed to start: (.*)$", report, re.MULTILINE)
    assert causes, report
    for _, cause in causes:
        assert "cuda" in cause.lower() and ("Error" in cause or "Exception" in cause), report
    assert "Failed to update the deployments" not in report, report


def test_weights_in_an_object_store_this_host_cannot_reach_are_left_to_the_replicas_with_a_notice(
        tmp_path, monkeypatch, capsys):
    # The replicas may hold credentials the host that runs `maskdex serve` lacks: not a reason to refuse,
    # but the console says that the weights were not checked, and why.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("MASKDEX_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(ServicePreflightError) as refused:
        build_app({"maskdex": {"db": str(tmp_path / "db"), "preset": "fast", "weights": "s3://weights-bucket/maskdex"}})
    assert "no such directory" in str(refused.value) and "weight file" not in str(refused.value)
    notice = capsys.readouterr().err
    assert "the weights at s3://weights-bucket/maskdex could not be listed from this host" in notice
    assert "Could not connect" in notice or "OSError" in notice
