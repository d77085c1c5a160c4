"""The service's configuration: a `maskdex` section (database, preset, limits, token) and per-deployment
Serve options (replicas, autoscaling, ray_actor_options such as num_gpus), from one YAML file.

```yaml
maskdex:
  db: maskdex-data
  preset: tiny
  token: null            # a bearer token that POST /supports must carry; null: writes are open
  token_env: null        # or the name of an environment variable that holds it (a Kubernetes Secret)
  limits: {max_k: 100}
  rerank:                # optional: enables POST /search {"rerank": true} (MaTIR's second stage)
    backend: transformers          # or openai (endpoint, model, api_key_env)
    model: qwen2.5-vl-7b           # folder Qwen2.5-VL-7B-Instruct in the weights directory; tiny for tests
    top: 20
    batching: {max_batch_size: 8, batch_wait_timeout_s: 0.05}
deployments:
  TextEncoder: {num_replicas: 1, ray_actor_options: {num_gpus: 1}}
  Segmenter: {autoscaling_config: {min_replicas: 1, max_replicas: 4}, ray_actor_options: {num_gpus: 1}}
  Reranker: {num_replicas: 1, ray_actor_options: {num_gpus: 1}}
```
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Deployments the application is made of; options for any other name are refused as a typo.
DEPLOYMENTS = ("Api", "TextEncoder", "Segmenter", "Reranker")
# What each deployment reserves unless configured otherwise: small CPU shares, so that the whole
# service fits a laptop or a test's local Ray; a cluster's config gives the model deployments GPUs.
DEFAULT_ACTOR_OPTIONS = {"Api": {"num_cpus": 0.1}, "TextEncoder": {"num_cpus": 0.5}, "Segmenter": {"num_cpus": 0.5},
                         "Reranker": {"num_cpus": 0.5}}
_SERVE_OPTIONS = ("num_replicas", "autoscaling_config", "ray_actor_options", "max_ongoing_requests",
                  "health_check_period_s", "graceful_shutdown_timeout_s")


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_text_chars: int = Field(500, ge=1)
    max_k: int = Field(100, ge=1)
    max_oversample: int = Field(50, ge=1)
    max_upload_bytes: int = Field(20_000_000, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)
    max_classes: int = Field(32, ge=1, le=255)


class Batching(BaseModel):
    """How a deployment gathers concurrent requests: the text encoder's queries into one forward pass,
    the segmenter's images into one training of their heads (max_batch_size 1: one at a time)."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(16, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0)


class RerankBatching(BaseModel):
    """How the re-ranker gathers candidates (of one or several searches) into one model call."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.05, ge=0)


class RerankConfig(BaseModel):
    """The second stage's model; endpoint and key live here, never in a request (see RerankSettings)."""

    model_config = ConfigDict(extra="forbid")

    backend: str = "transformers"
    model: str | None = None  # default: qwen2.5-vl-7b (transformers); the served name (openai)
    top: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    device: str = "auto"
    dtype: str | None = "bfloat16"
    max_pixels: int | None = Field(None, ge=3136)
    endpoint: str | None = None
    api_key_env: str | None = None  # the name of the environment variable that holds the key
    timeout_s: float = Field(60.0, gt=0)
    box_convention: str = "pixels"
    prompt: str | None = None
    batching: RerankBatching = RerankBatching()

    def settings(self):
        from maskdex.operators.registry.rerankers import DEFAULT_MODEL, RerankSettings

        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if self.api_key_env and not key:
            raise ValueError(f"rerank.api_key_env names ${self.api_key_env}, which is not set")
        model = self.model or (DEFAULT_MODEL if self.backend == "transformers" else "")
        return RerankSettings(backend=self.backend, model=model, top=self.top, batch_size=self.batch_size,
                              max_new_tokens=self.max_new_tokens, device=self.device, dtype=self.dtype,
                              max_pixels=self.max_pixels, endpoint=self.endpoint, api_key=key,
                              timeout_s=self.timeout_s, box_convention=self.box_convention,
                              prompt=self.prompt).check()


class MaskdexConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    db: str
    preset: str = "tiny"
    weights: str | None = None
    device: str = "auto"
    dtype: str | None = "bfloat16"
    token: str | None = None
    # The name of the environment variable that holds the token instead: how a Kubernetes Secret reaches
    # the replicas (secretKeyRef in the pods' env), so that no manifest carries the token itself.
    token_env: str | None = None
    rns_steps: int = Field(700, ge=1)  # steps of the per-image classifier (design.md section 3)
    limits: Limits = Limits()
    batching: Batching = Batching()
    rerank: RerankConfig | None = None  # None: the service answers searches with the first stage only
    # Segmentations take seconds; waiting 20 ms for company costs little.
    segment_batching: Batching = Batching(max_batch_size=8, batch_wait_timeout_s=0.02)
    # Query embeddings kept per (text, templates), so a repeated query skips the text encoder.
    text_cache_size: int = Field(4096, ge=0)


    @model_validator(mode="after")
    def _one_token_source(self):
        if self.token is not None and self.token_env is not None:
            raise ValueError("give token or token_env, not both")
        return self

    def write_token(self) -> str | None:
        """The bearer token that writes must carry (None: writes are open), read where the replica runs."""
        if self.token_env is None:
            return self.token
        token = os.environ.get(self.token_env)
        if not token:
            raise ValueError(f"maskdex.token_env names ${self.token_env}, which is not set or empty on this node "
                             "(in Kubernetes: a secretKeyRef in the pods' env)")
        return token


class ServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    maskdex: MaskdexConfig
    deployments: dict[str, dict] = {}

    def deployment_options(self, name: str) -> dict:
        options = dict(self.deployments.get(name) or {})
        actor = {**DEFAULT_ACTOR_OPTIONS[name], **(options.get("ray_actor_options") or {})}
        return {**options, "ray_actor_options": actor}


def parse_config(data: dict) -> ServiceConfig:
    """A ValueError naming every bad key or value."""
    try:
        config = ServiceConfig.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors())
        raise ValueError(f"bad service config: {problems}") from None
    for name, options in config.deployments.items():
        if name not in DEPLOYMENTS:
            raise ValueError(f"bad service config: unknown deployment {name!r} (known: {', '.join(DEPLOYMENTS)})")
        unknown = sorted(set(options or {}) - set(_SERVE_OPTIONS))
        if unknown:
            raise ValueError(f"bad service config: deployments.{name}: unknown option(s) {', '.join(unknown)}")
    return config


def load_config(path: str | os.PathLike | None, **overrides) -> ServiceConfig:
    """The config file (if any) with the maskdex keys given here on top (those that are not None)."""
    import yaml

    data: dict = {}
    if path is not None:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
        if not isinstance(data, dict):
            raise ValueError(f"service config {path} must be a mapping")
    section = dict(data.get("maskdex") or {})
    section.update({key: value for key, value in overrides.items() if value is not None})
    if "db" not in section:
        raise ValueError("the service needs a database: pass --db or set maskdex.db in the config")
    return parse_config({**data, "maskdex": section})
