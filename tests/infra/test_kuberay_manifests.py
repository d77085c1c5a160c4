"""The KubeRay manifests as an operator applies them: valid against KubeRay's own CRDs (tests/infra/crds, with
no field that Kubernetes would silently prune), their Serve config valid for Ray Serve, the weights reach every
pod, no secret is written in them, and the replicas the service may ask for fit the worker group."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from maskdex.jobs.serve.config import parse_config
from tests.support.paths import REPO

KUBERAY = REPO / "infra" / "kuberay"
CRDS = Path(__file__).parent / "crds"
MANIFESTS = {"rayjob-index.yaml": "ray.io_rayjobs.yaml", "rayservice.yaml": "ray.io_rayservices.yaml"}


def _manifest(name: str) -> dict:
    return yaml.safe_load((KUBERAY / name).read_text())


def _crd_schema(manifest: dict, crd_file: str) -> dict:
    crd = yaml.safe_load((CRDS / crd_file).read_text())
    assert crd["spec"]["names"]["kind"] == manifest["kind"]
    group, version = manifest["apiVersion"].split("/")
    assert crd["spec"]["group"] == group
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    return served["schema"]["openAPIV3Schema"]


def _unknown_fields(node, schema: dict, path: str = "") -> list[str]:
    """Fields the structural schema does not declare: Kubernetes prunes them without a word (kubectl's
    strict field validation refuses them), so a typo there would be lost silently."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(node, dict) and "properties" in schema:
        found = []
        for key, value in node.items():
            if key in schema["properties"]:
                found += _unknown_fields(value, schema["properties"][key], f"{path}.{key}")
            elif not schema.get("additionalProperties"):
                found.append(f"{path}.{key}")
        return found
    if isinstance(node, dict) and isinstance(schema.get("additionalProperties"), dict):
        return [f for key, value in node.items()
                for f in _unknown_fields(value, schema["additionalProperties"], f"{path}.{key}")]
    if isinstance(node, list) and "items" in schema:
        return [f for i, item in enumerate(node) for f in _unknown_fields(item, schema["items"], f"{path}[{i}]")]
    return []


def _cluster(manifest: dict) -> dict:
    return manifest["spec"].get("rayClusterSpec") or manifest["spec"]["rayClusterConfig"]


def _containers(manifest: dict):
    cluster = _cluster(manifest)
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            yield group, container


def _env(container: dict) -> dict:
    return {item["name"]: item for item in container.get("env", [])}


@pytest.mark.parametrize("name", MANIFESTS)
def test_the_manifest_is_valid_for_kuberays_crd(name):
    manifest = _manifest(name)
    schema = _crd_schema(manifest, MANIFESTS[name])
    jsonschema.validate({key: value for key, value in manifest.items() if key != "status"}, schema)
    assert _unknown_fields(manifest["spec"], schema["properties"]["spec"], "spec") == []


def test_the_crd_check_catches_a_typo_and_a_wrong_type():
    """The two checks above can fail: a misspelt field and a string where KubeRay wants a number."""
    manifest = _manifest("rayservice.yaml")
    schema = _crd_schema(manifest, MANIFESTS["rayservice.yaml"])
    manifest["spec"]["rayClusterConfig"]["enableInTreeAutoscalng"] = True
    assert _unknown_fields(manifest["spec"], schema["properties"]["spec"], "spec") == [
        "spec.rayClusterConfig.enableInTreeAutoscalng"]
    manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    with pytest.raises(jsonschema.ValidationError, match="four"):
        jsonschema.validate(manifest, schema)


def test_the_services_serve_config_is_valid_for_ray_serve():
    from ray.serve.schema import ServeDeploySchema

    serve_config = yaml.safe_load(_manifest("rayservice.yaml")["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    with pytest.raises(Exception, match="proxy_location"):
        ServeDeploySchema.model_validate({**serve_config, "proxy_location": "EveryWhere"})


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_pod_reaches_the_weights(name):
    """Every container is told where the weights are: an object-store folder it can read (credentials from a
    Secret), copied into a cache on a mounted volume on the pods that run models; or a mounted volume."""
    manifest = _manifest(name)
    for group, container in _containers(manifest):
        location = _env(container)["MASKDEX_WEIGHTS"]["value"]
        mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
        if location.startswith(("s3://", "gs://")):
            assert any("secretRef" in source for source in container.get("envFrom", [])), container["name"]
            if group is not _cluster(manifest)["headGroupSpec"]:
                assert _env(container)["MASKDEX_WEIGHTS_CACHE"]["value"] in mounts, container["name"]
        else:
            assert location in mounts, f"{container['name']}: nothing is mounted at {location}"


def test_no_secret_is_written_in_a_manifest():
    service = _manifest("rayservice.yaml")
    config = parse_config(yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"])
    assert config.maskdex.token is None and config.maskdex.token_env
    for _, container in _containers(service):
        source = _env(container)[config.maskdex.token_env]
        assert "value" not in source and source["valueFrom"]["secretKeyRef"]["name"]
    for name in MANIFESTS:
        text = (KUBERAY / name).read_text()
        assert "change-me" not in text and "AWS_SECRET_ACCESS_KEY:" not in text


def _gpus(container: dict) -> float:
    return float(container["resources"]["limits"].get("nvidia.com/gpu", 0))


def _cpus(container: dict) -> float:
    return float(container["resources"]["limits"]["cpu"])


def test_the_services_replicas_fit_the_worker_group_it_can_grow_to():
    service = _manifest("rayservice.yaml")
    cluster = service["spec"]["rayClusterConfig"]
    config = parse_config(yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"])
    wanted = {"GPU": 0.0, "CPU": 0.0}
    autoscales = False
    for name in config.deployments:
        options = config.deployment_options(name)
        scaling = options.get("autoscaling_config")
        autoscales |= scaling is not None
        most = scaling["max_replicas"] if scaling else options.get("num_replicas", 1)
        wanted["GPU"] += most * options["ray_actor_options"].get("num_gpus", 0)
        wanted["CPU"] += most * options["ray_actor_options"].get("num_cpus", 1)
    capacity = {"GPU": 0.0, "CPU": 0.0}
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        capacity["GPU"] += group["maxReplicas"] * _gpus(container)
        capacity["CPU"] += group["maxReplicas"] * _cpus(container)
    assert wanted["GPU"] <= capacity["GPU"] and wanted["CPU"] <= capacity["CPU"], (wanted, capacity)
    assert not autoscales or cluster.get("enableInTreeAutoscaling") is True


def test_serving_pods_are_ready_only_when_the_app_can_answer_a_search():
    """Worker pods probe the app's own /healthz on the Serve port (503 until every model deployment
    answers), with a timeout longer than the route's own wait for a replica; the route is the app's."""
    from maskdex.jobs.serve.api import _READY_WAIT_S, app

    service = _manifest("rayservice.yaml")
    serve_port = yaml.safe_load(service["spec"]["serveConfigV2"]).get("http_options", {}).get("port", 8000)
    for group in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        probe = container["readinessProbe"]
        assert probe["httpGet"] == {"path": "/healthz", "port": serve_port}
        assert "/healthz" in app.openapi()["paths"]
        assert probe["timeoutSeconds"] > _READY_WAIT_S


def test_the_service_runs_the_ingress_maskdex_serve_runs():
    """Every pod of the service has Serve's HAProxy switch, as `maskdex serve` sets it for a local Ray."""
    from maskdex.jobs.serve.app import HAPROXY_ENV

    for _, container in _containers(_manifest("rayservice.yaml")):
        assert _env(container)[HAPROXY_ENV]["value"] == "1", container["name"]


def test_the_index_jobs_actors_fit_its_workers():
    from maskdex.jobs.cli import build_parser

    job = _manifest("rayjob-index.yaml")
    args = build_parser().parse_args(job["spec"]["entrypoint"].split()[1:])
    gpus = sum(group["replicas"] * _gpus(group["template"]["spec"]["containers"][0])
               for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    assert args.sam_actors + args.clip_actors <= gpus  # one GPU per model actor on a CUDA run


def test_the_docker_build_context_leaves_local_runs_out():
    ignored = (REPO / ".dockerignore").read_text().split()
    for leftover in (".venv", "maskdex-data", "photos", ".git"):
        assert leftover in ignored
