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
