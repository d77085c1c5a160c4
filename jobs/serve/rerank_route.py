"""`POST /search {"rerank": true}`: the first stage in the ingress (Api.first_stage), the second on the Reranker deployment.

A re-ranker that is down or raises never costs the user the search: the first-stage results come back,
each marked rerank.status "error" with the cause.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import numpy as np

from maskdex.jobs.serve.inputs import BadInput

log = logging.getLogger("maskdex.serve")


async def reranked_search(query, first_stage: Callable[[int], Awaitable[tuple[list[dict], np.ndarray]]], *,
                          reranker, settings, max_k: int) -> list[dict]:
    """The query's k results, the top rerank_top of them re-ranked.

    first_stage(n): the n best first-stage results and the query vector (the ingress's Api.first_stage
    with this request's filters and example); reranker: the Reranker deployment's handle and settings
    the config's maskdex.rerank section (either None: this service has no re-ranker); max_k: the
    service's limit on k, which rerank_top keeps to too.
    """
    from maskdex.pipelines.rerank import not_reranked

    if reranker is None or settings is None:
        raise BadInput("this service has no re-ranker: its config needs a maskdex.rerank section")
    top = query.rerank_top if query.rerank_top is not None else settings.top
    if not 1 <= top <= max_k:
        raise BadInput(f"rerank_top must be between 1 and {max_k}, got {top}")
    results, vector = await first_stage(max(query.k, top))
    try:
        reranked = await reranker.rerank.remote(query.text, results, vector, top)
    except Exception as error:  # the deployment died or could not start: degrade, say why
        log.exception("re-ranker failed; answering with first-stage results")
        reranked = not_reranked(results, f"re-ranker unavailable: {type(error).__name__}")
    return reranked[:query.k]
