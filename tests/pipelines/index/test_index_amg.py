"""The index job with the fast mask generator stores the stock generator's regions (real Ray, real LanceDB)."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

import lancedb
import pytest

from maskdex.jobs.commands.samples import write_samples
from maskdex.pipelines.index.job import run_index
from tests.support.corpus import index_settings
from maskdex.operators.metrics.mask_match import match_regions


def _regions_by_image(db) -> dict[str, list[dict]]:
    rows = lancedb.connect(str(db)).open_table("regions").to_arrow().to_pylist()
    by_image = defaultdict(list)
    for row in rows:
        by_image[row["image_id"]].append(row)
    for regions in by_image.values():  # stored order is not the generator's: best quality first again
        regions.sort(key=lambda r: -r["predicted_iou"] * r["stability_score"])
    return by_image


@pytest.mark.slow
def test_fast_and_stock_generators_store_the_same_regions(tmp_path, ray_local):
    photos = write_samples(tmp_path / "photos")
    summaries = {}
    for amg in ("stock", "fast"):
        summaries[amg] = run_index([str(tmp_path / "photos")], str(tmp_path / amg), index_settings(amg=amg))
    assert summaries["fast"].ok == summaries["stock"].ok == len(photos)
    stock, fast = _regions_by_image(tmp_path / "stock"), _regions_by_image(tmp_path / "fast")
    assert fast.keys() == stock.keys() and len(stock) == len(photos)
    for image_id, regions in stock.items():
        match = match_regions(regions, fast[image_id])
        # The fast generator encodes the stage's batch of images at once, which moves the last bits of
        # some logits: a mask may differ by a pixel, never by more than the match tests allow.
        assert match.matched == match.expected == match.got, (image_id, match)
        assert match.worst_score_gap <= 1e-3, (image_id, match)
        assert sorted(r["bbox"] for r in regions) == sorted(r["bbox"] for r in fast[image_id]), image_id


def test_index_refuses_an_unknown_generator(tmp_path):
    done = subprocess.run([sys.executable, "-m", "maskdex.jobs.cli", "index", str(tmp_path), "--db",
                           str(tmp_path / "db"), "--amg", "turbo"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "--amg: invalid choice: 'turbo' (choose from 'fast', 'stock')" in done.stderr
    assert "Traceback" not in done.stderr
