"""`POST /admin/remove`: `maskdex remove` for the service (storage/removal.py), behind the write token.

Body: {"image_ids": [...]} or {"uri_prefix": "..."}, and "dry_run": true to only count. The answer is
the removal's report. This service's searches, and those of any other service or replica on the same
database, stop showing the removed images within their read-consistency interval (0.5 s). Not in
the OpenAPI schema: a generated request must never remove an index.
"""

from __future__ import annotations

import asyncio
import threading

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from maskdex.jobs.serve.inputs import BadInput, parse_json

# One removal at a time per replica: two would race on the same fragments' deletion files.
_LOCK = threading.Lock()


class RemoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_ids: list[str] | None = Field(None, max_length=100_000)
    uri_prefix: str | None = None
    dry_run: StrictBool = False


async def remove(api, body: bytes) -> dict:
    if api.config.token is None:
        raise BadInput("removals need the service's write token, and this service has none (maskdex.token)", 401)
    request = parse_json(body, RemoveRequest)
    if (request.image_ids is None) == (request.uri_prefix is None):
        raise BadInput("name the images to remove: either image_ids or uri_prefix")
    try:
        return await asyncio.to_thread(_remove, api.config.db, request)
    except ValueError as error:
        raise BadInput(str(error)) from None


def _remove(db: str, request: RemoveRequest) -> dict:
    from maskdex.storage import removal
    from maskdex.storage.index_store import IndexStore

    image_ids = removal.check_image_ids(request.image_ids) if request.image_ids is not None else None
    with _LOCK:
        store = IndexStore.open(db, fingerprint=None, embed_dim=None, create=False, read_only=request.dry_run)
        if image_ids is None:
            image_ids = sorted(removal.images_under(store, request.uri_prefix))
        return removal.remove_images(store, image_ids, dry_run=request.dry_run).as_dict()
