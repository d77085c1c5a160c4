"""An environment under which every process counts its SAM 2 work into a file (sam2_calls/sitecustomize.py)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

FOLDER = Path(__file__).parent / "sam2_calls"


def counting_env(env: dict, calls: Path) -> dict:
    path = os.pathsep.join(p for p in (str(FOLDER), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "MASKDEX_TEST_SAM2_CALLS": str(calls)}


def sam2_calls(calls: Path) -> Counter:
    """{"build": generators built, "generate": images segmented} so far."""
    if not calls.exists():
        return Counter()
    return Counter(line.split()[0] for line in calls.read_text().splitlines() if line.strip())
