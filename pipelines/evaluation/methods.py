"""The names of the segmentation methods an evaluation can compare (kept light: the CLI imports it)."""

from __future__ import annotations

METHODS = {
    "zero-shot": "zero-shot (text only; RNS step 2)",
    "rns": "RNS, patch mode",
    "rns-region": "RNS, region mode (SAM 2 regions)",
    "knn": "kNN vote over the support prototypes",
    "freeda": "FreeDA-style fusion (0.8 local + 0.2 global)",
    "rns-no-text": "RNS without text (ablation)",
    "rns-no-relevance": "RNS without relevance weights (ablation)",
}
BASELINES = ("zero-shot", "knn", "freeda")


def parse_methods(text: str) -> tuple[str, ...]:
    """'zero-shot,rns' -> ('zero-shot', 'rns'); an unknown name is a ValueError listing the known ones."""
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise ValueError("no method named")
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(METHODS)}")
    return names
