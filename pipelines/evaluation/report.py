"""Evaluation reports in an output directory: results.json (every number with its configuration),
report.md (tables for people), and for segmentation a plot of mIoU against shots and the summed
confusion matrices (confusion.npz) that every segmentation number derives from."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from maskdex.operators.registry.presets import dense_windows
from maskdex.operators.metrics.segmentation import class_iou, mean_iou
from maskdex.pipelines.evaluation.methods import BASELINES, METHODS

BASELINE_NOTE = ("The baselines (zero-shot, kNN vote, FreeDA-style fusion) are our re-implementations from "
                 "the method descriptions (design.md section 3), not their authors' code.")
MIOU_NOTE = ("mIoU: one confusion matrix over all evaluated pixels (label 255 ignored); IoU per class = "
             "TP / (TP + FP + FN); the mean is over the classes present in ground truth or prediction.")


def write_segmentation_report(evaluation, out_dir: str | Path) -> dict[str, Path]:
    """results.json, report.md, miou_vs_shots.png and confusion.npz for a SegmentationEvaluation."""
    out = _out_dir(out_dir)
    records = segmentation_records(evaluation)
    settings = evaluation.settings
    names = evaluation.classes
    results = {
        "task": "segmentation",
        "dataset": evaluation.dataset,
        "data": evaluation.data,
        "split": "val",
        "classes": list(names),
        "settings": _plain(asdict(settings)),
        "val_images": evaluation.val_images,
        "evaluated_images": evaluation.evaluated_images,
        "seconds": round(evaluation.seconds, 3),
        "shards": [_plain(asdict(shard)) for shard in evaluation.shards],
        "failed_shards": [{"shard": s.shard, "image_ids": list(s.sample_ids), "attempts": s.attempts, "error": s.error}
                          for s in evaluation.failed_shards],
        "supports": [{"shots": s.shots, "seed": s.seed, "image_ids": list(s.image_ids),
                      "images_per_class": dict(zip(names, s.images_per_class)),
                      "short_classes": [names[c] for c in s.short_classes()]} for s in evaluation.supports],
        "results": records,
        "notes": [BASELINE_NOTE, MIOU_NOTE],
    }
    paths = {"results": out / "results.json", "report": out / "report.md", "plot": out / "miou_vs_shots.png",
             "confusion": out / "confusion.npz"}
    paths["results"].write_text(json.dumps(results, indent=2) + "\n")
    np.savez_compressed(paths["confusion"], **{f"{m}__{shots}shot__seed{seed}": matrix
                                               for (m, shots, seed), matrix in evaluation.confusions.items()})
    paths["report"].write_text(_segmentation_markdown(evaluation, records))
    plot_miou(records, settings.methods, paths["plot"])
    return paths


def segmentation_records(evaluation) -> list[dict]:
    """One record per (method, shots, seed): mIoU, IoU per class (None where a class was absent) and supports."""
    support_ids = {(s.shots, s.seed): list(s.image_ids) for s in evaluation.supports}
    records = []
    for (method, shots, seed), confusion in evaluation.confusions.items():
        iou = class_iou(confusion)
        records.append({
            "dataset": evaluation.dataset, "method": method, "shots": shots, "seed": seed,
            "miou": _number(mean_iou(confusion)),
            "per_class_iou": {name: _number(value) for name, value in zip(evaluation.classes, iou)},
            "support_ids": [] if method == "zero-shot" else support_ids[(shots, seed)],
            "images": evaluation.evaluated_images,
        })
    return records


def markdown_table(records: Sequence[dict], methods: Sequence[str]) -> str:
    """Rows: methods; columns: shots (per data set when there are several); cells: mIoU % mean ± std over seeds."""
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    columns = [(d, shots) for d in datasets for shots in sorted({r["shots"] for r in records if r["dataset"] == d})]

    def title(dataset: str, shots: int) -> str:
        label = f"{shots} shot" + ("s" if shots != 1 else "")
        return f"{dataset} {label}" if len(datasets) > 1 else label

    lines = ["| method | " + " | ".join(title(*c) for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for method in methods:
        cells = [_cell([r["miou"] for r in records if (r["dataset"], r["shots"]) == c and r["method"] == method])
                 for c in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_miou(records: Sequence[dict], methods: Sequence[str], path: str | Path) -> None:
    """mIoU (%) against shots, one line per method with the seeds' std as error bars; a panel per data set."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    figure = Figure(figsize=(5.5 * len(datasets), 4.2))
    FigureCanvasAgg(figure)
    for panel, dataset in enumerate(datasets, 1):
        axes = figure.add_subplot(1, len(datasets), panel)
        shots = sorted({r["shots"] for r in records if r["dataset"] == dataset})
        for method in methods:
            means, stds = [], []
            for n in shots:
                values = [r["miou"] for r in records if (r["dataset"], r["method"], r["shots"]) == (dataset, method, n)
                          and r["miou"] is not None]
                means.append(100 * np.mean(values) if values else np.nan)
                stds.append(100 * np.std(values, ddof=1) if len(values) > 1 else 0.0)
            axes.errorbar(shots, means, yerr=stds, marker="o", capsize=3, label=method)
        axes.set_xscale("log")
        axes.set_xticks(shots, [str(n) for n in shots])
        axes.minorticks_off()
        axes.set_xlabel("shots (support images per class)")
        axes.set_ylabel("mIoU (%)")
        axes.set_title(dataset)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write_retrieval_report(evaluation, out_dir: str | Path) -> dict[str, Path]:
    """results.json and report.md for a RetrievalEvaluation."""
    out = _out_dir(out_dir)
    summary = evaluation.summary()
    results = {"task": "retrieval", **_plain(summary), "per_query": [_plain(asdict(q)) for q in evaluation.queries],
               "notes": [evaluation.definitions]}
    paths = {"results": out / "results.json", "report": out / "report.md"}
    paths["results"].write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Retrieval evaluation", "",
        f"Index `{summary['db']}` (models `{summary['models']}`), annotations `{summary['annotations']}`: "
        f"{summary['queries']} queries over {summary['corpus_images']} images "
        f"({summary['missing_images']} annotated images not in the index, "
        f"{summary['queries_without_relevant']} queries without a relevant image left out).", "",
        *_retrieval_table(summary), "",
        evaluation.definitions, "",
    ]
    paths["report"].write_text("\n".join(lines))
    return paths


def _short_side(settings) -> int:
    """The short side images were resized to: the preset's windows, rescaled when one was asked for."""
    return dense_windows(settings.models, settings.short_side)[0].short_side


def _retrieval_table(summary: dict) -> list[str]:
    """One column of metrics, or first stage and re-ranked side by side when the second stage ran."""
    if summary.get("metrics_reranked") is None:
        return ["| metric | value |", "|---|---:|",
                *[f"| {name} | {_percent(value)} |" for name, value in summary["metrics"].items()]]
    rerank, after = summary["rerank"], summary["metrics_reranked"]
    statuses = ", ".join(f"{n} {status}" for status, n in summary["rerank_statuses"].items()) or "none"
    return [f"Re-ranked: the top {rerank['top']} of each query by `{rerank['backend']}` (MaTIR's second stage; "
            f"candidates: {statuses}).", "",
            "| metric | first stage | re-ranked |", "|---|---:|---:|",
            *[f"| {name} | {_percent(value)} | {_percent(after[name])} |" for name, value in summary["metrics"].items()]]


def _segmentation_markdown(evaluation, records: list[dict]) -> str:
    settings = evaluation.settings
    seeds = ", ".join(str(s) for s in settings.seeds)
    lines = [
        "# Segmentation evaluation", "",
        f"Data set `{evaluation.dataset}` at `{evaluation.data}`, val split: {evaluation.evaluated_images} of "
        f"{evaluation.val_images} images evaluated. Models `{settings.models}`, short side {_short_side(settings)}, "
        f"RNS {settings.rns_steps} steps.", "",
        f"mIoU (%), mean ± sample standard deviation over seeds {seeds}:", "",
        markdown_table(records, settings.methods),
        "Methods: " + "; ".join(f"`{m}`: {METHODS[m]}" + (" (baseline)" if m in BASELINES else "")
                                for m in settings.methods) + ".", "",
        BASELINE_NOTE, "",
        MIOU_NOTE, "",
    ]
    failed = evaluation.failed_shards
    if failed:
        lines.append(f"**{len(failed)} shard(s) failed**; their images are not in the numbers above:")
        lines += [f"- shard {s.shard} ({', '.join(s.sample_ids)}), after {s.attempts} attempts: {s.error}"
                  for s in failed]
    else:
        lines.append("Every shard was evaluated.")
    lines += ["", "Support images (ids), per shots and seed:", ""]
    for support in evaluation.supports:
        short = support.short_classes()
        note = f" (fewer than {support.shots} for: {', '.join(evaluation.classes[c] for c in short)})" if short else ""
        lines.append(f"- {support.shots} shot(s), seed {support.seed}: {', '.join(support.image_ids)}{note}")
    return "\n".join(lines) + "\n"


def _cell(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = 100 * float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * float(np.std(values, ddof=1)):.1f}"


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _number(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _plain(value):
    """JSON-ready: tuples as lists, numpy scalars as numbers, NaN as None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _out_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    return out
