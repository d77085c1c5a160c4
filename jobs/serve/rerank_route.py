"""`POST /search {"rerank": true}`: the first stage in the ingress (Api.first_stage), the second on the Reranker deployment.

A re-ranker that is down or raises never costs the user the search: the first-stage results come back,
each marked rerank.status "error" with the cause.
"""

from __future__ import annotations

import logging

from maskdex.jobs.serve.inputs import BadInput

log = logging.getLogger("maskdex.serve")


async def reranked_search(api, query, filters: dict | None, example: tuple | None = None) -> list[dict]:
    from maskdex.pipelines.rerank import not_reranked

    settings = api.config.rerank
    if api.reranker is None or settings is None:
        raise BadInput("this service has no re-ranker: its config needs a maskdex.rerank section")
    top = query.rerank_top if query.rerank_top is not None else settings.top
    if not 1 <= top <= api.limits.max_k:
        raise BadInput(f"rerank_top must be between 1 and {api.limits.max_k}, got {top}")
    results, vector = await api.first_stage(query, max(query.k, top), filters, example)
    try:
        reranked = await api.reranker.rerank.remote(query.text, results, vector, top)
    except Exception as error:  # the deployment died or could not start: degrade, say why
        log.exception("re-ranker failed; answering with first-stage results")
        reranked = not_reranked(results, f"re-ranker unavailable: {type(error).__name__}")
    return reranked[:query.k]
