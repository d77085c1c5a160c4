"""`maskdex index SOURCES --sync`: after indexing, the index follows its sources.

Decided from the listing the run makes anyway (each file's uri, size and mtime or etag), as a
resume does, and from the content hashes of the files the run had to read, never by reading a
finished file. For every images row whose uri lies under the SOURCES:
- listed with the recorded identity: unchanged;
- listed with another identity (changed), or not listed any more (gone): the row is stale. Its
  file was read by this run when listed, and the new content got a row of its own (added under its
  new hash), so the stale row is removed (storage/removal.py), unless the run read the row's very
  content at some listed uri (a file moved, or only touched): then the row is re-pointed to that
  uri and identity, keeping its regions, instead of removing and embedding it again.
The removal runs after the run has committed the new rows, so a search sees the old version of a
changed file until the new one is in. A sync killed part way is finished by the next: a row the
killed run added for a changed file has the listed identity, so the file is not read again, and the
old row is still stale.

A tar shard's samples (uri `SHARD#KEY`, recorded with the shard's identity) follow their shard: all
are stale when the shard is gone or changed; a changed shard was read again by the run, so a sample
whose bytes it still holds is re-pointed, not embedded again. Rows from parquet sources (uri
`FILE#KEY`) and rows without a recorded identity are left alone.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from datetime import datetime, timezone

from maskdex.pipelines.common.shards import is_shard, split_member
from maskdex.pipelines.common.sources import IMAGE_EXTENSIONS
from maskdex.storage import removal, tables
from maskdex.storage.index_store import LAST_SYNC, IndexStore

_COLUMNS = ["image_id", "uri", "source_size", "source_mtime_ns", "indexed_at"]


class SourceScope:
    """Which recorded uris the SOURCES name: what their listing would hold if the file still existed."""

    def __init__(self, sources: list[str]):
        self._prefixes: list[str] = []
        self._patterns: list[list[str]] = []
        for source in sources:
            if "://" in source:
                self._prefixes.append(source.rstrip("/"))
            elif glob.has_magic(source):
                self._patterns.append(os.path.abspath(source).split(os.sep))
            else:
                self._prefixes.append(os.path.abspath(source))

    def covers(self, uri: str) -> bool:
        image = os.path.splitext(uri)[1].lower() in IMAGE_EXTENSIONS or is_shard(uri)
        for prefix in self._prefixes:
            # The source itself (a file), or a file a folder's walk lists (by its extension).
            if uri == prefix or (image and uri.startswith(prefix + "/")):
                return True
        if self._patterns and "://" not in uri:
            parts = uri.split(os.sep)
            for pattern in self._patterns:
                # The file matches, or a folder above it does (a matched folder is walked).
                if _matches(parts, pattern) or (image and any(_matches(parts[:n], pattern) for n in range(1, len(parts)))):
                    return True
        return False


def _matches(parts: list[str], pattern: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[start:], pattern[1:]) for start in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


class SyncPlan:
    """Made before the run from its listing; told of every input the run read whose content was
    already stored (saw); finishes after the run's last commit."""

    def __init__(self, sources: list[str], files: list[str], identities: list[tuple[int, int] | None],
                 shards: dict[str, tuple[int, int] | None] | None = None):
        self.sources = list(sources)
        self.listed = {**dict(zip(files, identities)), **(shards or {})}
        self.started = datetime.now(timezone.utc)
        # image_id -> (uri, size, mtime_ns) of an input read by the run whose bytes were already stored.
        self.seen: dict[str, tuple[str, int | None, int | None]] = {}

    def saw(self, uri: str, image_id: str) -> None:
        identity = self._listed(uri, None)
        self.seen.setdefault(image_id, (uri, *(identity or (None, None))))

    def _listed(self, uri: str, default):
        """The listed identity of a file, or of the shard a sample came from; default when not listed."""
        member = split_member(uri) if uri not in self.listed else None
        return self.listed.get(member[0] if member else uri, default)

    def finish(self, store: IndexStore, *, added: int, unchanged: int, tidy: bool = True) -> dict:
        """Remove or re-point the stale rows; returns (and notes in the index) what the sync did.
        added: the images rows the run wrote; unchanged: the inputs it skipped from the listing."""
        scope = SourceScope(self.sources)
        stale: dict[str, str] = {}  # image_id -> uri
        changed: set[str] = set()
        written: list[str] = []  # uris of the rows this run wrote
        for batch in tables.batches(store.images_table, _COLUMNS):
            for image_id, uri, size, mtime, indexed_at in zip(*(batch.column(name).to_pylist() for name in _COLUMNS)):
                member = split_member(uri)
                if not scope.covers(member[0] if member else uri):
                    continue
                listed = self._listed(uri, "gone")
                if listed == "gone":
                    stale[image_id] = uri
                elif listed is None or size is None:
                    continue  # no identity to compare: the run read the file again anyway
                elif (size, mtime) != tuple(listed):
                    stale[image_id] = uri
                    changed.add(uri)
                elif indexed_at >= self.started:
                    written.append(uri)
        # A changed file's new version is counted as changed, not added.
        new_versions = sum(uri in changed for uri in written)
        moves = {image_id: self.seen[image_id] for image_id in stale if image_id in self.seen}
        repointed = removal.repoint_images(store, moves) if moves else 0
        report = removal.remove_images(store, sorted(set(stale) - set(moves)), tidy=tidy)
        summary = {"added": added - new_versions, "unchanged": unchanged, "changed": len(changed),
                   "removed": report.images, "repointed": repointed, "regions_removed": report.regions}
        tables.write_note(store.images_table, LAST_SYNC,
                          {"at": datetime.now(timezone.utc).isoformat(), "sources": self.sources, **summary})
        return summary
