"""What `pip install .` puts in site-packages: one top-level package, `maskdex`, holding every folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib

import pytest

from tests.support.paths import REPO

LAYERS = ("operators", "storage", "pipelines", "jobs")


def test_every_package_folder_is_installed_under_maskdex():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {f"maskdex.{layer}": layer for layer in LAYERS}
    on_disk = {"maskdex." + ".".join(init.parent.relative_to(REPO).parts)
               for layer in LAYERS for init in (REPO / layer).rglob("__init__.py")}
    assert set(setuptools["packages"]) == on_disk


@pytest.mark.slow
def test_a_wheel_install_has_one_top_level_package(tmp_path):
    target, source = tmp_path / "site", tmp_path / "source"
    # Built from a copy: setuptools leaves a build/ folder beside the sources it builds.
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                    "--target", str(target), str(source)], check=True, cwd=tmp_path, timeout=600)
    top = {path.name for path in target.iterdir()
           if not path.name.endswith((".dist-info", ".egg-info")) and path.name != "bin"}
    assert top == {"maskdex"}
    assert (target / "maskdex" / "jobs" / "serve" / "static" / "index.html").is_file()
    found = subprocess.run([sys.executable, "-c", "import maskdex.jobs.cli, maskdex.jobs.serve.api as a; print(a.STATIC_DIR)"],
                           env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr[-2000:]
    assert found.stdout.strip().startswith(str(target))
