"""Removing images from an index: their images rows, regions and stored segmentations.

The images row is the index's commit mark (storage/index_store.py), and every reader goes through it:
search finds regions and keeps those whose image has a row (storage/search.py, whose uri cache
follows the images table's version), and the service answers an image's regions or segmentation
only while it has one. So, per chunk of images, each step one Lance commit:
1. images rows: from here the images are gone for every reader;
2. their regions, 3. their segmentations: rows no reader shows any more.
A removal killed after 1 leaves regions and segmentations without an images row. The next writable
open of the index deletes such regions (IndexStore.open), and every removal deletes such
segmentations, so a rerun of the removal (or, for the regions, any index run) finishes the job;
until then they are invisible. Every image is, at any moment a reader looks, fully present or gone.

Deleted rows are hidden at once (Lance deletion files, honoured by flat and ANN search alike) and
leave the data files when a compaction rewrites their fragment: the tidy after a removal rewrites
every fragment that lost rows (storage/index_upkeep.py says why: search is slower while any remain);
`stats` counts what a removal killed before its tidy left (`deleted_rows`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import pyarrow as pa

from maskdex.storage.index_store import IndexStore
from maskdex.storage.schemas import MEMBER_SEPARATOR
from maskdex.storage.segmentation_store import SegmentationStore
from maskdex.storage.tables import KEEP_VERSIONS_FOR, chunks, sql_string, sql_strings

# Images per chunk: one commit per table each. Larger chunks mean fewer commits (each rewrites the
# deletion files of the fragments it touches) and longer SQL; 1% of 200k images is 2,000.
CHUNK = 2048
# An image id: the SHA-256 of the file, or of the path of an input that could not be read.
IMAGE_ID = re.compile(r"(unreadable-)?[0-9a-f]{64}")


@dataclass
class RemovalReport:
    images: int = 0  # images rows removed (or, dry run, that would be)
    regions: int = 0
    segmentations: int = 0
    not_found: list[str] = field(default_factory=list)  # ids asked for that the index does not hold
    uris: list[str] = field(default_factory=list)  # of the images removed, in id order
    dry_run: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {**self.__dict__, "seconds": round(self.seconds, 3)}

    def render(self, shown: int = 20) -> str:
        verb = "would remove" if self.dry_run else "removed"
        lines = [f"{verb} {self.images} images, {self.regions} regions, {self.segmentations} segmentations"
                 + ("" if self.dry_run else f" in {self.seconds:.1f}s")]
        lines += [f"  {uri}" for uri in self.uris[:shown]]
        if len(self.uris) > shown:
            lines.append(f"  ... and {len(self.uris) - shown} more")
        if self.not_found:
            lines.append(f"  not in the index ({len(self.not_found)}): " + ", ".join(self.not_found[:shown])
                         + (" ..." if len(self.not_found) > shown else ""))
        return "\n".join(lines)


def check_image_ids(image_ids) -> list[str]:
    """The ids, each once, in the order given; ValueError naming the first that is not an image id."""
    checked = []
    for image_id in image_ids:
        if not isinstance(image_id, str) or not IMAGE_ID.fullmatch(image_id):
            raise ValueError(f"{str(image_id)[:80]!r} is not an image id (64 lowercase hex digits, the SHA-256 "
                             f"of the file)")
        checked.append(image_id)
    return list(dict.fromkeys(checked))


def read_ids_file(path: str) -> list[str]:
    """Image ids from a file, one per line; blank lines and lines starting with # are skipped."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [(number, line.strip()) for number, line in enumerate(handle, 1)]
    except OSError as error:
        raise ValueError(f"cannot read the ids file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ValueError(f"the ids file {path} is not UTF-8 text") from None
    ids = []
    for number, line in lines:
        if not line or line.startswith("#"):
            continue
        if not IMAGE_ID.fullmatch(line):
            raise ValueError(f"{path}, line {number}: {line[:80]!r} is not an image id (64 lowercase hex digits)")
        ids.append(line)
    return list(dict.fromkeys(ids))


def images_under(store: IndexStore, uri_prefix: str) -> dict[str, str]:
    """image_id -> uri of every image (any status) whose uri starts with uri_prefix."""
    if not uri_prefix:
        raise ValueError("the uri prefix is empty: it would name every image; give a folder or URI prefix")
    found: dict[str, str] = {}
    # starts_with, not LIKE: a prefix may hold % or _, which LIKE reads as wildcards.
    for batch in store.images_table.search().where(f"starts_with(uri, {sql_string(uri_prefix)})") \
            .select(["image_id", "uri"]).limit(None).to_batches():
        found.update(zip(batch.column("image_id").to_pylist(), batch.column("uri").to_pylist()))
    return found


def images_with_ids(store: IndexStore, image_ids: list[str]) -> dict[str, tuple[str, int | None, int | None]]:
    """image_id -> (uri, source_size, source_mtime_ns) of those of image_ids the index holds."""
    found: dict[str, tuple[str, int | None, int | None]] = {}
    columns = ["image_id", "uri", "source_size", "source_mtime_ns"]
    for chunk in chunks(image_ids, CHUNK):
        table = store.images_table.search().where(f"image_id IN {sql_strings(chunk)}") \
            .select(columns).limit(None).to_arrow()
        image_ids_, *rest = (table[name].to_pylist() for name in columns)
        found.update(zip(image_ids_, zip(*rest)))
    return found


def remove_images(store: IndexStore, image_ids: list[str], *, dry_run: bool = False, tidy: bool = True,
                  chunk: int = CHUNK) -> RemovalReport:
    """Remove the images with these ids (ids the index does not hold are reported, not an error).
    The store must be writable, except for a dry run, which only counts. tidy: compact the tables
    afterwards, as after an index run (an index run that removes, a sync, leaves it to its own)."""
    started = time.perf_counter()
    image_ids = check_image_ids(image_ids)
    found = images_with_ids(store, image_ids)
    report = RemovalReport(not_found=[i for i in image_ids if i not in found], dry_run=dry_run)
    ordered = sorted(found)
    report.uris = [found[image_id][0] for image_id in ordered]
    segmentations = _segmentations(store.uri)
    if dry_run:
        for part in chunks(ordered, chunk):
            report.images += len(part)
            report.regions += store.regions_table.count_rows(f"image_id IN {sql_strings(part)}")
            report.segmentations += segmentations.count_images(part) if segmentations else 0
        return report
    if store.read_only:
        raise ValueError(f"cannot remove images: the index at {store.uri} was opened read_only")
    # Ids asked for but without an images row may still have regions, left by a removal killed part
    # way: deleting by them too is what makes a rerun finish the job.
    containers = _containers(found[image_id] for image_id in ordered)
    for part in chunks(ordered + report.not_found, chunk):
        where = f"image_id IN {sql_strings(part)}"
        report.images += store.images_table.delete(where).num_deleted_rows
        report.regions += store.regions_table.delete(where).num_deleted_rows
        if segmentations is not None:
            report.segmentations += segmentations.delete_images(part)
    if segmentations is not None:
        report.segmentations += _drop_orphan_segmentations(store, segmentations)
    # A tar shard that lost a sample is no longer finished: the next run opens it again, as it would
    # list a removed file again, and indexes what the source still holds.
    store.forget_finished_shards(containers)
    if tidy and ordered:
        store.upkeep.tidy(keep_versions_for=KEEP_VERSIONS_FOR)
        if segmentations is not None and report.segmentations:
            segmentations.tidy()
    report.seconds = time.perf_counter() - started
    return report


def _containers(identities) -> list[tuple[str, int, int]]:
    """(container uri, size, mtime_ns) of the images that are members of a container (uri `FILE#KEY`:
    a tar shard's sample or a parquet row) with a recorded identity: the container's.
    identities: (uri, source_size, source_mtime_ns) of each image."""
    return [(uri.rpartition(MEMBER_SEPARATOR)[0], size, mtime) for uri, size, mtime in identities
            if size is not None and MEMBER_SEPARATOR in uri]


def _drop_orphan_segmentations(store: IndexStore, segmentations: SegmentationStore) -> int:
    # Segmentations of images without an images row: what a removal killed after its images step left.
    segmented = segmentations.image_ids()
    orphans = sorted(segmented - store.known_image_ids(segmented))
    return sum(segmentations.delete_images(part) for part in chunks(orphans, CHUNK))


def _segmentations(uri: str) -> SegmentationStore | None:
    try:
        return SegmentationStore.open(uri, create=False)
    except FileNotFoundError:
        return None


def repoint_images(store: IndexStore, moves: dict[str, tuple[str, int | None, int | None]]) -> int:
    """What a sync does instead of removing an image whose file was moved or touched (same bytes at
    another uri, or a new identity): its images row gets the new uri and source identity, one commit
    per chunk, and its regions stay. moves: image_id -> (uri, source_size, source_mtime_ns)."""
    if store.read_only:
        raise ValueError(f"cannot update images: the index at {store.uri} was opened read_only")
    updated = 0
    for part in chunks(sorted(moves), CHUNK):
        table = store.images_table.search().where(f"image_id IN {sql_strings(part)}").limit(None).to_arrow()
        rows = table.to_pylist()
        for row in rows:
            row["uri"], row["source_size"], row["source_mtime_ns"] = moves[row["image_id"]]
        if rows:
            store.images_table.merge_insert("image_id").when_matched_update_all().execute(
                pa.Table.from_pylist(rows, schema=table.schema))
        updated += len(rows)
    return updated
