"""Retrieval evaluation: text queries from instance annotations, searched in an index built by `maskdex index`.

Annotations are a COCO-format instances JSON: images (id, file_name, height, width), annotations
(image_id, category_id, segmentation as polygons or RLE) and categories (id, name). Every category
with an annotated image in the corpus is a query, its name the query text. D-cube's COCO-format
files (d3_json/d3_{full,pres,abs}_annotations.json) have this form with the expressions as
categories, so each expression is a query; it is searched over the whole corpus (D-cube's
inter-scenario setting), not only over its group's images.

The corpus is the annotated images found in the index: an indexed image (status ok) is an
annotated image when its uri ends with that image's file_name. Indexed images that are not
annotated are left out of the search; annotated images missing from the index are counted in the
report (they can never be retrieved, and they do not count as relevant).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskdex.operators.common import rle as rle_codec
from maskdex.operators.metrics.retrieval import average_precision_at_k, matches_an_instance, recall_at_k
from maskdex.pipelines.search import TextSearcher, check_query_text

RECALL_AT = (1, 5, 10)
DEFINITIONS = (
    "AP@K = (1 / min(|R_q|, K)) * sum over ranks i <= K of precision@i * rel_i, with R_q the query's relevant "
    "images in the corpus; mAP is the mean over queries. Image level (mAP@K): rank i is relevant when its image "
    "shows the query. Object level (mAP@K@t): only when the returned region also has mask IoU >= t with one of "
    "the query's instances in that image. recall@k: the fraction of queries with a relevant image in the top k. "
    "These definitions are ours (design.md section 5); the MaTIR paper's exact ones were not available."
)


@dataclass(frozen=True)
class GroundTruth:
    images: dict[int, dict]  # image id -> {"file_name", "height", "width"}
    categories: dict[int, str]  # category id -> name (the query)
    instances: dict[int, dict[int, list[dict]]]  # category id -> image id -> instance masks (RLE)


@dataclass
class QueryResult:
    query: str
    category_id: int
    relevant_images: int
    ap: float
    ap_object: float
    recall: dict[str, float]
    ranked: list[dict] = field(default_factory=list)  # {file_name, score, relevant, object_relevant}
    # The same measures after MaTIR's second stage (--rerank): {"ap", "ap_object", "recall", "ranked", "statuses"}.
    reranked: dict | None = None


@dataclass
class RetrievalEvaluation:
    db: str
    annotations: str
    models: str
    k: int
    iou_threshold: float
    corpus_images: int
    missing_images: list[str]
    queries: list[QueryResult]
    queries_without_relevant: list[str]
    definitions: str = DEFINITIONS
    rerank: dict | None = None  # {"backend", "top"} when the second stage ran

    def metrics(self) -> dict[str, float | None]:
        return self._metrics([(q.ap, q.ap_object, q.recall) for q in self.queries])

    def metrics_reranked(self) -> dict[str, float | None] | None:
        """The same metrics after the re-rank, or None when it did not run."""
        if self.rerank is None:
            return None
        return self._metrics([(q.reranked["ap"], q.reranked["ap_object"], q.reranked["recall"]) for q in self.queries])

    def rerank_statuses(self) -> dict[str, int]:
        """How many re-ranked candidates ended in each status (confirmed, rejected, unparsed, error)."""
        counts: dict[str, int] = defaultdict(int)
        for q in self.queries:
            for status, n in (q.reranked or {}).get("statuses", {}).items():
                counts[status] += n
        return dict(sorted(counts.items()))

    def _metrics(self, rows) -> dict[str, float | None]:
        def mean(values):
            return float(np.mean(values)) if values else None

        t = round(100 * self.iou_threshold)
        out = {f"mAP@{self.k}": mean([ap for ap, _, _ in rows]),
               f"mAP@{self.k}@{t}": mean([ap_object for _, ap_object, _ in rows])}
        for at in RECALL_AT:
            if at <= self.k:
                out[f"recall@{at}"] = mean([recall[f"recall@{at}"] for _, _, recall in rows])
        return out

    def summary(self) -> dict:
        summary = {"db": self.db, "annotations": self.annotations, "models": self.models, "k": self.k,
                   "iou_threshold": self.iou_threshold, "queries": len(self.queries),
                   "corpus_images": self.corpus_images, "missing_images": len(self.missing_images),
                   "missing_examples": self.missing_images[:20],
                   "queries_without_relevant": len(self.queries_without_relevant), "metrics": self.metrics()}
        if self.rerank is not None:
            summary.update(rerank=self.rerank, metrics_reranked=self.metrics_reranked(),
                           rerank_statuses=self.rerank_statuses())
        return summary


def load_annotations(path: str | os.PathLike) -> GroundTruth:
    """A COCO-format instances file; every error names the file and the offending entry."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"annotation file {path} is not JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"annotation file {path} is not a COCO-format object")
    missing = [key for key in ("images", "annotations", "categories") if key not in data]
    if missing:
        raise ValueError(f"annotation file {path} is not COCO-format instances: no {', '.join(missing)}")
    try:
        images = {int(i["id"]): {"file_name": str(i["file_name"]), "height": int(i["height"]),
                                 "width": int(i["width"])} for i in data["images"]}
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"annotation file {path}: an image or category entry lacks {error}") from error
    instances: dict[int, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for index, annotation in enumerate(data["annotations"]):
        where = f"annotation file {path}, annotations[{index}]"
        try:
            image_id, category_id = int(annotation["image_id"]), int(annotation["category_id"])
            segmentation = annotation["segmentation"]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{where}: needs integer image_id and category_id and a segmentation ({error})") from error
        if image_id not in images or category_id not in categories:
            raise ValueError(f"{where}: image_id {image_id} or category_id {category_id} is not declared")
        info = images[image_id]
        try:
            mask = rle_codec.from_segmentation(segmentation, info["height"], info["width"])
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
        instances[category_id][image_id].append(mask)
    return GroundTruth(images, categories, {c: dict(by_image) for c, by_image in instances.items()})


def match_images(images: dict[int, dict], indexed: dict[str, str]) -> dict[int, str]:
    """Annotation image id -> index image_id, for the annotated images whose file the index holds."""
    by_name = defaultdict(list)
    for image_id, uri in indexed.items():
        by_name[_basename(uri)].append((image_id, uri))
    matched = {}
    for gt_id, info in images.items():
        file_name = info["file_name"].replace("\\", "/").lstrip("/")
        found = [(i, uri) for i, uri in by_name.get(_basename(file_name), [])
                 if uri.replace("\\", "/").endswith("/" + file_name) or uri == file_name]
        if len(found) > 1:
            raise ValueError(f"annotated image {file_name} matches several indexed images: "
                             f"{', '.join(uri for _, uri in found)}")
        if found:
            matched[gt_id] = found[0][0]
    return matched


def evaluate_retrieval(db: str, annotations: str | os.PathLike, *, k: int = 50, iou_threshold: float = 0.5,
                       weights: str | None = None, device: str = "auto", templates: bool = False,
                       oversample: int = 10, rerank=None) -> RetrievalEvaluation:
    """rerank: a RerankSettings (operators/registry/rerankers.py) to measure MaTIR's second stage as well:
    every query is then scored on the first-stage ranking and on the re-ranked one, from one search."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    truth = load_annotations(annotations)
    searcher = TextSearcher(db, weights=weights, device=device)
    reranker = None
    if rerank is not None:
        from maskdex.operators.registry.rerankers import build_reranker
        from maskdex.pipelines.rerank import ResultReranker

        reranker = ResultReranker(build_reranker(rerank, weights=weights), searcher.store, top=rerank.top)
    indexed = searcher.store.image_uris()
    matched = match_images(truth.images, indexed)
    if not matched:
        raise ValueError(f"none of the {len(truth.images)} annotated images is in the index at {db} (matched by "
                         f"file name); index the image folder first with `maskdex index`")
    to_truth = {image_id: gt_id for gt_id, image_id in matched.items()}
    # Search only the annotated images, unless the index holds nothing else.
    filters = None if set(indexed) <= set(to_truth) else {"image_ids": sorted(to_truth)}
    queries, empty = [], []
    for category_id, name in truth.categories.items():
        shown = {gt_id: masks for gt_id, masks in truth.instances.get(category_id, {}).items() if gt_id in matched}
        if not shown:
            empty.append(name)
            continue
        check_query_text(name)
        query = searcher.embed([name], templates=templates)[0]
        wanted = k if reranker is None else max(k, reranker.top)
        results = searcher.lookup(query, k=wanted, oversample=oversample, filters=filters)
        ranked = _judge_ranking(results[:k], name, shown, truth, to_truth, iou_threshold)
        measures = _measures(ranked, len(shown), k)
        second = None
        if reranker is not None:
            reordered = reranker.rerank(name, results, query)[:k]
            statuses: dict[str, int] = defaultdict(int)
            for result in reordered:
                if result["rerank"]["status"] != "skipped":
                    statuses[result["rerank"]["status"]] += 1
            reranked_rows = _judge_ranking(reordered, name, shown, truth, to_truth, iou_threshold)
            for row, result in zip(reranked_rows, reordered):
                row["rerank"] = result["rerank"]["status"]
            second = {**_measures(reranked_rows, len(shown), k), "ranked": reranked_rows, "statuses": dict(statuses)}
        queries.append(QueryResult(query=name, category_id=category_id, relevant_images=len(shown), **measures,
                                   ranked=ranked, reranked=second))
    missing = sorted(info["file_name"] for gt_id, info in truth.images.items() if gt_id not in matched)
    return RetrievalEvaluation(db=db, annotations=str(annotations), models=searcher.store.fingerprint, k=k,
                               iou_threshold=iou_threshold, corpus_images=len(matched), missing_images=missing,
                               queries=queries, queries_without_relevant=empty,
                               rerank=None if reranker is None else {"backend": reranker.reranker.name,
                                                                     "top": reranker.top})


def _judge_ranking(results: list[dict], name: str, shown: dict, truth: GroundTruth, to_truth: dict,
                   iou_threshold: float) -> list[dict]:
    ranked = []
    for result in results:
        gt_id = to_truth[result["image_id"]]
        masks = shown.get(gt_id, [])
        try:
            object_hit = matches_an_instance(result["region"]["rle"], masks, iou_threshold)
        except ValueError as error:
            raise ValueError(f"query {name!r}, image {truth.images[gt_id]['file_name']}: {error} (was the "
                             f"image indexed from another file than the annotated one?)") from error
        ranked.append({"file_name": truth.images[gt_id]["file_name"], "score": result["score"],
                       "relevant": bool(masks), "object_relevant": object_hit})
    return ranked


def _measures(ranked: list[dict], relevant: int, k: int) -> dict:
    image_hits = [r["relevant"] for r in ranked]
    return {"ap": average_precision_at_k(image_hits, relevant, k),
            "ap_object": average_precision_at_k([r["object_relevant"] for r in ranked], relevant, k),
            "recall": {f"recall@{at}": recall_at_k(image_hits, at) for at in RECALL_AT if at <= k}}


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]
