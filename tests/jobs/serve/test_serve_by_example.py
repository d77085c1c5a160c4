"""Query by example through the real service over HTTP (real Ray Serve, the sample photos indexed with the
tiny preset) and through the `maskdex search` CLI: an uploaded photo finds itself, `like` makes no model
call, a mask or box restricts the query, text and example mix, bad input is a 4xx or exit 2 naming the
problem, and the COCO export loads with pycocotools."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from maskdex.operators.common import rle as rle_codec

pytestmark = pytest.mark.slow


def _id(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _png(mask: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(out, format="PNG")
    return out.getvalue()


def _upload(service, path, **fields):
    files = {"image": (path.name, path.read_bytes(), "image/jpeg")}
    if "mask" in fields:
        files["mask"] = ("mask.png", fields.pop("mask"), "image/png")
    return service.post("/search", files=files, data={key: str(value) for key, value in fields.items()})


def _encoder_passes() -> dict:
    from ray import serve

    from maskdex.jobs.serve.app import APP_NAME

    return serve.get_deployment_handle("TextEncoder", app_name=APP_NAME).passes_so_far.remote().result()


def test_an_uploaded_indexed_photo_finds_itself_first(service):
    for name, path in service.photos.items():
        answer = _upload(service, path, k=3)
        assert answer.status_code == 200, answer.text
        assert answer.json()[0]["image_id"] == _id(path), name
        others = _upload(service, path, k=3, exclude_self="true").json()
        assert _id(path) not in [r["image_id"] for r in others] and len(others) == 2


def test_like_uses_the_stored_embedding_without_a_model_call(service):
    image_id = _id(service.photos["chelsea"])
    before = _encoder_passes()
    answer = service.post("/search", json={"like": f"{image_id}:0", "k": 3})
    assert answer.status_code == 200, answer.text
    assert _encoder_passes() == before
    best = answer.json()[0]
    assert best["image_id"] == image_id and best["region"]["region_id"] == f"{image_id}:0"
    assert best["score"] == pytest.approx(1.0, abs=1e-5)
    _upload(service, service.photos["chelsea"], k=1)
    assert _encoder_passes()["example"] == before["example"] + 1  # the count sees a real pass


def test_a_mask_or_a_box_restricts_the_query(service):
    path = service.photos["astronaut"]
    image_id = _id(path)
    regions = service.get(f"/images/{image_id}/regions").json()["regions"]
    for region in regions[:2]:
        mask = rle_codec.decode(region["rle"])
        best = _upload(service, path, mask=_png(mask), k=2).json()[0]
        # The uploaded mask is embedded as the index embedded that region: the same vector (cosine 1).
        assert best["image_id"] == image_id and best["score"] == pytest.approx(1.0, abs=1e-4)
    whole = _upload(service, path, k=3).json()
    boxed = _upload(service, path, box="10,10,40,30", k=3).json()
    assert [r["score"] for r in boxed] != pytest.approx([r["score"] for r in whole], abs=1e-4)


def test_text_and_example_together_rank_between_the_two(service):
    like = f"{_id(service.photos['coffee'])}:0"
    by_text = service.post("/search", json={"text": "a cat", "k": 3}).json()
    mixed = service.post("/search", json={"text": "a cat", "like": like, "k": 3}).json()
    alone = service.post("/search", json={"like": like, "k": 3}).json()
    coffee = _id(service.photos["coffee"])
    assert alone[0]["image_id"] == coffee
    ranks = [[r["image_id"] for r in answer].index(coffee) for answer in (alone, mixed, by_text)]
    assert ranks == sorted(ranks)
    assert service.post("/search", json={"text": "a cat", "like": like, "k": 3, "weight": 0.0}).json() == by_text


@pytest.mark.parametrize("case, status, problem", [
    ("nothing", 400, "nothing to search with"),
    ("unknown id", 404, "no image"),
    ("unknown region", 404, "has no region 999"),
    ("malformed like", 400, "64 lowercase hex"),
    ("not an image", 400, "not a readable image"),
    ("box outside", 400, "not inside"),
    ("bad box", 400, "x,y,w,h"),
    ("mask of another size", 400, "but the image is"),
    ("weight out of range", 422, "weight"),
    ("like and an upload", 400, "not both"),
])
def test_bad_input_is_a_4xx_naming_the_problem(service, case, status, problem):
    path = service.photos["coffee"]
    known = _id(path)
    answer = {
        "nothing": lambda: service.post("/search", json={"k": 3}),
        "unknown id": lambda: service.post("/search", json={"like": "0" * 64}),
        "unknown region": lambda: service.post("/search", json={"like": f"{known}:999"}),
        "malformed like": lambda: service.post("/search", json={"like": "../etc/passwd"}),
        "not an image": lambda: service.post("/search", files={"image": ("x.jpg", b"not an image", "image/jpeg")}),
        "box outside": lambda: _upload(service, path, box="150,0,50,50"),
        "bad box": lambda: _upload(service, path, box="1,2,3"),
        "mask of another size": lambda: _upload(service, path, mask=_png(np.ones((7, 9), bool))),
        "weight out of range": lambda: service.post("/search", json={"text": "a cat", "like": known, "weight": 2}),
        "like and an upload": lambda: service.post("/search", files={"image": ("a.jpg", path.read_bytes())},
                                                   data={"like": known}),
    }[case]()
    assert answer.status_code == status, answer.text
    assert problem in answer.json()["error"]
    assert "/" not in answer.json()["error"].replace("x,y,w,h", "") or case == "malformed like"


def _check_coco(path, expected_images: int) -> COCO:
    coco = COCO(str(path))
    assert len(coco.getImgIds()) == expected_images and len(coco.getAnnIds()) == expected_images
    for annotation in coco.loadAnns(coco.getAnnIds()):
        image = coco.loadImgs(annotation["image_id"])[0]
        mask = coco.annToMask(annotation)
        assert mask.shape == (image["height"], image["width"])
        with Image.open(image["file_name"]) as photo:
            assert photo.size == (image["width"], image["height"])
        assert int(mask.sum()) == annotation["area"] > 0
        assert coco_mask.toBbox(coco.annToRLE(annotation)).tolist() == pytest.approx(annotation["bbox"])
    return coco


def test_coco_export_over_http_loads_with_pycocotools(service, tmp_path):
    answer = service.post("/search/coco", json={"text": "a cat", "k": 3})
    assert answer.status_code == 200, answer.text
    (tmp_path / "http.json").write_text(answer.text)
    coco = _check_coco(tmp_path / "http.json", 3)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["a cat"]


def test_cli_searches_by_image_and_box_and_exports_coco(service, tmp_path):
    path = service.photos["chelsea"]
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "maskdex.jobs.cli", "search", "--db", service.db, "--image", str(path),
                           "--box", "20,10,60,50", "-k", "2", "--device", "cpu", "--json", "--export", "coco", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert len(results) == 2
    coco = _check_coco(out, 2)
    assert [a["maskdex_region_id"] for a in coco.loadAnns(coco.getAnnIds())] == [r["region"]["region_id"] for r in results]
    assert coco.loadCats(1)[0]["name"] == f"like {path.name}"


def test_cli_like_matches_the_service(service, capsys):
    from maskdex.jobs.cli import main

    like = f"{_id(service.photos['coffee'])}:1"
    assert main(["search", "a cup", "--db", service.db, "--like", like, "--weight", "0.7", "-k", "3", "--json",
                 "--device", "cpu"]) == 0
    mine = json.loads(capsys.readouterr().out)
    theirs = service.post("/search", json={"text": "a cup", "like": like, "weight": 0.7, "k": 3}).json()
    assert [r["image_id"] for r in mine] == [r["image_id"] for r in theirs]
    assert [r["score"] for r in mine] == pytest.approx([r["score"] for r in theirs], abs=1e-4)


@pytest.mark.parametrize("argv, problem", [
    ([], "nothing to search with"),
    (["--like", "0" * 64], "no image"),
    (["--image", "{photo}", "--box", "150,0,50,50"], "not inside"),
    (["--image", "{db}"], "no such file"),
    (["--image", "{pyproject}"], "not a usable image"),
    (["--box", "1,2,3,4"], "give the image too"),
    (["--export", "csv", "x.csv", "a cat"], "coco only"),
    (["--weight", "0.3", "a cat"], "give both"),
])
def test_cli_bad_input_exits_2_naming_the_problem(service, capsys, argv, problem):
    from maskdex.jobs.cli import main

    names = {"photo": str(service.photos["coffee"]), "db": service.db + "/nothing.jpg", "pyproject": "pyproject.toml"}
    argv = [arg.format(**names) for arg in argv]
    assert main(["search", "--db", service.db, "--device", "cpu", *argv]) == 2
    error = capsys.readouterr().err
    assert problem in error and "Traceback" not in error


def test_the_schema_declares_the_example_upload(service):
    paths = service.get("/openapi.json").json()["paths"]
    content = paths["/search"]["post"]["requestBody"]["content"]
    assert {"image", "box", "mask"} <= set(content["multipart/form-data"]["schema"]["properties"])
    assert {"like", "weight", "exclude_self"} <= set(content["application/json"]["schema"]["properties"])
    assert "/search/coco" in paths
