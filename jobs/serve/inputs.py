"""What a request may carry: pydantic models for the JSON bodies, and the checks the models cannot make
(limits from the configuration, uploaded bytes, form fields). Every failure is a BadInput with the
HTTP status and a message that names the problem."""

from __future__ import annotations

import io
import json
import re
import warnings
from typing import Literal

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from maskdex.jobs.serve.config import Limits
from maskdex.pipelines.fewshot.request import MODES

IMAGE_ID_PATTERN = "^[0-9a-f]{64}$"  # the SHA-256 of the file, as the index stores it
_IMAGE_ID = re.compile(IMAGE_ID_PATTERN)
_SEED_MAX = 2**31 - 1


class BadInput(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


class SearchFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_area: StrictInt | None = Field(None, ge=0)
    max_area: StrictInt | None = Field(None, ge=0)
    image_ids: list[str] | None = Field(None, max_length=10_000)


class SearchRequest(BaseModel):
    """text, an example (like: an indexed IMAGE_ID[:N]; or, in a multipart body, an uploaded image with an
    optional box or mask), or text and example: q = normalise((1 - weight) * text + weight * example)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    like: str | None = Field(None, description="an indexed region, IMAGE_ID:N, or a whole image, IMAGE_ID")
    weight: float = Field(0.5, ge=0.0, le=1.0, allow_inf_nan=False,
                          description="the example's share when text and an example are both given")
    exclude_self: StrictBool = Field(False, description="leave the example's own image out of the results")
    k: StrictInt = 10
    oversample: StrictInt = 10
    templates: StrictBool = False
    filters: SearchFilters | None = None
    rerank: StrictBool = False  # MaTIR's second stage over the top rerank_top (the service's default)
    rerank_top: StrictInt | None = None


class SegmentRequest(BaseModel):
    """set: the support set; classes: in label-id order (default all of the set's, sorted)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    image_id: str | None = None
    set_name: str = Field(alias="set")
    classes: list[str] | None = None
    mode: Literal[MODES] = MODES[0]
    shots_only: StrictBool = False
    seed: StrictInt = Field(0, ge=0, le=_SEED_MAX)


def check_search(request: SearchRequest, limits: Limits, *, uploaded: bool = False) -> None:
    """uploaded: the request carries an image as its example (multipart)."""
    if request.text is None and request.like is None and not uploaded:
        raise BadInput("nothing to search with: send text, like (an indexed IMAGE_ID[:N]) or an image")
    if request.like is not None and uploaded:
        raise BadInput("send one example: like or an uploaded image, not both")
    if request.like is not None:
        image_id, _, number = request.like.partition(":")
        check_image_id(image_id)
        if ":" in request.like and not re.fullmatch(r"[0-9]{1,9}", number):
            raise BadInput(f"like is IMAGE_ID or IMAGE_ID:N with N a region number, got {request.like[:80]!r}")
    if request.rerank and request.text is None:
        raise BadInput("rerank asks a multimodal LLM about the text: send text too")
    if request.text is not None:
        check_text(request.text, limits)
    if not 1 <= request.k <= limits.max_k:
        raise BadInput(f"k must be between 1 and {limits.max_k}, got {request.k}")
    if not 1 <= request.oversample <= limits.max_oversample:
        raise BadInput(f"oversample must be between 1 and {limits.max_oversample}, got {request.oversample}")
    filters = request.filters
    if filters and filters.image_ids:
        for image_id in filters.image_ids:
            check_image_id(image_id)


def check_text(text: str, limits: Limits) -> None:
    if not text.strip():
        raise BadInput("text is empty")
    if len(text) > limits.max_text_chars:
        raise BadInput(f"text is {len(text)} characters long; the limit is {limits.max_text_chars}")


def check_classes(classes: list[str] | None, limits: Limits) -> None:
    if classes is not None and len(classes) > limits.max_classes:
        raise BadInput(f"{len(classes)} classes asked for; the limit is {limits.max_classes}")


def check_image_id(image_id) -> str:
    if not isinstance(image_id, str) or not _IMAGE_ID.fullmatch(image_id):
        raise BadInput(f"an image id is 64 lowercase hex digits (the SHA-256 of the file), got {str(image_id)[:80]!r}")
    return image_id


def check_image_bytes(data: bytes, limits: Limits, what: str = "image") -> tuple[int, int]:
    """(width, height) from the header of an uploaded image; decoding the pixels is the model's job,
    which refuses truncated data. Only the header is read here, so an oversized image costs nothing."""
    if not data:
        raise BadInput(f"{what} is empty")
    if len(data) > limits.max_upload_bytes:
        raise BadInput(f"{what} is {len(data)} bytes; the limit is {limits.max_upload_bytes}", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadInput(f"{what} has too many pixels; the limit is {limits.max_pixels}", 413) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise BadInput(f"{what} is not a readable image: {error}") from None
    if width * height > limits.max_pixels:
        raise BadInput(f"{what} is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}", 413)
    if width < 1 or height < 1:
        raise BadInput(f"{what} has no pixels ({width}x{height})")
    return width, height


def parse_json(body: bytes, model: type[BaseModel]) -> BaseModel:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as error:
        raise BadInput(f"the body is not JSON: {error}") from None
    return validate(model, data)


def validate(model: type[BaseModel], data) -> BaseModel:
    if not isinstance(data, dict):
        raise BadInput(f"expected a JSON object, got {type(data).__name__}", 422)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise BadInput(describe(error), 422) from None


def describe(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, item['loc'])) or 'body'}: {item['msg']}" for item in error.errors())


def class_list(text: str | None) -> list[str] | None:
    """A form field of classes: a JSON list, or names separated by commas."""
    if text is None or not text.strip():
        return None
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except ValueError:
            raise BadInput("classes looks like a JSON list but is not valid JSON") from None
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise BadInput("classes must be a list of strings")
        return names
    return [name.strip() for name in text.split(",")]


def form_bool(text: str | None, name: str) -> bool:
    if text is None:
        return False
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", ""):
        return False
    raise BadInput(f"{name} must be true or false, got {text[:40]!r}")
