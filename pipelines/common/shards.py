"""Tar shards in webdataset's layout (img2dataset's default output) as an image source.

A shard holds samples: members named KEY.EXT, grouped by KEY (the member's path up to the first dot
of its file name), with the image as KEY.jpg / .jpeg / .png / .webp and its caption and metadata as
KEY.txt / KEY.json beside it. Each sample is one input of the index, named `SHARD#KEY`; its caption
and json become the image's `metadata` (one JSON object: {"txt": ..., "json": ...}).

A shard is read as one stream, front to back (tar has no index), so samples come out in batches
without the shard ever being held whole. A sample without an image, or a shard that breaks off
(a truncated or corrupt tar), comes out as a failed input naming the cause.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.fs as pafs

from maskdex.storage.schemas import MEMBER_SEPARATOR

SHARD_EXTENSIONS = frozenset({".tar"})
IMAGE_MEMBER_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # the first present is the sample's image
METADATA_MEMBER_EXTENSIONS = ("txt", "json")
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_ALTERNATIVES = re.compile(r"\{([^{}]*,[^{}]*)\}")


def is_shard(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in SHARD_EXTENSIONS


def expand_braces(pattern: str) -> list[str]:
    """webdataset's shard patterns: `{00000..00099}` (zero-padded as written) and `{a,b}`, any number of
    each; a pattern without braces is itself."""
    found = [m for m in (_RANGE.search(pattern), _ALTERNATIVES.search(pattern)) if m is not None]
    if not found:
        return [pattern]
    match = min(found, key=lambda m: m.start())  # the leftmost brace varies slowest, as in a shell
    if match.re is _RANGE:
        first, last = match.group(1), match.group(2)
        if int(last) < int(first):
            raise ValueError(f"brace range {match.group(0)} in {pattern!r} runs backwards")
        if int(last) - int(first) >= 1_000_000:
            raise ValueError(f"brace range {match.group(0)} in {pattern!r} names over a million shards")
        width = len(first) if first.startswith("0") else 0
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + 1)]
    else:
        choices = match.group(1).split(",")
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


def member_uri(shard: str, key: str) -> str:
    return f"{shard}{MEMBER_SEPARATOR}{key}"


def split_member(uri: str) -> tuple[str, str] | None:
    """(shard, key) of a sample's uri, or None for any other input."""
    shard, separator, key = uri.rpartition(MEMBER_SEPARATOR)
    if not separator or not is_shard(shard) or not key:
        return None
    return shard, key


@dataclass
class Sample:
    key: str
    image: bytes | None = None
    image_member: str | None = None
    metadata: dict | None = None
    error: str | None = None  # why this sample (or the rest of the shard) cannot be indexed
    skipped: bool = False  # not wanted: its bytes were streamed past, not read


def _open(shard: str):
    if "://" in shard:
        filesystem, path = pafs.FileSystem.from_uri(shard)
        return filesystem.open_input_stream(path)
    return open(shard, "rb")


def read_samples(shard: str, wanted=None) -> Iterator[Sample]:
    """The shard's samples in the order they are stored. wanted(key) -> False skips a sample's bytes
    (they are still streamed past: tar cannot seek). A read error ends the shard with a failed
    sample keyed `<error at member N>`."""
    current: Sample | None = None
    count = 0
    try:
        with _open(shard) as stream, tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                count += 1
                if not member.isfile():
                    continue
                directory, name = os.path.split(member.name)
                stem, dot, extension = name.partition(".")
                key = f"{directory}/{stem}" if directory else stem
                if current is None or current.key != key:
                    if current is not None:
                        yield _finished(current)
                    current = Sample(key, skipped=wanted is not None and not wanted(key))
                if current.skipped:
                    continue
                extension = extension.lower()
                if extension in IMAGE_MEMBER_EXTENSIONS and current.image is None:
                    current.image, current.image_member = archive.extractfile(member).read(), member.name
                elif extension in METADATA_MEMBER_EXTENSIONS:
                    text = archive.extractfile(member).read().decode("utf-8", errors="replace")
                    current.metadata = current.metadata or {}
                    current.metadata[extension] = _json_or_text(text) if extension == "json" else text
    except (tarfile.TarError, OSError, EOFError) as error:
        if current is not None:
            yield _finished(current)
            current = None
        what = "cannot read tar shard" if count == 0 and isinstance(error, OSError) and not isinstance(
            error, tarfile.TarError) else "corrupt or truncated tar shard"
        yield Sample(f"<unreadable after member {count}>", error=f"{what}: {type(error).__name__}: {error}")
    if current is not None:
        yield _finished(current)


def _finished(sample: Sample) -> Sample:
    if sample.image is None and sample.error is None and not sample.skipped:
        sample.error = (f"sample {sample.key!r} has no image member (.{', .'.join(IMAGE_MEMBER_EXTENSIONS)})"
                        + (f", only {', '.join(sorted(sample.metadata))}" if sample.metadata else ""))
    return sample


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def metadata_json(sample: Sample) -> str:
    """The sample's caption and json as the images row's metadata, "" for none."""
    return json.dumps(sample.metadata, sort_keys=True) if sample.metadata else ""
