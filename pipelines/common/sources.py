"""Turning SOURCE arguments into image references: files, folders, globs, object-store URIs, parquet."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import pyarrow.fs as pafs

from maskdex.pipelines.common.shards import SHARD_EXTENSIONS, expand_braces, member_uri, read_samples, split_member

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
PARQUET_EXTENSIONS = frozenset({".parquet"})
# Column names img2dataset writes image bytes under, in the order they are tried.
PARQUET_BYTES_COLUMNS = ("jpg", "png", "webp", "image", "bytes")


class SourceError(ValueError):
    """A SOURCE argument names nothing that can be indexed."""


@dataclass(frozen=True)
class Sources:
    files: list[str]  # image file paths or URIs, read one by one
    parquet: list[str]  # parquet files holding image bytes
    shards: list[str] = ()  # tar shards in webdataset's layout (pipelines/common/shards.py)


def _is_uri(source: str) -> bool:
    return "://" in source


def expand_sources(sources: list[str]) -> Sources:
    """Every image file and parquet file named by the sources, in a stable order.

    Brace patterns (`shards/{00000..00099}.tar`) expand first. Folders are walked recursively for
    image, parquet and tar extensions. A source that does not exist, a glob that matches nothing, or
    sources that name no image at all are a SourceError, raised before a job starts anything: a typo
    is not a run that failed one input. (A file that goes missing after this listing is read, fails,
    and is recorded as failed.)
    """
    if not sources:
        raise SourceError("no SOURCE given: name image files, folders, glob patterns or parquet files")
    files: list[str] = []
    parquet: list[str] = []
    shards: list[str] = []
    for pattern in sources:
        try:
            expanded = expand_braces(pattern)
        except ValueError as error:
            raise SourceError(str(error)) from None
        for source in expanded:
            matched = _expand_uri(source) if _is_uri(source) else _expand_local(source)
            for path in matched:
                extension = os.path.splitext(path)[1].lower()
                (parquet if extension in PARQUET_EXTENSIONS else shards if extension in SHARD_EXTENSIONS
                 else files).append(path)
    if not files and not parquet and not shards:
        raise SourceError(f"{' '.join(sources)}: no image, parquet or tar file there (looked for "
                          f"{', '.join(sorted(IMAGE_EXTENSIONS | PARQUET_EXTENSIONS | SHARD_EXTENSIONS))})")
    return Sources(files=list(dict.fromkeys(files)), parquet=list(dict.fromkeys(parquet)),
                   shards=list(dict.fromkeys(shards)))


def _expand_local(source: str) -> list[str]:
    if glob.has_magic(source):
        matches = sorted(glob.glob(source, recursive=True))
        if not matches:
            raise SourceError(f"glob pattern {source!r} matches no file")
        return [m for path in matches for m in _expand_local(path)]
    if os.path.isdir(source):
        found = []
        for root, dirs, names in os.walk(source):
            dirs.sort()
            found.extend(os.path.join(root, name) for name in sorted(names)
                         if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS | PARQUET_EXTENSIONS | SHARD_EXTENSIONS)
        return [os.path.abspath(path) for path in found]
    if not os.path.exists(source):
        raise SourceError(f"source {source!r} does not exist (looked at {os.path.abspath(source)})")
    return [os.path.abspath(source)]


def _expand_uri(source: str) -> list[str]:
    filesystem, path = pafs.FileSystem.from_uri(source)
    scheme = source.split("://", 1)[0]
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise SourceError(f"source {source!r} does not exist")
    if info.type == pafs.FileType.Directory:
        selector = pafs.FileSelector(path, recursive=True)
        return sorted(f"{scheme}://{entry.path}" for entry in filesystem.get_file_info(selector)
                      if entry.type == pafs.FileType.File
                      and os.path.splitext(entry.path)[1].lower() in IMAGE_EXTENSIONS | PARQUET_EXTENSIONS | SHARD_EXTENSIONS)
    return [source]


def read_bytes(uri: str) -> bytes:
    """The bytes of a local path or an object-store URI."""
    if _is_uri(uri):
        filesystem, path = pafs.FileSystem.from_uri(uri)
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    with open(uri, "rb") as handle:
        return handle.read()


def read_inputs(uris: list[str]) -> list[tuple[bytes | None, str | None]]:
    """(bytes, None) or (None, why not) for each input a run recorded: a file or URI, or a sample of a
    tar shard (SHARD#KEY; the samples of one shard are found in one pass over it)."""
    results: dict[str, tuple[bytes | None, str | None]] = {}
    by_shard: dict[str, set[str]] = {}
    for uri in uris:
        member = split_member(uri)
        if member is not None:
            by_shard.setdefault(member[0], set()).add(member[1])
            continue
        if "#" in uri and not os.path.exists(uri) and os.path.splitext(uri.rpartition("#")[0])[1].lower() in PARQUET_EXTENSIONS:
            results[uri] = (None, "a row of a parquet file cannot be read again on its own; index its file instead")
            continue
        try:
            results[uri] = (read_bytes(uri), None)
        except OSError as error:
            results[uri] = (None, f"cannot read file: {type(error).__name__}: {error.strerror or error}")
    for shard, keys in by_shard.items():
        found, broken = {}, None
        for sample in read_samples(shard, wanted=keys.__contains__):
            if sample.key in keys:
                found[sample.key] = (sample.image, sample.error)
            elif sample.error and not sample.skipped:
                broken = sample.error  # the shard broke off: that is why the rest is missing
        for key in keys:
            results[member_uri(shard, key)] = found.get(key) or (None, broken or f"shard {shard} has no sample {key!r}")
    return [results[uri] for uri in uris]


def identify(uris: list[str]) -> list[tuple[int, int] | None]:
    """(size, modification time in ns) of each file, from its metadata alone: what a resumed index
    run compares with what it recorded, to skip finished inputs without reading them. None for an
    input that cannot be stat'ed (it is then read, and fails with the reason). Object stores are
    asked once per bucket with a batch of paths, not once per object."""
    identities: list[tuple[int, int] | None] = [None] * len(uris)
    remote: dict[str, list[tuple[int, str]]] = {}
    for index, uri in enumerate(uris):
        if _is_uri(uri):
            scheme, path = uri.split("://", 1)
            remote.setdefault(f"{scheme}://{path.split('/', 1)[0]}", []).append((index, path))
            continue
        try:
            stat = os.stat(uri)
        except OSError:
            continue
        identities[index] = (stat.st_size, stat.st_mtime_ns)
    for bucket, members in remote.items():
        try:
            filesystem, _ = pafs.FileSystem.from_uri(bucket)
            infos = filesystem.get_file_info([path for _, path in members])
        except (OSError, ValueError):
            continue
        for (index, _), info in zip(members, infos):
            if info.type == pafs.FileType.File and info.size is not None and info.mtime_ns is not None:
                identities[index] = (info.size, info.mtime_ns)
    return identities
