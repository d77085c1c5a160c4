"""Building the application from a service config, and running it on a local Ray.

`build_app` is the import path a Serve config names (`serve run` / `serve deploy`, the RayService):
its args are the service config itself (a `maskdex` section and `deployments`), or {"config": FILE}
naming a YAML file that holds it, with any `maskdex` keys given beside "config" on top.
"""

from __future__ import annotations

import time

from maskdex.jobs.serve.config import ServiceConfig, load_config, parse_config

APP_NAME = "maskdex"
# How many requests a replica takes at once unless configured: the encoder must hold several batches
# for batching to happen; the segmenter trains one batch of images while the next one gathers.
_DEFAULT_ONGOING = {"TextEncoder": 64, "Segmenter": 2, "Api": 256, "Reranker": 32}


def build_app(args: dict):
    return build(_config_from_args(dict(args or {})))


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


def start(config: ServiceConfig, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None) -> str:
    """Deploy the application on Ray (a local instance unless address names a cluster); returns its URL."""
    import ray
    from ray import serve

    from maskdex.pipelines.common.ray_pools import init_ray

    if not ray.is_initialized():
        init_ray(address)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build(config), name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def serve_forever(config: ServiceConfig, *, host: str, port: int, address: str | None = None) -> None:
    from ray import serve

    try:  # Ctrl-C may come while the replicas are still starting
        url = start(config, host=host, port=port, address=address)
        print(f"maskdex is serving {config.maskdex.db} at {url} (Ctrl-C stops it)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        serve.shutdown()


def _config_from_args(args: dict) -> ServiceConfig:
    path = args.pop("config", None)
    if path is None:
        return parse_config(args)
    overrides = dict(args.pop("maskdex", None) or {})
    if args:
        raise ValueError(f"build_app args: with 'config', only 'maskdex' overrides may be given, not {sorted(args)}")
    return load_config(path, **overrides)
