"""The HTTP ingress: FastAPI routes that check every input, then call the model deployments.

Errors are JSON {"error": "..."}: 4xx naming the problem when the request is at fault (including a
ValueError that a pipeline raises on the request's data), 500 otherwise.
"""

import asyncio
import hashlib
import hmac
import logging
import mimetypes
import os
import time

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from ray import serve
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from maskdex.jobs.serve import openapi
from maskdex.jobs.serve.config import MaskdexConfig
from maskdex.jobs.serve.inputs import (
    BadInput,
    SearchRequest,
    SegmentRequest,
    check_classes,
    check_image_bytes,
    check_image_id,
    check_search,
    class_list,
    form_bool,
    parse_json,
    validate,
)
from maskdex.jobs.serve.query_vectors import QueryVectors

log = logging.getLogger("maskdex.serve")
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
# How long /healthz waits for a model replica to answer; a Kubernetes probe's timeoutSeconds must exceed it.
_READY_WAIT_S = 1.0
# Form fields are short (a set name, a class list); anything longer is not a real client.
_MAX_FORM_FIELD = 64 * 1024

app = FastAPI(title="maskdex", docs_url=None, redoc_url=None, openapi_url="/openapi.json")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@app.exception_handler(BadInput)
async def _bad_input(request: Request, error: BadInput) -> JSONResponse:
    # Messages from the stores name the database by its path, which is the server's business, not the user's.
    db = getattr(request.app.state, "db", None)
    return _error(error.status, error.message.replace(f" at {db}", "").replace(db, "the database") if db else error.message)


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    return _error(422, "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors()))


@app.exception_handler(StarletteHTTPException)
async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
    return _error(error.status_code, str(error.detail))


@app.exception_handler(Exception)
async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    # Not the request's fault: a bug or a broken dependency. Logged in full, answered without details.
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _error(500, f"internal error ({type(error).__name__})")


class _RecordMetrics:
    """Counts every request and its latency by route. A plain ASGI middleware: Starlette's
    @app.middleware("http") runs each request in a task of its own, behind memory streams, about
    0.25 ms more per request on this machine (benchmarks/api_middleware.py)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        metrics = getattr(scope["app"].state, "metrics", None) if scope["type"] == "http" else None
        if metrics is None:
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500  # what an unhandled error becomes

        async def send_noting_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            # The route's template, not the raw path: one time series per endpoint, not per image id.
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.record(route, status, (time.perf_counter() - started) * 1000)


app.add_middleware(_RecordMetrics)


class RequestMetrics:
    """Requests and latency per route, exported by Ray's metrics agent in Prometheus format."""

    def __init__(self):
        from ray.util.metrics import Counter, Histogram

        self.requests = Counter("maskdex_requests", description="HTTP requests by route and status",
                                tag_keys=("route", "status"))
        self.latency = Histogram("maskdex_request_latency_ms", description="HTTP request latency by route",
                                 boundaries=[5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000],
                                 tag_keys=("route",))

    def record(self, route: str, status: int, milliseconds: float) -> None:
        self.requests.inc(tags={"route": route, "status": str(status)})
        self.latency.observe(milliseconds, tags={"route": route})


async def _model_call(response):
    """The result of a model deployment call; a ValueError raised on the request's data becomes a 400."""
    try:
        return await response
    except ValueError as error:
        cause = getattr(error, "cause", error)  # a RayTaskError carries the replica's exception
        raise BadInput(str(cause)) from None


# Defined before the deployment: Serve serialises its class when the decorator runs.
def _read_indexed(row: dict) -> bytes:
    from maskdex.pipelines.common.sources import read_bytes

    return read_bytes(row["uri"])


def _is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


def _field(form, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadInput(f"{name} must be a plain form field, not a file")
    return value


def _form_int(text: str | None, name: str) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise BadInput(f"{name} must be a whole number, got {text[:40]!r}") from None


def _form_float(text: str | None, name: str) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise BadInput(f"{name} must be a number, got {text[:40]!r}") from None


def _form_box(text: str) -> tuple[int, int, int, int]:
    from maskdex.pipelines.search import parse_box

    try:
        return parse_box(text)
    except ValueError as error:
        raise BadInput(str(error)) from None


@serve.deployment(name="Api")
@serve.ingress(app)
class Api:
    def __init__(self, encoder, segmenter, config: dict, reranker=None):
        self.encoder = encoder
        self.segmenter = segmenter
        self.reranker = reranker
        self.config = MaskdexConfig.model_validate(config)
        self.limits = self.config.limits
        self.token = self.config.write_token()
        self._index = None
        self.query_vectors = QueryVectors(encoder, self.config.text_cache_size, _model_call)
        app.state.metrics = RequestMetrics()
        self._ready = False
        app.state.db = self.config.db
        app.openapi_schema = None  # rebuilt with this config's limits (openapi.service_schema)
        app.openapi = lambda: openapi.service_schema(app, self.limits)

    # Pages and health

    @app.get("/healthz", response_model=openapi.Health,
             responses={503: {"model": openapi.NotReady, "description": "not ready yet: what it waits for"}})
    async def healthz(self):
        """Ready only when a search can be served: every model replica answers and the table is open.
        Before that a 503, so a probe (or a load balancer) sends no traffic to a half-started service."""
        if not self._ready:
            waiting = await self._readiness()
            if waiting:
                return JSONResponse({"status": "starting", "waiting_for": waiting}, status_code=503)
            # Once ready, stays ready: the models do not unload, and Serve itself replaces a replica that dies.
            self._ready = True
        return {"status": "ok", "db": self.config.db, "preset": self.config.preset, "rerank": self.reranker is not None}

    @app.get("/", include_in_schema=False)
    async def page(self) -> FileResponse:
        return self._static("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(self, name: str) -> FileResponse:
        return self._static(name)

    # Search and images

    @app.post("/search", response_model=list[openapi.SearchHit], responses=openapi.errors(400, 404, 413, 422),
              openapi_extra=openapi.search_body())
    async def search(self, request: Request) -> list[dict]:
        """By text, by example (JSON `like`, or a multipart upload with an optional box or mask), or both."""
        return await self._search(*await self._search_request(request))

    @app.post("/search/coco", response_model=openapi.CocoInstances, responses=openapi.errors(400, 404, 413, 422),
              openapi_extra=openapi.search_body())
    async def search_coco(self, request: Request) -> dict:
        """The same search, answered as a COCO instances document (what `maskdex search --export coco` writes)."""
        from maskdex.pipelines.export import coco_instances, query_label

        query, example = await self._search_request(request)
        results = await self._search(query, example)
        return coco_instances(results, query_label(query.text, query.like, "an uploaded image" if example else None))

    async def _search_request(self, request: Request) -> tuple[SearchRequest, tuple | None]:
        """The query and, for a multipart body, the example: (image bytes, box or None, mask bytes or None)."""
        if not _is_multipart(request):
            query = parse_json(await self._body(request), SearchRequest)
            check_search(query, self.limits)
            return query, None
        form = await self._form(request)
        image = await self._upload(form, "image")
        mask = await self._upload(form, "mask") if form.get("mask") is not None else None
        fields = {"text": (_field(form, "text") or "").strip() or None, "like": _field(form, "like") or None,
                  "k": _form_int(_field(form, "k"), "k"),
                  "oversample": _form_int(_field(form, "oversample"), "oversample"),
                  "weight": _form_float(_field(form, "weight"), "weight"),
                  "exclude_self": form_bool(_field(form, "exclude_self"), "exclude_self"),
                  "templates": form_bool(_field(form, "templates"), "templates")}
        query = validate(SearchRequest, {key: value for key, value in fields.items() if value is not None})
        check_search(query, self.limits, uploaded=True)
        box = _field(form, "box")
        box = _form_box(box) if box and box.strip() else None
        if box is not None and mask is not None:
            raise BadInput("send a box or a mask, not both")
        check_image_bytes(image, self.limits)
        if mask is not None:
            check_image_bytes(mask, self.limits, what="mask")
        return query, (image, box, mask)

    async def _search(self, query: SearchRequest, example: tuple | None) -> list[dict]:
        filters = query.filters.model_dump(exclude_none=True) if query.filters else None
        if query.rerank:
            from maskdex.jobs.serve.rerank_route import reranked_search

            return await reranked_search(query, lambda k: self.first_stage(query, k, filters, example),
                                         reranker=self.reranker, settings=self.config.rerank, max_k=self.limits.max_k)
        results, _ = await self.first_stage(query, query.k, filters, example)
        return results

    @app.get("/images/{image_id}", response_class=Response,
             responses={**openapi.image_answer(), **openapi.errors(400, 404, 422)})
    async def image(self, image_id: str) -> Response:
        row = await asyncio.to_thread(self._indexed, image_id)
        data = await asyncio.to_thread(_read_indexed, row)
        media_type = mimetypes.guess_type(row["uri"])[0] or "application/octet-stream"
        return Response(data, media_type=media_type)

    @app.get("/images/{image_id}/regions", response_model=openapi.ImageRegions,
             responses=openapi.errors(400, 404, 422))
    async def regions(self, image_id: str) -> dict:
        row = await asyncio.to_thread(self._indexed, image_id)
        stored = await asyncio.to_thread(self._index_store().regions_of, image_id)
        regions = [{key: value for key, value in region.items() if key != "embedding"} for region in stored]
        return {"image_id": image_id, "width": row["width"], "height": row["height"], "regions": regions}

    @app.get("/images/{image_id}/segmentation", response_model=openapi.StoredSegmentation,
             responses=openapi.errors(400, 404, 422), openapi_extra=openapi.segmentation_query())
    async def segmentation(self, image_id: str, request: Request) -> dict:
        """The image's stored corpus segmentation (maskdex segment-index); see jobs/serve/segmentations.py."""
        from maskdex.jobs.serve.segmentations import parse_params, stored_segmentation

        params = parse_params(dict(request.query_params))
        found = await asyncio.to_thread(lambda: stored_segmentation(self._segmentation_store(), image_id, params))
        if await asyncio.to_thread(self._index_store().image, image_id) is None:  # removed (storage/removal.py)
            raise BadInput(f"no segmentation of image {image_id}: it is not in the index", 404)
        return found

    # Segmentation and support sets

    @app.post("/segment", response_model=openapi.SegmentAnswer, responses=openapi.errors(400, 404, 413, 422),
              openapi_extra=openapi.segment_body())
    async def segment(self, request: Request) -> dict:
        if _is_multipart(request):
            form = await self._form(request)
            image = await self._upload(form, "image")
            fields = {"set": _field(form, "set"), "classes": class_list(_field(form, "classes")),
                      "mode": _field(form, "mode") or None,  # empty: SegmentRequest's default
                      "shots_only": form_bool(_field(form, "shots_only"), "shots_only"),
                      "seed": _form_int(_field(form, "seed"), "seed")}
            params = validate(SegmentRequest, {key: value for key, value in fields.items() if value is not None})
            if params.image_id is not None:
                raise BadInput("send either an uploaded image or an image_id, not both")
        else:
            params = parse_json(await self._body(request), SegmentRequest)
            if params.image_id is None:
                raise BadInput("send an image: a multipart upload named 'image', or JSON with an image_id")
            image = await asyncio.to_thread(_read_indexed, await asyncio.to_thread(self._indexed, params.image_id))
        check_classes(params.classes, self.limits)
        check_image_bytes(image, self.limits)
        return await _model_call(self.segmenter.segment.remote(image, params.set_name, params.classes, params.mode,
                                                               params.shots_only, params.seed, params.image_id))

    @app.post("/supports", response_model=openapi.SupportAdded, responses=openapi.errors(400, 401, 413, 415, 422),
              openapi_extra=openapi.supports_body())
    async def add_support(self, request: Request) -> dict:
        self._authorise(request)
        if not _is_multipart(request):
            raise BadInput("POST /supports takes multipart/form-data: image, labels (PNG), set, classes", 415)
        form = await self._form(request)
        image = await self._upload(form, "image")
        labels = await self._upload(form, "labels")
        set_name = _field(form, "set")
        classes = class_list(_field(form, "classes"))
        if not set_name:
            raise BadInput("set is missing")
        if not classes:
            raise BadInput("classes is missing: name the class of each label id, in order")
        check_classes(classes, self.limits)
        width, height = check_image_bytes(image, self.limits)
        label_size = check_image_bytes(labels, self.limits, what="label map")
        if label_size != (width, height):
            raise BadInput(f"label map is {label_size[0]}x{label_size[1]} but the image is {width}x{height}")
        return await _model_call(self.segmenter.add_example.remote(set_name, image, labels, classes))

    @app.get("/supports", response_model=openapi.SupportSets)
    async def list_supports(self) -> dict:
        return {"sets": await self.segmenter.list_sets.remote()}

    @app.post("/admin/remove", include_in_schema=False)
    async def admin_remove(self, request: Request) -> dict:
        """Remove images from the index (jobs/serve/admin_route.py)."""
        from maskdex.jobs.serve.admin_route import remove

        self._authorise(request)
        return await remove(self, await self._body(request))

    @app.delete("/supports/{set_name}", response_model=openapi.SupportRemoved, response_model_by_alias=True,
                responses=openapi.errors(400, 401, 404, 422))
    async def remove_support_set(self, set_name: str, request: Request) -> dict:
        """Delete a support set and all of its examples."""
        self._authorise(request)
        return await self._remove_support(set_name, None)

    @app.delete("/supports/{set_name}/classes/{class_name}", response_model=openapi.SupportRemoved,
                response_model_by_alias=True, responses=openapi.errors(400, 401, 404, 422))
    async def remove_support_class(self, set_name: str, class_name: str, request: Request) -> dict:
        """Delete one class of a support set (the set goes with its last class)."""
        self._authorise(request)
        return await self._remove_support(set_name, class_name)

    async def _remove_support(self, set_name: str, class_name: str | None) -> dict:
        try:
            return await self.segmenter.remove.remote(set_name, class_name)
        except ValueError as error:
            raise BadInput(str(getattr(error, "cause", error)), 404) from None

    # Helpers

    async def _readiness(self) -> list[str]:
        """What the service still waits for (empty: ready). A model deployment is ready when one of its
        replicas answers, which it does only after its constructor loaded the models."""
        async def answers(name: str, handle) -> str | None:
            response = handle.ready.remote()
            try:
                await asyncio.wait_for(response, _READY_WAIT_S)
                return None
            except asyncio.TimeoutError:
                response.cancel()
                return f"{name}: no replica is up yet"
            except Exception as error:  # the replica died or could not be reached
                return f"{name}: {type(error).__name__}: {error}"

        models = [("TextEncoder", self.encoder), ("Segmenter", self.segmenter)]
        waiting = [item for item in await asyncio.gather(*(answers(*model) for model in models)) if item]
        try:
            await asyncio.to_thread(self._index_store)
        except (FileNotFoundError, ValueError, OSError) as error:
            waiting.append(f"database: {error}")
        return waiting

    def _authorise(self, request: Request) -> None:
        token = self.token
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise BadInput("this write needs the service's bearer token (Authorization: Bearer TOKEN)", 401)

    async def _body(self, request: Request) -> bytes:
        """The body, refused as soon as it passes the upload limit (a client cannot make us buffer more)."""
        limit = self.limits.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + _MAX_FORM_FIELD:
            raise BadInput(f"the request is {declared} bytes; the upload limit is {limit}", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit + _MAX_FORM_FIELD:
                raise BadInput(f"the request is over the upload limit of {limit} bytes", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _form(self, request: Request):
        body = await self._body(request)

        async def stream():
            yield body

        try:
            return await MultiPartParser(request.headers, stream(), max_files=4, max_fields=16,
                                         max_part_size=_MAX_FORM_FIELD).parse()
        except MultiPartException as error:
            raise BadInput(f"malformed multipart body: {error.message}") from None

    async def _upload(self, form, name: str) -> bytes:
        upload = form.get(name)
        if not isinstance(upload, UploadFile):
            raise BadInput(f"{name} is missing: upload it as a file field named {name!r}")
        return await upload.read()

    async def first_stage(self, query: SearchRequest, k: int, filters: dict | None,
                          example: tuple | None = None) -> tuple[list[dict], np.ndarray]:
        """The k best images for the query, and its query vector (a re-ranker scores with it).
        The lookup runs here, beside the cached vectors, not on the encoder's replica."""
        vector, filters = await self._query_vector(query, filters, example)
        results = await asyncio.to_thread(self._lookup, vector, k, query.oversample, filters)
        return results, vector

    async def _query_vector(self, query: SearchRequest, filters: dict | None,
                            example: tuple | None) -> tuple[np.ndarray, dict | None]:
        """Text, example, or both combined (storage.search.combine_queries); an uploaded example goes through
        the encoder deployment, which batches it with others; a `like` is read from the index."""
        from maskdex.storage.search import combine_queries, without_image

        text = await self.query_vectors.get(query.text, query.templates) if query.text is not None else None
        shown, own = None, None
        if query.like is not None:
            shown, own = await asyncio.to_thread(self._stored_vector, query.like)
        elif example is not None:
            shown = await _model_call(self.encoder.embed_example.remote(*example))
            own = hashlib.sha256(example[0]).hexdigest()
        try:
            vector = combine_queries(text, shown, query.weight)
        except ValueError as error:
            raise BadInput(str(error)) from None
        return vector, without_image(filters, own if query.exclude_self else None)

    def _stored_vector(self, like: str) -> tuple[np.ndarray, str]:
        from maskdex.storage.index_store import NotIndexed

        try:
            return self._index_store().stored_vector(like)
        except NotIndexed as error:
            raise BadInput(str(error), 404) from None

    def _lookup(self, vector: np.ndarray, k: int, oversample: int, filters: dict | None) -> list[dict]:
        try:
            return self._index_store().search(vector, k=k, oversample=oversample, filters=filters)
        except ValueError as error:
            raise BadInput(str(error)) from None

    def _index_store(self):
        if self._index is None:
            from maskdex.storage.index_store import IndexStore

            self._index = IndexStore.open(self.config.db, fingerprint=None, embed_dim=None, read_only=True)
        return self._index

    def _segmentation_store(self):
        """The segmentations table, or None while the database has none (looked for again next time)."""
        if getattr(self, "_segmentations", None) is None:
            from maskdex.storage.segmentation_store import SegmentationStore

            try:
                self._segmentations = SegmentationStore.open(self.config.db, create=False)
            except FileNotFoundError:
                return None
        return self._segmentations

    def _indexed(self, image_id: str) -> dict:
        """The images row of an indexed image; ids come from the request, paths only from the table."""
        from maskdex.storage.schemas import OK

        check_image_id(image_id)
        row = self._index_store().image(image_id)
        if row is None:
            raise BadInput(f"no image {image_id} in the index", 404)
        if row["status"] != OK:
            raise BadInput(f"image {image_id} failed to index: {row['error']}", 404)
        return row

    def _static(self, name: str) -> FileResponse:
        if name not in STATIC_FILES:  # a fixed list: no path from the request reaches the file system
            raise BadInput(f"no page {name!r}", 404)
        return FileResponse(os.path.join(STATIC_DIR, name), media_type=STATIC_FILES[name])
