"""The README's main-job command, run as written (after the install step) in an empty directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.paths import REPO


def _main_job_command() -> str:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    line = next(line for line in block.splitlines() if "maskdex index" in line)
    # Everything after activating the environment this test already runs in.
    return line.split(". .venv/bin/activate && ", 1)[1]


@pytest.mark.slow
def test_readme_main_job_indexes_the_samples_and_searches_them(tmp_path):
    command = _main_job_command()
    assert command.startswith("maskdex samples photos && maskdex index photos --db maskdex-data")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # The console holds maskdex's own lines only: progress (start-up apart, then a rate), no Ray or Lance
    # internals (token-auth warnings, fork-safety warnings, core_worker lines, Ray Data progress bars).
    lines = done.stderr.splitlines()
    assert lines and lines[0].startswith("index: started in "), done.stderr
    assert re.fullmatch(r"index: started in [\dms. ]+ \(Ray, workers, models\); \d+/10 images \(\d+%\)", lines[0])
    assert all(re.fullmatch(r"index: \d+/10 images \(\d+%\), [\d.]+ images/s(, about [\dms ]+ left)?", line)
               for line in lines[1:]), done.stderr
    assert re.search(r"indexed \d+ inputs in [\d.]+s \(start-up [\d.]+s, then [\d.]+ images/s\)", done.stdout)
    photos = sorted(p.name for p in (tmp_path / "photos").iterdir())
    assert len(photos) >= 10
    assert f"ok {len(photos)}, failed 0" in done.stdout
    ranked = [Path(line.split()[-1]).name for line in done.stdout.splitlines()
              if re.match(r"\s+\d+\s+-?\d\.\d{3}\s", line)]
    assert len(ranked) == 10 and set(ranked) <= set(photos)

    as_json = subprocess.run(["maskdex", "search", "a cat", "--db", "maskdex-data", "-k", "3", "--json"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    results = json.loads(as_json.stdout)
    assert [Path(r["uri"]).name for r in results] == ranked[:3]
    assert set(results[0]) == {"image_id", "uri", "score", "region"}
    assert set(results[0]["region"]) == {"region_id", "bbox", "rle", "score"}
