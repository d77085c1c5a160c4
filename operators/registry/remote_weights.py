"""A weights directory in an object store (s3://, gs://, file://): each node copies the files it needs
into a local cache once, and uses the cached copy while it matches the store's listing (name and size).

Pods of a cluster start with empty disks; a volume that every node mounts is one way to give them the
weights, a bucket that they already read the database from is another. Every actor that builds a model
on a node asks for the same files at once, so copies are made under a lock, into a temporary name, and
renamed into place only once complete: a killed copy never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "MASKDEX_WEIGHTS_CACHE"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "maskdex" / "weights-cache"
REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "file://")
_CHUNK = 8 << 20


def is_remote(location: str | os.PathLike) -> bool:
    return str(location).startswith(REMOTE_SCHEMES)


def cache_dir(location: str) -> Path:
    """The local folder that mirrors `location` on this node: one per URI, under $MASKDEX_WEIGHTS_CACHE."""
    root = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()
    return root / hashlib.sha256(location.rstrip("/").encode()).hexdigest()[:16]


def remote_sizes(location: str, names: list[str]) -> dict[str, int | None]:
    """The size of each file under `location` (None where there is no such file), in one listing call."""
    import pyarrow.fs as pafs

    filesystem, root = _filesystem(location)
    infos = filesystem.get_file_info([f"{root}/{name}" for name in names])
    return {name: (info.size if info.type == pafs.FileType.File else None) for name, info in zip(names, infos)}


def cached_copy(location: str, name: str) -> Path | None:
    """The local copy of `location`/`name`, copied now unless the cache already holds it at the store's
    size; None when the store has no such file."""
    size = remote_sizes(location, [name])[name]
    if size is None:
        return None
    target = cache_dir(location) / name
    if _is_copied(target, size):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(cache_dir(location)):
        if not _is_copied(target, size):  # another actor on this node may have copied it meanwhile
            _copy(location, name, target, size)
    return target


def cached_tree(location: str, folder: str) -> Path | None:
    """A local copy of every file under `location`/`folder` (a model directory), or None when it is empty."""
    import pyarrow.fs as pafs

    filesystem, root = _filesystem(location)
    selector = pafs.FileSelector(f"{root}/{folder}", recursive=True, allow_not_found=True)
    files = [info for info in filesystem.get_file_info(selector) if info.type == pafs.FileType.File]
    if not files:
        return None
    prefix = f"{root}/"
    for info in files:
        cached_copy(location, info.path[len(prefix):])
    return cache_dir(location) / folder


def _copy(location: str, name: str, target: Path, size: int) -> None:
    filesystem, root = _filesystem(location)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with filesystem.open_input_stream(f"{root}/{name}") as source, open(partial, "wb") as sink:
            shutil.copyfileobj(source, sink, _CHUNK)
        copied = partial.stat().st_size
        if copied != size:
            raise OSError(f"copying {location}/{name}: got {copied} of {size} bytes")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _is_copied(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


@contextmanager
def _lock(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _filesystem(location: str):
    import pyarrow.fs as pafs

    try:
        filesystem, root = pafs.FileSystem.from_uri(location.rstrip("/"))
    except Exception as error:  # a malformed URI or missing credentials: say which location
        raise ValueError(f"cannot open the weights location {location}: {error}") from error
    return filesystem, root.rstrip("/")
