"""infra/ agrees with the code: the RayJob runs a real `maskdex` command, the RayService and the Serve config
name an import path that builds the application from a valid service config, GPUs are declared."""

from __future__ import annotations

import importlib
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from maskdex.jobs.cli import build_parser
from maskdex.jobs.serve.config import DEPLOYMENTS, load_config, parse_config
from tests.support.paths import REPO

INFRA = REPO / "infra"


def _manifest(name: str) -> dict:
    return yaml.safe_load((INFRA / "kuberay" / name).read_text())


def _containers(cluster: dict) -> list[dict]:
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [container for group in groups for container in group["template"]["spec"]["containers"]]


def _gpu_workers(cluster: dict) -> list[dict]:
    return [container for group in cluster["workerGroupSpecs"] for container in group["template"]["spec"]["containers"]
            if int(container["resources"]["limits"].get("nvidia.com/gpu", 0)) > 0]


def test_the_rayjob_runs_a_real_maskdex_command_on_gpu_workers():
    job = _manifest("rayjob-index.yaml")
    assert job["kind"] == "RayJob"
    program, *argv = shlex.split(job["spec"]["entrypoint"])
    assert program == "maskdex"
    args = build_parser().parse_args(argv)
    assert args.command == "index" and args.device == "cuda" and args.db.startswith("s3://")
    assert _gpu_workers(job["spec"]["rayClusterSpec"])


def test_the_rayservice_serves_the_serve_config_and_builds_the_application(tmp_path, monkeypatch):
    from ray.serve import Application

    from maskdex.jobs.serve.preflight import ServicePreflightError
    from maskdex.operators.registry.presets import missing_weights

    service = _manifest("rayservice.yaml")
    assert service["kind"] == "RayService"
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert serve_config == yaml.safe_load((INFRA / "serve-config.yaml").read_text())
    (app,) = serve_config["applications"]
    module, _, attribute = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), attribute)
    # Where the weights are not, the builder refuses before any replica is asked for, naming each file.
    monkeypatch.setenv("MASKDEX_WEIGHTS", str(tmp_path))
    monkeypatch.delenv("MASKDEX_ALLOW_DOWNLOAD", raising=False)
    missing = [Path(path) for _, path in missing_weights(app["args"]["maskdex"]["preset"], tmp_path)]
    assert missing
    with pytest.raises(ServicePreflightError) as refused:
        builder(app["args"])
    assert all(str(path) in str(refused.value) for path in missing)
    for path in missing:  # present (the check looks for the files; reading them is the replicas' job)
        path.touch()
    assert isinstance(builder(app["args"]), Application)
    config = parse_config(app["args"])
    for name in ("TextEncoder", "Segmenter"):  # the model deployments get GPUs
        assert config.deployment_options(name)["ray_actor_options"]["num_gpus"] >= 1
    assert config.maskdex.device == "cuda" and config.maskdex.token_env and config.maskdex.token is None
    assert _gpu_workers(service["spec"]["rayClusterConfig"])
    ports = {port["containerPort"] for c in _containers(service["spec"]["rayClusterConfig"]) for port in c.get("ports", [])}
    assert serve_config["http_options"]["port"] in ports


def test_the_local_service_config_is_what_maskdex_serve_takes():
    path = INFRA / "maskdex-service.yaml"
    args = build_parser().parse_args(["serve", "--config", str(path), "--db", "elsewhere"])
    assert args.command == "serve"
    config = load_config(args.config, db=args.db)
    assert config.maskdex.db == "elsewhere" and set(config.deployments) <= set(DEPLOYMENTS)


def test_one_image_everywhere_and_it_installs_maskdex():
    images = {c["image"] for name in ("rayjob-index.yaml", "rayservice.yaml")
              for c in _containers(_manifest(name)["spec"].get("rayClusterSpec")
                                   or _manifest(name)["spec"]["rayClusterConfig"])}
    assert len(images) == 1
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["maskdex"]' in dockerfile and "pip install --no-cache-dir ." in dockerfile
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["maskdex"] == "maskdex.jobs.cli:main"
    ray_pin = next(dep for dep in pyproject["project"]["dependencies"] if dep.startswith("ray["))
    assert re.search(r"rayproject/ray:" + re.escape(ray_pin.split("==")[1]), dockerfile)
    for folder in pyproject["tool"]["setuptools"]["package-dir"].values():
        assert f"COPY --chown=ray:users {folder} {folder}" in dockerfile


@pytest.mark.parametrize("bad, words", [
    ({"maskdex": {"db": "x", "limits": {"max_k": 0}}}, "max_k"),
    ({"maskdex": {"db": "x", "tokn": "t"}}, "tokn"),
    ({"maskdex": {"db": "x"}, "deployments": {"Segmentor": {}}}, "Segmentor"),
    ({"maskdex": {"db": "x"}, "deployments": {"Segmenter": {"num_gpu": 1}}}, "num_gpu"),
    ({"deployments": {}}, "maskdex"),
])
def test_a_bad_service_config_is_refused_by_name(bad, words):
    with pytest.raises(ValueError, match=words):
        parse_config(bad)


def test_the_write_token_comes_from_the_environment_variable_the_config_names(monkeypatch):
    """How a Kubernetes Secret reaches the replicas: the config names a variable, the pod's env fills it."""
    config = parse_config({"maskdex": {"db": "x", "token_env": "MASKDEX_TEST_TOKEN"}}).maskdex
    monkeypatch.setenv("MASKDEX_TEST_TOKEN", "s3cret")
    assert config.write_token() == "s3cret"
    monkeypatch.delenv("MASKDEX_TEST_TOKEN")
    with pytest.raises(ValueError, match=r"\$MASKDEX_TEST_TOKEN, which is not set"):
        config.write_token()
    assert parse_config({"maskdex": {"db": "x", "token": "t"}}).maskdex.write_token() == "t"
    with pytest.raises(ValueError, match="token or token_env, not both"):
        parse_config({"maskdex": {"db": "x", "token": "t", "token_env": "V"}})
