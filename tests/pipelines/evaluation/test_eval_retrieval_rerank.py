"""`maskdex eval retrieval --rerank`: the planted index of tests/support/planted_retrieval.py with real image files, and a
loopback chat-completions server whose literal verdicts fix the re-ranked order, so both columns of the
report can be computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from maskdex.jobs.cli import main
from tests.support.planted_retrieval import CAR_AP, CAR_AP_OBJECT, CAT_AP, CAT_AP_OBJECT, SIZE
from tests.support.chat_server import ChatServer

COLOURS = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255), "d": (255, 255, 0), "e": (255, 0, 255),
           "f": (0, 255, 255)}
# query -> image -> reply; boxes (x1, y1, x2, y2) in the 20 x 20 original, scaled to the sent frame below.
VERDICTS = {
    "cat": {"a": "hmm, hard to say", "b": "No.", "c": ("yes", [0, 0, 6, 6]), "d": ("yes", [10, 10, 18, 18]),
            "e": "no", "f": "no"},
    "a red car": {"a": "no", "b": ("yes", [5, 5, 15, 15]), "c": "no", "d": "no", "e": ("yes", [0, 0, 20, 10]),
                  "f": "no"},
}
# By hand. cat, first stage a b c e d: a unparsed keeps rank 1; confirmed c, d; rejected b, e -> a c d b e.
#   images 1 1 1 0 0 -> AP 1; objects: c's matched region is now its instance (0..6): 1 1 1 0 0 -> AP 1.
# car, first stage a b e c d: confirmed b, e; rejected a, c, d -> b e a c d.
#   images 1 1 0 0 0 -> AP 1; objects: e's only region has mask IoU 0.4 with the car: 1 0 0 0 0 -> 1/2.
CAT_RERANKED, CAT_RERANKED_OBJECT = 1.0, 1.0
CAR_RERANKED, CAR_RERANKED_OBJECT = 1.0, 0.5


def _name_of(image: np.ndarray) -> str:
    mean = image.reshape(-1, 3).mean(axis=0)
    return min(COLOURS, key=lambda name: np.abs(np.asarray(COLOURS[name]) - mean).sum())


def _answer(prompt: str, image: np.ndarray) -> str:
    query = next(q for q in VERDICTS if f"Is there {q} in" in prompt)
    verdict = VERDICTS[query][_name_of(image)]
    if isinstance(verdict, str):
        return verdict
    height, width = image.shape[:2]
    x1, y1, x2, y2 = verdict[1]
    box = [x1 * width / SIZE, y1 * height / SIZE, x2 * width / SIZE, y2 * height / SIZE]
    return json.dumps({"present": verdict[0], "boxes": [box]})


def test_report_shows_first_stage_and_reranked_side_by_side(planted, tmp_path, capsys):  # noqa: F811
    db, annotations = planted
    photos = tmp_path / "photos"
    photos.mkdir(exist_ok=True)
    for name, colour in COLOURS.items():
        Image.new("RGB", (SIZE, SIZE), colour).save(photos / f"{name}.png")
    out = tmp_path / "report"
    with ChatServer(_answer) as server:
        assert main(["eval", "retrieval", "--db", db, "--annotations", str(annotations), "--out", str(out),
                     "--rerank", "--rerank-backend", "openai", "--rerank-endpoint", server.url,
                     "--rerank-model", "served", "--rerank-top", "5"]) == 0
    printed = capsys.readouterr().out
    assert "first stage" in printed and "re-ranked" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["mAP@50"] == pytest.approx((CAT_AP + CAR_AP) / 2)
    assert results["metrics"]["mAP@50@50"] == pytest.approx((CAT_AP_OBJECT + CAR_AP_OBJECT) / 2)
    after = results["metrics_reranked"]
    assert after["mAP@50"] == pytest.approx((CAT_RERANKED + CAR_RERANKED) / 2)
    assert after["mAP@50@50"] == pytest.approx((CAT_RERANKED_OBJECT + CAR_RERANKED_OBJECT) / 2)
    assert results["rerank"] == {"backend": f"openai:served@{server.url}/chat/completions", "top": 5}
    assert results["rerank_statuses"] == {"confirmed": 4, "rejected": 5, "unparsed": 1}
    per_query = {q["query"]: q for q in results["per_query"]}
    assert [r["file_name"] for r in per_query["cat"]["reranked"]["ranked"]] == [f"photos/{n}.png" for n in "acdbe"]
    assert [r["file_name"] for r in per_query["a red car"]["reranked"]["ranked"]] == [
        f"photos/{n}.png" for n in "beacd"]
    report = (out / "report.md").read_text()
    assert "| metric | first stage | re-ranked |" in report
    first, second = (CAT_AP + CAR_AP) / 2, (CAT_RERANKED + CAR_RERANKED) / 2
    assert f"| mAP@50 | {100 * first:.1f} | {100 * second:.1f} |" in report
    first, second = (CAT_AP_OBJECT + CAR_AP_OBJECT) / 2, (CAT_RERANKED_OBJECT + CAR_RERANKED_OBJECT) / 2
    assert f"| mAP@50@50 | {100 * first:.1f} | {100 * second:.1f} |" in report
