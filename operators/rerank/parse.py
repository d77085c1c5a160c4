"""Reading a multimodal LLM's reply without trusting it.

A reply may be JSON, JSON inside prose or a code fence, Qwen's grounding list
([{"bbox_2d": [x1, y1, x2, y2], "label": ...}]), a bare yes/no, or noise. What is taken from it:
- the verdict: an explicit "present"/"answer" field, else the first standalone yes/no word, else
  "yes" when it gave at least one box (a box is a claim that the object is there);
- boxes: four finite numbers each (x1, y1, x2, y2) in the backend's BoxFrame, rescaled to the
  original image, corners put in order, clipped to it; a box with no area left is dropped.
Anything else is `unparsed`, and the candidate keeps its first-stage rank.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from maskdex.operators.rerank.base import BoxFrame

CONFIRMED, REJECTED, UNPARSED = "confirmed", "rejected", "unparsed"
_BOX_KEYS = ("bbox_2d", "bbox", "box", "boxes", "bboxes", "bounding_box", "bounding_boxes")
_VERDICT_KEYS = ("present", "answer", "found", "exists", "visible")
_YES = ("yes", "true", "present")
_NO = ("no", "false", "absent", "none")
_WORD = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_NUMBER = r"-?\d+(?:\.\d+)?"
_BARE_BOX = re.compile(rf"[\[(]\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*[\])]")
# A reply longer than this is cut before parsing: no model answer to this prompt is that long.
MAX_REPLY_CHARS = 20_000


@dataclass
class Verdict:
    status: str  # confirmed | rejected | unparsed
    boxes: list[list[float]] = field(default_factory=list)  # x1, y1, x2, y2 in original pixels
    reason: str | None = None  # why a reply was not read as a verdict


def parse_reply(text: str | None, frame: BoxFrame | None, width: int, height: int) -> Verdict:
    """The verdict and boxes in a reply, for an original image of width x height pixels."""
    if text is None or not text.strip():
        return Verdict(UNPARSED, reason="empty reply")
    text = text[:MAX_REPLY_CHARS]
    documents = list(_json_documents(text))
    verdict = next((v for v in map(_verdict_of_document, documents) if v is not None), None)
    raw_boxes = [box for document in documents for box in _boxes_of_document(document)]
    if not raw_boxes and not documents:
        raw_boxes = [[float(v) for v in match.groups()] for match in _BARE_BOX.finditer(text)]
    if verdict is None:
        word = _WORD.search(_without_json(text))
        if word is not None:
            verdict = word.group(1).lower() == "yes"
    boxes = [box for box in (_to_image(raw, frame, width, height) for raw in raw_boxes) if box is not None]
    if verdict is None:
        if boxes:
            verdict = True
        else:
            return Verdict(UNPARSED, reason="no yes/no and no usable box in the reply"
                           + (f" ({len(raw_boxes)} box(es) fell outside the image)" if raw_boxes else ""))
    if not verdict:
        return Verdict(REJECTED)
    return Verdict(CONFIRMED, boxes, None if boxes else (
        "confirmed without a usable box" + (f" ({len(raw_boxes)} fell outside the image)" if raw_boxes else "")))


def _json_documents(text: str):
    """Every JSON object or array in the text, outermost first, in order of appearance."""
    decoder = json.JSONDecoder()
    position = 0
    while True:
        starts = [i for i in (text.find("{", position), text.find("[", position)) if i >= 0]
        if not starts:
            return
        start = min(starts)
        try:
            document, end = decoder.raw_decode(text, start)
        except ValueError:
            position = start + 1
            continue
        if isinstance(document, (dict, list)):
            yield document
        position = end


def _without_json(text: str) -> str:
    """The prose of a reply: JSON keys such as "present" or labels must not count as the yes/no word."""
    return re.sub(r"```.*?```|\{.*?\}", " ", text, flags=re.DOTALL)


def _verdict_of_document(document) -> bool | None:
    if isinstance(document, list):
        return next((v for v in map(_verdict_of_document, document) if v is not None), None)
    if not isinstance(document, dict):
        return None
    for key in _VERDICT_KEYS:
        if key in document:
            return _truth(document[key])
    return None


def _truth(value) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _YES:
            return True
        if word in _NO:
            return False
    return None


def _boxes_of_document(document) -> list[list[float]]:
    if isinstance(document, list):
        if _is_box(document):
            return [[float(v) for v in document]]
        return [box for item in document for box in _boxes_of_document(item)]
    if isinstance(document, dict):
        found = []
        for key in _BOX_KEYS:
            if key in document:
                found += _boxes_of_document(document[key])
        return found
    return []


def _is_box(value) -> bool:
    return (isinstance(value, list) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def _to_image(box: list[float], frame: BoxFrame | None, width: int, height: int) -> list[float] | None:
    """A reply box in original-image pixels, corners ordered and clipped; None when nothing is left."""
    if not all(math.isfinite(v) for v in box):
        return None
    x1, y1, x2, y2 = box
    if frame is not None and frame.width > 0 and frame.height > 0:
        sx, sy = width / frame.width, height / frame.height
        x1, x2, y1, y2 = x1 * sx, x2 * sx, y1 * sy, y2 * sy
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    return [x1, y1, x2, y2]
