"""What the service's OpenAPI schema (GET /openapi.json) says about each route: the request bodies the
routes parse themselves (JSON or multipart, so FastAPI cannot infer them), the answers, and the JSON
errors. Clients and API testers (tests/jobs/serve/test_serve_schema.py runs Schemathesis) read it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from maskdex.jobs.serve.config import Limits
from maskdex.jobs.serve.inputs import IMAGE_ID_PATTERN, SearchRequest, SegmentRequest
from maskdex.pipelines.fewshot.request import MODES


class ErrorAnswer(BaseModel):
    error: str


class Rle(BaseModel):
    model_config = ConfigDict(extra="allow")

    size: list[int]
    counts: str


class SearchRegion(BaseModel):
    model_config = ConfigDict(extra="allow")

    region_id: str
    bbox: list[int]
    rle: Rle
    score: float


class SearchHit(BaseModel):
    """One image of a search answer; stages after the first may add fields."""

    model_config = ConfigDict(extra="allow")

    image_id: str
    uri: str
    score: float
    region: SearchRegion


class Health(BaseModel):
    status: Literal["ok"]
    db: str
    preset: str
    rerank: bool  # whether POST /search takes {"rerank": true}


class NotReady(BaseModel):
    status: Literal["starting"]
    waiting_for: list[str]


class Region(BaseModel):
    """A stored region, without its embedding."""

    model_config = ConfigDict(extra="allow")

    region_id: str
    image_id: str
    rle: Rle
    bbox: list[int]
    area: int
    predicted_iou: float
    stability_score: float


class ImageRegions(BaseModel):
    image_id: str
    width: int
    height: int
    regions: list[Region]


class Segmentation(BaseModel):
    """What POST /segment and GET /images/{image_id}/segmentation share: labels_png is a base64 PNG of
    class indices into `classes`, masks one RLE per class, regions where region mode got its regions."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    image_id: str | None
    set_name: str = Field(alias="set")
    width: int
    height: int
    mode: Literal[MODES]
    regions: Literal["index", "sam2"] | None
    classes: list[str]
    found: list[str]
    pixel_fractions: dict[str, float]
    visual_support: list[str]
    text_support: list[str]
    used_fallback: bool
    colours: list[list[int]]
    labels_png: str
    masks: dict[str, Rle]


class SegmentAnswer(Segmentation):
    support_images: dict[str, int]  # class -> examples of it in the set


class StoredSegmentation(Segmentation):
    models: str
    seed: int
    shots_only: bool
    segmented_at: str  # ISO 8601


class SupportSets(BaseModel):
    sets: dict[str, dict[str, int]]  # set -> class -> number of example images


class SupportAdded(BaseModel):
    set_name: str = Field(alias="set")
    image_id: str
    classes: dict[str, int]  # class -> its pixels in the example

    model_config = ConfigDict(populate_by_name=True)


class SupportRemoved(BaseModel):
    set_name: str = Field(alias="set")
    class_name: str | None = Field(alias="class")  # None: the whole set
    removed_examples: int

    model_config = ConfigDict(populate_by_name=True)


class CocoInstances(BaseModel):
    """Search results as COCO instances: images, one annotation per result's region (its RLE), the query as
    the category."""

    model_config = ConfigDict(extra="allow")

    images: list[dict]
    annotations: list[dict]
    categories: list[dict]


_MESSAGES = {400: "the request is malformed or names something invalid", 401: "a bearer token is needed",
             404: "no such image, region, set or page", 413: "the request is over the upload limit",
             415: "the body has the wrong content type", 422: "a field has the wrong type or value"}


def errors(*statuses: int) -> dict:
    """OpenAPI responses for the JSON errors a route can answer with (422 replaces FastAPI's own shape)."""
    return {status: {"model": ErrorAnswer, "description": _MESSAGES[status]} for status in statuses}


def json_body(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _inline(model)}}}}


def segment_body() -> dict:
    form = {"type": "object", "required": ["image", "set"], "properties": {
        "image": {"type": "string", "format": "binary"}, "set": {"type": "string"},
        "classes": {"type": "string", "description": "comma-separated class names"},
        "mode": {"type": "string", "enum": list(MODES)},
        "shots_only": {"type": "string", "enum": ["true", "false"]},
        "seed": {"type": "string", "pattern": "^[0-9]{1,9}$"}}}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _inline(SegmentRequest)},
                                                           "multipart/form-data": {"schema": form}}}}


def search_body() -> dict:
    """JSON (text and/or like), or multipart with an uploaded example image and, optionally, a box or a mask."""
    flag = {"type": "string", "enum": ["true", "false"]}
    form = {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "the example image"},
        "box": {"type": "string", "pattern": "^[0-9]{1,6},[0-9]{1,6},[0-9]{1,6},[0-9]{1,6}$",
                "description": "x,y,w,h in the image's pixels: search with this box of it"},
        "mask": {"type": "string", "format": "binary",
                 "description": "an image of the same size whose non-zero pixels are the region to search with"},
        "text": {"type": "string", "description": "optional words, mixed with the example by weight"},
        "weight": {"type": "string", "description": "the example's share in [0, 1] (default 0.5)"},
        "k": {"type": "string", "pattern": "^[0-9]{1,4}$"}, "oversample": {"type": "string", "pattern": "^[0-9]{1,4}$"},
        "exclude_self": flag, "templates": flag}}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _inline(SearchRequest)},
                                                           "multipart/form-data": {"schema": form}}}}


def supports_body() -> dict:
    form = {"type": "object", "required": ["image", "labels", "set", "classes"], "properties": {
        "image": {"type": "string", "format": "binary"}, "labels": {"type": "string", "format": "binary"},
        "set": {"type": "string"}, "classes": {"type": "string", "description": "comma-separated, in label-id order"}}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}}}


def segmentation_query() -> dict:
    """The stored-segmentation route reads its query string itself (unknown names are a 400), so its
    parameters are declared here."""
    def param(name: str, schema: dict, description: str, required: bool = False) -> dict:
        return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}

    return {"parameters": [
        param("set", {"type": "string", "minLength": 1}, "the support set the images were segmented with", True),
        param("classes", {"type": "string"}, "comma-separated or a JSON list, in label-id order"),
        param("mode", {"type": "string", "enum": list(MODES)}, "the segmentation mode"),
        param("seed", {"type": "string", "pattern": "^[0-9]{1,9}$"}, "the run's seed"),
        param("shots_only", {"type": "string", "enum": ["true", "false"]}, "true: the runs that used the examples only, not the class names")]}


def image_answer() -> dict:
    return {200: {"description": "the indexed image's bytes",
                  "content": {"image/*": {"schema": {"type": "string", "format": "binary"}},
                              "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def _inline(model: type[BaseModel]) -> dict:
    """The model's JSON schema with its $defs resolved in place (openapi_extra is copied verbatim,
    so references to the model's own definitions would dangle)."""
    schema = model.model_json_schema(by_alias=True)
    definitions = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return resolve(schema)


SEARCH_BODY = json_body(SearchRequest)


def service_schema(app, limits: Limits) -> dict:
    """FastAPI's schema of the app with the bounds that a service's limits (its config) put on requests,
    so that the schema's valid requests are the ones the server takes (FastAPI.openapi, then once more)."""
    from fastapi import FastAPI

    if app.openapi_schema is None:
        apply_limits(FastAPI.openapi(app), limits)
    return app.openapi_schema


def apply_limits(schema: dict, limits: Limits) -> None:
    image_id = {"pattern": IMAGE_ID_PATTERN}
    search = _json_schema(schema, "/search", "post")
    if search is not None:
        fields = search.get("properties", {})
        # A text of spaces only is refused as empty: at least one other character.
        _bound(fields.get("text"), "string", minLength=1, maxLength=limits.max_text_chars, pattern=r"\S")
        _bound(fields.get("k"), "integer", minimum=1, maximum=limits.max_k)
        _bound(fields.get("oversample"), "integer", minimum=1, maximum=limits.max_oversample)
        _bound(fields.get("rerank_top"), "integer", minimum=1, maximum=limits.max_k)
        filters = fields.get("filters") or {}
        for option in [filters, *filters.get("anyOf", [])]:
            ids = (option.get("properties") or {}).get("image_ids")
            for variant in [ids or {}, *(ids or {}).get("anyOf", [])]:
                if variant.get("type") == "array":
                    variant["items"] = {**variant.get("items", {}), **image_id}
    segment = _json_schema(schema, "/segment", "post")
    if segment is not None:
        _bound(segment.get("properties", {}).get("image_id"), "string", **image_id)
        _bound(segment.get("properties", {}).get("classes"), "array", maxItems=limits.max_classes)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") == "image_id":
                    _bound(parameter["schema"], "string", **image_id)


def _json_schema(schema: dict, path: str, method: str) -> dict | None:
    try:
        return schema["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    except KeyError:
        return None


def _bound(node: dict | None, kind: str, **keywords) -> None:
    """Add keywords to a property schema of the given type, or to its branch of that type (an optional
    field is anyOf [type, null])."""
    if not node:
        return
    for variant in [node, *node.get("anyOf", [])]:
        if variant.get("type") == kind:
            variant.update(keywords)
