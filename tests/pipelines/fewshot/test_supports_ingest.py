"""Adding a labelled folder on Ray Data, and `maskdex supports add|list|remove` end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from maskdex.jobs.cli import main
from maskdex.pipelines.fewshot.supports import SupportSettings, ingest_folder
from maskdex.storage import SupportStore
from tests.support.synthetic import NAMES, write_labelled_folder
from tests.support.paths import REPO


def maskdex(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "maskdex.jobs.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


def images_per_class(folder) -> dict[str, int]:
    counts = {name: sum(int((labels == index).any()) for labels in folder.label_maps.values())
              for index, name in enumerate(NAMES)}
    return {name: count for name, count in counts.items() if count}


@pytest.mark.slow
def test_a_folder_added_twice_holds_each_image_once(tmp_path, ray_local):
    folder = write_labelled_folder(tmp_path / "folder", 6)
    db = str(tmp_path / "db")
    summary = ingest_folder(str(folder.images), str(folder.labels), str(folder.classes), db, "scenes",
                            SupportSettings(device="cpu"))
    expected = images_per_class(folder)
    assert (summary.images, summary.classes) == (6, expected)
    store = SupportStore.open(db, dense_model=None, embed_dim=None, create=False)
    assert store.list_sets() == {"scenes": expected}
    memory = store.load("scenes")
    np.testing.assert_allclose(np.linalg.norm(memory.prototypes, axis=1), 1.0, atol=1e-4)

    # Through the CLI, joining the test's Ray instance: the same folder again doubles nothing.
    address = ray_local.get_runtime_context().gcs_address
    added = maskdex("supports", "add", "--db", db, "--set", "scenes", "--images", str(folder.images),
                    "--labels", str(folder.labels), "--classes", str(folder.classes), "--device", "cpu",
                    "--address", address, "--json")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["images"] == 6
    assert store.list_sets() == {"scenes": expected}


def test_the_cli_lists_and_removes_sets_and_classes(tmp_path, capsys):
    db = str(tmp_path / "db")
    store = SupportStore.open(db, dense_model="tiny", embed_dim=4)
    prototype = np.array([1, 0, 0, 0], np.float32)
    store.add([{"set_name": set_name, "class_name": class_name, "image_id": image, "prototype": prototype,
                "n_pixels": 1} for set_name, class_name, image in
               (("scenes", "sky", "a"), ("scenes", "sky", "b"), ("scenes", "grass", "b"), ("more", "@mine", "c"))])

    assert main(["supports", "list", "--db", db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"more": {"@mine": 1}, "scenes": {"grass": 1, "sky": 2}}
    assert main(["supports", "remove", "--db", db, "--set", "scenes", "--class", "sky"]) == 0
    assert "removed class 'sky' from support set 'scenes' (2 class prototypes)" in capsys.readouterr().out
    assert main(["supports", "remove", "--db", db, "--set", "more"]) == 0
    assert main(["supports", "list", "--db", db]) == 0
    assert capsys.readouterr().out.endswith("scenes: 1 classes\n  grass: 1 images\n")

    assert main(["supports", "remove", "--db", db, "--set", "more"]) == 2
    assert "maskdex supports remove: error: no support set 'more' at" in capsys.readouterr().err
    assert main(["supports", "remove", "--db", db, "--set", "scenes", "--class", "sky"]) == 2
    assert "has no class 'sky'; it has 'grass'" in capsys.readouterr().err
    assert main(["supports", "add", "--db", db, "--set", "x", "--images", str(tmp_path / "nowhere"),
                 "--labels", str(tmp_path), "--classes", str(tmp_path / "classes.txt")]) == 2
    assert "images folder" in capsys.readouterr().err
    assert store.list_sets() == {"scenes": {"grass": 1}}
