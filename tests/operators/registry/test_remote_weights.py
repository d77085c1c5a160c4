"""A weights directory in an object store: against a real S3-compatible server (moto's, on loopback) and a
file:// URI. Each file is copied into the node's cache once, re-copied when the store's copy changes size,
and every missing file is named with its URI."""

from __future__ import annotations

import io
import multiprocessing

import pytest
import torch
from skimage import data

from maskdex.operators.registry.presets import SAM2_PRESETS, mask_generator
from maskdex.operators.registry.weights import MissingWeightsError, locate, missing_files, weights_dir
from tests.support.object_store import s3_client, s3_server

BUCKET = "maskdex-weights"


@pytest.fixture(scope="module")
def s3():
    with s3_server() as environment:
        s3_client(environment).create_bucket(Bucket=BUCKET)
        yield environment


@pytest.fixture
def s3_env(s3, monkeypatch, tmp_path):
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASKDEX_WEIGHTS_CACHE", str(tmp_path / "cache"))
    return s3


def _put(environment, key: str, body: bytes) -> None:
    s3_client(environment).put_object(Bucket=BUCKET, Key=key, Body=body)


def test_a_file_is_copied_once_and_again_when_the_store_changes(s3_env):
    location = f"s3://{BUCKET}/once"
    _put(s3_env, "once/model.pt", b"a" * 1000)
    first = locate("model.pt", "test model", location, "hub")
    assert first.read_bytes() == b"a" * 1000
    assert first.parent == weights_dir(location) and not str(first).startswith("s3:")
    stamp = first.stat().st_mtime_ns, first.stat().st_ino
    again = locate("model.pt", "test model", location, "hub")
    assert again == first and (again.stat().st_mtime_ns, again.stat().st_ino) == stamp  # not copied again
    _put(s3_env, "once/model.pt", b"b" * 1500)
    assert locate("model.pt", "test model", location, "hub").read_bytes() == b"b" * 1500
    assert not list(first.parent.glob(".*.part"))


def test_every_missing_file_is_named_with_its_uri(s3_env):
    location = f"s3://{BUCKET}/partial"
    _put(s3_env, "partial/present.pt", b"x")
    assert missing_files(["present.pt", "a.pt", "b.pt"], location) == {"a.pt": f"{location}/a.pt",
                                                                        "b.pt": f"{location}/b.pt"}
    with pytest.raises(MissingWeightsError, match=f"'a.pt' not found at {location}/a.pt"):
        locate("a.pt", "test model", location, "not downloadable")
    assert not weights_dir(location).exists()  # nothing was copied for a file the store lacks


def test_a_file_uri_works_like_a_bucket(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKDEX_WEIGHTS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "w.pt").write_bytes(b"w" * 10)
    location = f"file://{tmp_path / 'store'}"
    path = locate("w.pt", "test model", location, "hub")
    assert path.read_bytes() == b"w" * 10 and path.is_relative_to(tmp_path / "cache")
    assert missing_files(["w.pt", "v.pt"], location) == {"v.pt": f"{location}/v.pt"}


def test_a_model_folder_is_copied_whole(tmp_path, monkeypatch):
    """A checkpoint folder (the re-ranker's Qwen2.5-VL) comes over file by file, nested folders included."""
    from maskdex.operators.registry.remote_weights import cached_tree

    monkeypatch.setenv("MASKDEX_WEIGHTS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "store" / "Model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "weights.safetensors").write_bytes(b"s" * 100)
    location = f"file://{tmp_path / 'store'}"
    copied = cached_tree(location, "Model")
    assert copied == weights_dir(location) / "Model"
    assert (copied / "config.json").read_text() == "{}"
    assert (copied / "sub" / "weights.safetensors").read_bytes() == b"s" * 100
    assert cached_tree(location, "Absent") is None


def _locate_in_child(location: str, queue) -> None:
    queue.put(str(locate("big.pt", "test model", location, "hub")))


def test_actors_on_one_node_copy_a_file_once_and_whole(s3_env):
    """Several processes asking at once (the actors of one node) all get the complete file."""
    location = f"s3://{BUCKET}/shared"
    body = bytes(range(256)) * 40_000  # 10 MB: copies in several chunks
    _put(s3_env, "shared/big.pt", body)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    children = [context.Process(target=_locate_in_child, args=(location, queue)) for _ in range(3)]
    for child in children:
        child.start()
    paths = {queue.get(timeout=120) for _ in children}
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    (path,) = paths
    with open(path, "rb") as handle:
        assert handle.read() == body


@pytest.mark.slow
def test_a_real_preset_loads_its_released_checkpoint_from_a_bucket(s3_env):
    """sam2.1-hiera-t at its real size, in the released file name and layout, read from s3:// by the preset."""
    from sam2.build_sam import build_sam2

    spec = SAM2_PRESETS["sam2.1-hiera-t"]
    torch.manual_seed(123)  # not the seed the preset builds with, so equal weights mean the file was loaded
    source = build_sam2(spec.config, ckpt_path=None, device="cpu")
    buffer = io.BytesIO()
    torch.save({"model": source.state_dict()}, buffer)
    _put(s3_env, f"release/{spec.checkpoint}", buffer.getvalue())
    generator = mask_generator("fast", weights=f"s3://{BUCKET}/release", device="cpu", points_per_side=2)
    for key, value in source.state_dict().items():
        assert torch.equal(generator.model.state_dict()[key], value), key
    assert isinstance(generator.generate(data.coffee()[:120, :160]), list)  # the loaded model runs
