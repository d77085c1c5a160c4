"""IndexStore: the `images` and `regions` tables of one maskdex index, in one LanceDB database.

Commit protocol: an image's regions are committed first and its `images` row last, so the images
row is the commit mark. A crash between the two leaves regions without an images row; a writable
open deletes them, search never returns them, and the re-run writes them again.

Region rows reach the regions table one way: as Lance fragments (storage/region_fragments.py), written
by the index job's workers, or here for rows handed to commit, and appended by their metadata.
The tables' upkeep (compaction, the vector index's training, its search settings) is IndexStore.upkeep,
storage/index_upkeep.py.
"""

from __future__ import annotations

import os

from collections.abc import Iterable
from datetime import datetime, timezone

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from maskdex.storage import rows, schemas, tables, vector_index
from maskdex.storage.region_fragments import RegionFragments, RegionFragmentWriter
from maskdex.storage.digests import DigestSet, image_key, image_keys, source_key
from maskdex.storage.index_upkeep import IndexUpkeep
from maskdex.storage import search as region_search
from maskdex.storage.schemas import IMAGES, REGIONS
from maskdex.storage.tables import ModelMismatchError, chunks as _chunks, sql_string, sql_strings

__all__ = ["IndexStore", "ModelMismatchError", "NotIndexed"]
# The images table's config key under which a sync notes what it did (pipelines/index/sync.py).
LAST_SYNC = "maskdex.last_sync"
# Ids per `IN (...)` lookup, to keep the SQL short.
_ID_CHUNK = 1000


class NotIndexed(ValueError):
    """A query names an image or region the index does not hold."""


class IndexStore:
    """Open with `IndexStore.open`. One process at a time should hold a writable store per
    database while others write: opening writable deletes regions that have no images row, and
    those include the regions of a commit in flight. Readers pass read_only=True."""

    def __init__(self, uri: str, images, regions, fingerprint: str, embed_dim: int, read_only: bool):
        self.uri = uri
        self.fingerprint = fingerprint  # of the models that built the index (ModelPreset.fingerprint)
        self.embed_dim = embed_dim
        self.read_only = read_only
        self._images = images
        self._regions = regions
        self._uris = region_search.UriCache()
        self.upkeep = IndexUpkeep(self)

    @classmethod
    def open(cls, uri: str, *, fingerprint: str | None, embed_dim: int | None, create: bool = True,
             read_only: bool = False) -> IndexStore:
        """Open the index at a directory or object-store URI, creating it on first use.

        fingerprint (of the models, ModelPreset.fingerprint) / embed_dim must match what the index was
        built with (ModelMismatchError names both); None accepts whatever it was built with. Creating requires both. read_only never
        creates, never deletes, and refuses writes.
        """
        if (read_only or not create) and "://" not in uri and not os.path.isdir(uri):
            # Checked before connecting, which would create the folder.
            raise FileNotFoundError(f"no maskdex index at {uri}: there is no such folder")
        db = tables.connect(uri, reader=read_only)
        opened = {name: db.open_table(name) for name in (REGIONS, IMAGES) if name in db}
        recorded = _recorded_build(uri, opened)
        if recorded is not None:
            _check_same_build(uri, recorded, fingerprint, embed_dim)
            fingerprint, embed_dim = recorded
        missing = [name for name in (REGIONS, IMAGES) if name not in opened]
        if missing:
            if read_only or not create:
                raise FileNotFoundError(f"no maskdex index at {uri}" if len(missing) == 2 else
                                        f"the index at {uri} lacks its {missing[0]} table; open it once writable "
                                        f"with create=True to finish creating it")
            if not fingerprint or embed_dim is None or embed_dim < 1:
                raise ValueError(f"creating an index at {uri} needs models and a positive embed_dim "
                                 f"(got fingerprint={fingerprint!r}, embed_dim={embed_dim!r})")
            for name in missing:  # regions before images, like every commit
                opened[name] = _create_table(db, uri, name, fingerprint, embed_dim)
        store = cls(uri, opened[IMAGES], opened[REGIONS], fingerprint, embed_dim, read_only)
        if not read_only:
            store._add_missing_columns()
            store._drop_orphan_regions()
        return store

    # Writing

    def drop_if_empty(self) -> bool:
        """Drop the index's tables, and its folder when nothing else is in it, if no image was ever
        committed to it: what a first run that failed early leaves would otherwise be an empty index."""
        self.require_writable("drop_if_empty")
        if self._images.count_rows() or self._regions.count_rows():
            return False
        db = tables.connect(self.uri)
        for name in (IMAGES, REGIONS, schemas.SHARDS):  # only the index's own: a support set may live beside it
            if name in db:
                db.drop_table(name)
        if "://" not in self.uri:
            try:
                os.rmdir(self.uri)
            except OSError:
                pass  # the folder holds something else: left as it is
        return True

    def known_image_ids(self, image_ids: Iterable[str]) -> set[str]:
        """Those of image_ids that already have an images row (any status)."""
        found: set[str] = set()
        for chunk in _chunks(list(dict.fromkeys(image_ids)), _ID_CHUNK):
            table = self._where(self._images, f"image_id IN {sql_strings(chunk)}", ["image_id"])
            found.update(table["image_id"].to_pylist())
        return found

    def known_ids(self) -> DigestSet:
        """Every stored image_id as a 32-byte digest (see storage/digests.py): what an index run
        hands its readers to skip finished images without each of them querying the database."""
        return DigestSet.of_parts(32, (image_keys(batch.column("image_id").to_pylist())
                                       for batch in self._batches(self._images, ["image_id"])))

    def known_sources(self) -> DigestSet:
        """The source identity (uri, size, mtime) of every stored image that recorded one, as
        16-byte digests: an index run skips an input whose identity is here without reading it."""
        if "source_size" not in self._images.schema.names:  # an older table, opened read_only
            return DigestSet(16)
        columns = ("uri", "source_size", "source_mtime_ns")
        batches = self._batches(self._images, list(columns),
                                "source_size IS NOT NULL AND source_mtime_ns IS NOT NULL")
        return DigestSet.of_parts(16, (np.array([source_key(*values) for values in
                                                 zip(*(batch.column(name).to_pylist() for name in columns))],
                                                dtype="S16") for batch in batches))

    def finished_shards(self) -> dict[bytes, int]:
        """source_key(shard, size, mtime) -> samples, of every tar shard recorded as finished."""
        db = tables.connect(self.uri, reader=self.read_only)
        if schemas.SHARDS not in db:
            return {}
        found = {}
        for batch in self._batches(db.open_table(schemas.SHARDS), ["uri", "source_size", "source_mtime_ns", "samples"]):
            for uri, size, mtime, samples in zip(*(batch.column(i).to_pylist() for i in range(4))):
                found[source_key(uri, size, mtime)] = samples
        return found

    def record_finished_shards(self, shards: list[tuple[str, int, int, int]]) -> None:
        """Record (uri, size, mtime_ns, samples) of shards whose samples' images rows are all
        committed: call only after that commit, so that a kill between the two re-reads the shard."""
        self.require_writable("record_finished_shards")
        if not shards:
            return
        db = tables.connect(self.uri)
        table = (db.open_table(schemas.SHARDS) if schemas.SHARDS in db
                 else db.create_table(schemas.SHARDS, schema=schemas.shards_schema(), exist_ok=True))
        now = datetime.now(timezone.utc)
        table.add(pa.table({"uri": [s[0] for s in shards], "source_size": [int(s[1]) for s in shards],
                            "source_mtime_ns": [int(s[2]) for s in shards], "samples": [int(s[3]) for s in shards],
                            "finished_at": [now] * len(shards)}, schema=schemas.shards_schema()))

    def forget_finished_shards(self, shards: list[tuple[str, int, int]] | None = None) -> None:
        """The shards (uri, size, mtime_ns), or every shard when None, are opened again by the next run;
        their samples that still have rows are skipped by key, the others are indexed again."""
        self.require_writable("forget_finished_shards")
        db = tables.connect(self.uri)
        if schemas.SHARDS not in db or shards == []:
            return
        table = db.open_table(schemas.SHARDS)
        if shards is None:
            table.delete("true")
            return
        for part in _chunks(sorted(set(shards)), 200):
            table.delete(" OR ".join(f"(uri = {sql_string(uri)} AND source_size = {int(size)} AND "
                                     f"source_mtime_ns = {int(mtime)})" for uri, size, mtime in part))

    @property
    def images_table(self):
        return self._images

    @property
    def regions_table(self):
        return self._regions

    @property
    def regions_dataset_uri(self) -> str:
        """Where the regions table's Lance dataset lives: what fragment writers write into."""
        return self._regions.to_lance().uri

    def commit(self, images: list[dict], regions: list[dict], *, known: DigestSet | None = None) -> int:
        """Write a batch: regions first, then the images rows. Images already stored are skipped
        with their regions, and repeats inside the batch collapse (first wins), so a re-run never
        duplicates. Raises ValueError, writing nothing, on a bad row. Returns images rows written.

        known: the caller's DigestSet of stored ids (from known_ids, kept up to date by passing it
        to every commit), which replaces the database lookup: that lookup scans every row not yet
        in the image_id index, a cost that grows with the table during a long run."""
        self.require_writable("commit")
        batch = rows.prepare_batch(images, regions, dim=self.embed_dim, models=self.fingerprint)
        batch = batch.without(self._stored(batch.image_ids, known))
        if not batch.images:
            return 0
        # Convert both before writing either, so a conversion error writes nothing.
        images_table = batch.images_table(self.embed_dim, self.fingerprint)
        regions_table = batch.regions_table(self.embed_dim, self.fingerprint)
        written = RegionFragments(images=len(batch.images))  # no regions: nothing to append
        if regions_table.num_rows:
            writer = RegionFragmentWriter(self.regions_dataset_uri, dim=self.embed_dim, models=self.fingerprint)
            written = writer.write_batch(batch)
        return self._commit(images_table, written, batch.image_ids, known)

    def commit_written(self, images: list[dict], written: RegionFragments, *, known: DigestSet | None = None) -> int:
        """Commit regions that workers wrote as fragments, then their images rows (each stating its
        n_regions; together they must account for every row of the fragments, so no region is
        committed without its image). An image already stored is skipped when it has no regions and
        refused when it has some, since its regions would be stored twice. Returns images rows written."""
        self.require_writable("commit")
        batch = rows.prepare_images(images, dim=self.embed_dim, models=self.fingerprint)
        stored = self._stored(batch.image_ids, known)
        twice = [row["image_id"] for row in batch.images if row["image_id"] in stored and row["n_regions"]]
        if twice:
            raise ValueError(f"{len(twice)} image(s) already stored, {twice[0]} first: committing their "
                             f"written regions would store them twice")
        batch = batch.without(stored)
        described = sum(row["n_regions"] for row in batch.images)
        if described != written.rows:
            raise ValueError(f"the images rows account for {described} regions but the fragments hold "
                             f"{written.rows} rows: a region would be committed without its image")
        if not batch.images:
            return 0
        return self._commit(batch.images_table(self.embed_dim, self.fingerprint), written, batch.image_ids, known)

    def forget_failed(self) -> int:
        """Delete the images rows with status 'failed', so that a re-run retries them."""
        self.require_writable("forget_failed")
        return self._images.delete("status = 'failed'").num_deleted_rows

    # Reading

    def search(self, query: np.ndarray, *, k: int = 10, oversample: int = 10, filters: dict | None = None,
               exact: bool = False) -> list[dict]:
        """The k best images for a unit query vector, best first; an image scores its best region.

        Each result: {"image_id", "uri", "score", "region": {"region_id", "bbox": [x, y, w, h],
        "rle": {"size": [h, w], "counts": str}, "score"}}; scores are cosine similarities.
        filters: {"min_area": int, "max_area": int, "image_ids": [...], "exclude_image_ids": [...]}, any subset.
        exact=True skips the vector index (ground truth for recall).
        """
        query = self._check_query(query)
        if k < 1 or oversample < 1:
            raise ValueError(f"k and oversample must be >= 1, got k={k}, oversample={oversample}")
        where = region_search.where_clause(filters)
        if filters and filters.get("image_ids") is not None and not list(filters["image_ids"]):
            return []
        version = self._regions.version  # one round trip serves the settings and the snapshot
        settings = None if exact else self.upkeep.search_settings(version)
        return region_search.search_images(self._regions, self._images, query, k=k, oversample=oversample,
                                           where=where, settings=settings, uris=self._uris, version=version)

    def image(self, image_id: str) -> dict | None:
        rows_ = self._where(self._images, f"image_id = {sql_string(image_id)}").to_pylist()
        return _with_array_embedding(rows_[0]) if rows_ else None

    def stored_vector(self, like: str) -> tuple[np.ndarray, str]:
        """The stored embedding a query by example starts from, and the image it belongs to.

        like: "IMAGE_ID:N" is region N's embedding; "IMAGE_ID" is the whole image's (alpha all ones).
        Raises ValueError naming what is not in the index. No model runs: the index already holds both.
        """
        image_id, _, number = str(like).strip().partition(":")
        row = self.image(image_id) if image_id else None
        if row is None or row["status"] != schemas.OK:
            raise NotIndexed(f"no image {image_id or '(empty id)'} in the index" if row is None else
                             f"image {image_id} failed to index, so it has no embedding")
        if not number:
            return row["embedding"], image_id
        if not (number.isascii() and number.isdigit()):
            raise ValueError(f"a region is IMAGE_ID:N with N a region number, got {like!r}")
        table = self._where(self._regions, f"region_id = {sql_string(f'{image_id}:{int(number)}')}", ["embedding"])
        if table.num_rows == 0:
            raise NotIndexed(f"image {image_id} has no region {int(number)} (it has {row['n_regions']}: "
                             f"0 to {row['n_regions'] - 1})" if row["n_regions"] else
                             f"image {image_id} has no regions")
        return np.asarray(table["embedding"][0].as_py(), dtype=np.float32), image_id

    def image_uris(self) -> dict[str, str]:
        """image_id -> uri of every image indexed with status 'ok'."""
        table = self._where(self._images, "status = 'ok'", ["image_id", "uri"])
        return dict(zip(table["image_id"].to_pylist(), table["uri"].to_pylist()))

    def regions_of(self, image_id: str) -> list[dict]:
        """The image's regions in region number order."""
        rows_ = self._where(self._regions, f"image_id = {sql_string(image_id)}").to_pylist()
        return [_with_array_embedding(row) for row in sorted(rows_, key=_region_number)]

    def image_rows(self, columns: list[str]):
        """Every images row (these columns), as lists of row dicts, one per scanned batch; a column
        an older table lacks (opened read_only, so not added) reads as None."""
        present = [name for name in columns if name in self._images.schema.names]
        for batch in self._batches(self._images, present):
            yield [{**dict.fromkeys(columns), **row} for row in batch.to_pylist()]

    def masks_of(self, image_ids: list[str]) -> dict[str, list[dict]]:
        """Per image: its regions without their embeddings, in region number order (what a
        re-embed reads: one lookup per chunk of images, served by the image_id index)."""
        found: dict[str, list[dict]] = {image_id: [] for image_id in image_ids}
        columns = ["region_id", "image_id", "rle", "bbox", "area", "predicted_iou", "stability_score"]
        for chunk in _chunks(list(dict.fromkeys(image_ids)), _ID_CHUNK):
            for row in self._where(self._regions, f"image_id IN {sql_strings(chunk)}", columns).to_pylist():
                found[row["image_id"]].append(row)
        return {image_id: sorted(rows_, key=_region_number) for image_id, rows_ in found.items()}

    def stats(self) -> dict:
        images_ok = self._images.count_rows("status = 'ok'")
        index = vector_index.find_vector_index(self._regions)
        regions = self._regions.count_rows()
        return {
            **self.storage_stats(),
            "uri": self.uri,
            "models": self.fingerprint,
            "embed_dim": self.embed_dim,
            "images_ok": images_ok,
            "images_failed": self._images.count_rows() - images_ok,
            "regions": regions,
            "indexed": index is not None,
            "unindexed_rows": regions if index is None else index.num_unindexed_rows,
            "vector_index": None if index is None else self.upkeep.vector_params(index).describe(),
            # Removed rows still in the data files (storage/removal.py), and what the last sync did.
            "deleted_rows": {IMAGES: tables.deleted_rows(self._images), REGIONS: tables.deleted_rows(self._regions)},
            "last_sync": tables.read_note(self._images, LAST_SYNC),
        }

    def storage_stats(self) -> dict:
        """Fragments and versions per table: many small fragments mean a compaction is due."""
        out = {}
        for name, table in ((IMAGES, self._images), (REGIONS, self._regions)):
            stats = table.stats()
            fragments = stats["fragment_stats"]
            out[f"{name}_bytes"] = stats["total_bytes"]
            out[f"{name}_fragments"] = fragments["num_fragments"]
            out[f"{name}_small_fragments"] = fragments["num_small_fragments"]
            out[f"{name}_versions"] = len(table.list_versions())
        return out

    # Internals

    def _add_missing_columns(self) -> None:
        # A table from before a column was added gets it, all nulls, in one metadata-only commit.
        missing = {name: sql for name, sql in schemas.IMAGES_ADDED_COLUMNS.items()
                   if name not in self._images.schema.names}
        if missing:
            self._images.add_columns(missing)

    def _stored(self, image_ids: list[str], known: DigestSet | None) -> set[str]:
        if known is None:
            return self.known_image_ids(image_ids)
        return {i for i, hit in zip(image_ids, known.contains_many(image_keys(image_ids))) if hit}

    def _commit(self, images_table, written: RegionFragments, image_ids: list[str], known: DigestSet | None) -> int:
        if written.fragments:
            self._append_regions(written)
        self._images.add(images_table)  # the commit mark
        if known is not None:
            for image_id in image_ids:
                known.add(image_key(image_id))
        return images_table.num_rows

    def _append_regions(self, written: RegionFragments) -> None:
        uri = self.regions_dataset_uri
        # An append commutes with the compaction and index builds that upkeep runs on another
        # thread: Lance rebases it onto whatever they committed meanwhile (its commit retries).
        latest = lance.dataset(uri).version
        lance.LanceDataset.commit(uri, lance.LanceOperation.Append(written.metadata()), read_version=latest)
        self._regions.checkout_latest()

    def _drop_orphan_regions(self) -> int:
        # Cheap test first: every committed image accounts for exactly n_regions rows.
        n_regions = self._where(self._images, None, ["n_regions"])["n_regions"]
        if self._regions.count_rows() == (pc.sum(n_regions).as_py() or 0):
            return 0
        region_images: set[str] = set()
        for batch in self._regions.search().select(["image_id"]).limit(None).to_batches():
            region_images.update(pc.unique(batch.column("image_id")).to_pylist())
        orphans = sorted(region_images - self.known_image_ids(region_images))
        deleted = 0
        for chunk in _chunks(orphans, _ID_CHUNK):
            deleted += self._regions.delete(f"image_id IN {sql_strings(chunk)}").num_deleted_rows
        return deleted

    def _check_query(self, query) -> np.ndarray:
        vector = np.asarray(query, dtype=np.float32)
        if vector.shape != (self.embed_dim,):
            raise ValueError(f"query has shape {vector.shape}, this index holds ({self.embed_dim},) embeddings")
        if not np.isfinite(vector).all() or not np.any(vector):
            raise ValueError("query must be finite and non-zero")
        return vector

    def require_writable(self, action: str) -> None:
        """A ValueError naming the action unless the store was opened writable."""
        if self.read_only:
            raise ValueError(f"cannot {action}: the index at {self.uri} was opened read_only")

    _batches = staticmethod(tables.batches)
    _where = staticmethod(tables.select)


def _create_table(db, uri: str, name: str, fingerprint: str, embed_dim: int):
    schema = (schemas.regions_schema if name == REGIONS else schemas.images_schema)(embed_dim, fingerprint)
    try:
        table = db.create_table(name, schema=schema, exist_ok=True)
    except ValueError:
        if name not in db:
            raise
        # Created meanwhile by another process, with a different schema: say how it differs.
        table = db.open_table(name)
        _check_same_build(uri, _recorded_build(uri, {name: table}), fingerprint, embed_dim)
        raise
    vector_index.ensure_scalar_indexes(table, name)
    return table


def _recorded_build(uri: str, opened: dict) -> tuple[str, int] | None:
    builds = {name: tables.build_record(uri, name, table) for name, table in opened.items()}
    if len(set(builds.values())) > 1:
        raise ValueError(f"the images and regions tables at {uri} record different builds: {builds}")
    return next(iter(builds.values()), None)


def _check_same_build(uri: str, recorded: tuple[str, int] | None, fingerprint: str | None, embed_dim: int | None) -> None:
    if recorded is None:
        return
    recorded_models, recorded_dim = recorded
    if fingerprint is not None and fingerprint != recorded_models:
        raise ModelMismatchError(f"the index at {uri} was built with models {recorded_models!r}, not {fingerprint!r}; "
                                 f"use that preset, or another index location")
    if embed_dim is not None and embed_dim != recorded_dim:
        raise ModelMismatchError(f"the index at {uri} holds {recorded_dim}-dimensional embeddings, not {embed_dim} "
                                 f"(models {recorded_models!r})")


def _region_number(row: dict) -> int:
    return int(row["region_id"].rsplit(":", 1)[1])


def _with_array_embedding(row: dict) -> dict:
    embedding = row.get("embedding")
    return {**row, "embedding": None if embedding is None else np.asarray(embedding, dtype=np.float32)}
