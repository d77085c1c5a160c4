"""The re-rank deployment (MaTIR's second stage behind `POST /search {"rerank": true}`).

It holds the multimodal LLM (or the client of an OpenAI-compatible server) with its own num_gpus,
replicas and autoscaling (deployments.Reranker in the service config), and gathers the candidates of
concurrent searches into one generate call (Serve's batching, sized by the service config's
maskdex.rerank.batching section). Loading images, parsing and matching run per search in a worker
thread; only the model call is shared.
"""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from maskdex.jobs.serve.config import MaskdexConfig
from maskdex.operators.rerank.base import Reply, Reranker


class _Batched(Reranker):
    """A Reranker whose judge() hands each candidate to the deployment's batched model call."""

    def __init__(self, deployment: "RerankerModel", loop: asyncio.AbstractEventLoop):
        self.deployment, self.loop = deployment, loop

    def judge(self, queries: list[str], images: list[np.ndarray]) -> list[Reply]:
        async def all_of():
            return await asyncio.gather(*(self.deployment._judge((q, image)) for q, image in zip(queries, images)))

        return asyncio.run_coroutine_threadsafe(all_of(), self.loop).result()


@serve.deployment(name="Reranker")
class RerankerModel:
    def __init__(self, config: dict):
        from maskdex.operators.registry.rerankers import build_reranker
        from maskdex.storage.index_store import IndexStore

        settings = MaskdexConfig.model_validate(config)
        if settings.rerank is None:
            raise ValueError("the Reranker deployment needs a maskdex.rerank section in the service config")
        self.settings = settings.rerank.settings()
        self.backend = build_reranker(self.settings, weights=settings.weights)
        self.store = IndexStore.open(settings.db, fingerprint=None, embed_dim=None, read_only=True)
        self.max_pixels = settings.limits.max_pixels
        self._judge.set_max_batch_size(settings.rerank.batching.max_batch_size)
        self._judge.set_batch_wait_timeout_s(settings.rerank.batching.batch_wait_timeout_s)

    async def rerank(self, text: str, results: list[dict], query: np.ndarray | None, top: int | None) -> list[dict]:
        from maskdex.pipelines.rerank import ResultReranker

        reranker = ResultReranker(_Batched(self, asyncio.get_running_loop()), self.store,
                                  top=top or self.settings.top, max_pixels=self.max_pixels)
        return await asyncio.to_thread(reranker.rerank, text, results, query)

    def info(self) -> dict:
        return {"backend": self.backend.name, "top": self.settings.top}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _judge(self, pairs: list[tuple[str, np.ndarray]]) -> list[Reply]:
        return await asyncio.to_thread(self.backend.judge, [q for q, _ in pairs], [image for _, image in pairs])
