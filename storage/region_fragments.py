"""Region rows written as Lance fragments where the embeddings are (a Ray worker), committed apart.

A worker writes its batch's region rows as data files into the regions table's dataset and hands
back only their metadata (a few hundred bytes per fragment); the one committer appends that
metadata to the table (IndexStore.commit_written). Embeddings never travel to the committer, so
write bandwidth grows with the workers.

A written fragment is invisible until committed. The files of a write that is never committed
(a killed run, a retried Ray task whose first attempt wrote) are garbage only: no manifest names
them, and Lance's cleanup (run by every compaction, IndexUpkeep.tidy) deletes them once they are
7 days old; younger unreferenced files may belong to a write still in flight, so Lance keeps them.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import lance
from lance.fragment import FragmentMetadata, write_fragments

from maskdex.storage import rows, schemas
from maskdex.storage.tables import ModelMismatchError


@dataclass(frozen=True)
class RegionFragments:
    """What a worker hands the committer for one write: its fragments' metadata (Lance's JSON) and
    how many images (those whose rows the write checked, regions or not) and region rows it covers,
    so the committer sizes commits without reading it. write_id names the write, 16 random bytes."""

    write_id: str = ""
    fragments: tuple[str, ...] = ()
    images: int = 0
    rows: int = 0

    def to_json(self) -> str:
        return json.dumps({"write_id": self.write_id, "fragments": list(self.fragments), "images": self.images,
                           "rows": self.rows})

    @classmethod
    def from_json(cls, text: str) -> RegionFragments:
        try:
            value = json.loads(text)
            return cls(str(value["write_id"]), tuple(value["fragments"]), int(value["images"]), int(value["rows"]))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"not a serialised RegionFragments: {str(text)[:200]!r}") from error

    @property
    def key(self) -> bytes:
        return bytes.fromhex(self.write_id)

    def metadata(self) -> list[FragmentMetadata]:
        return [FragmentMetadata.from_json(text) for text in self.fragments]

    @classmethod
    def merged(cls, writes: list[RegionFragments]) -> RegionFragments:
        return cls("", tuple(text for write in writes for text in write.fragments), sum(w.images for w in writes),
                   sum(w.rows for w in writes))


class RegionFragmentWriter:
    """Writes region rows into the regions dataset at dataset_uri (IndexStore.regions_dataset_uri),
    uncommitted. Checks once that the dataset holds this build's rows, so that a worker of another
    model cannot write files the commit would then refuse."""

    def __init__(self, dataset_uri: str, *, dim: int, models: str):
        dataset = lance.dataset(dataset_uri)
        expected = schemas.regions_schema(dim, models)
        if schemas.recorded_build(dataset.schema) != (models, dim) or not dataset.schema.equals(expected):
            raise ModelMismatchError(f"the regions table at {dataset_uri} records build "
                                     f"{schemas.recorded_build(dataset.schema)}, this writer makes {(models, dim)}")
        self.dataset_uri = dataset_uri
        self.dim = dim
        self.models = models
        self._schema = expected
        # Files in the dataset's own format, whatever the installed Lance would write by default.
        self._storage_version = dataset.data_storage_version

    def write(self, images: list[dict], regions: list[dict]) -> tuple[list[dict], RegionFragments]:
        """Check the rows as a commit would (storage/rows.py: every region with its image, unit
        embeddings, n_regions filled in), write the regions, return the images rows and the write.
        Raises ValueError, writing nothing, on a bad row."""
        batch = rows.prepare_batch(images, regions, dim=self.dim, models=self.models)
        return batch.images, self.write_batch(batch)

    def write_batch(self, batch: rows.Batch) -> RegionFragments:
        table = batch.regions_table(self.dim, self.models)
        write_id = uuid.uuid4().hex
        if not table.num_rows:
            return RegionFragments(write_id, images=len(batch.images))
        written = write_fragments(table, self.dataset_uri, schema=self._schema,
                                  data_storage_version=self._storage_version)
        return RegionFragments(write_id, tuple(json.dumps(fragment.to_json()) for fragment in written),
                               images=len(batch.images), rows=table.num_rows)
