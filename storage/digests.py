"""A compact set of fixed-size binary digests: what an index run hands its readers to skip work.

At 10M images a Python set of 64-character hex ids costs over a gigabyte and a sorted array of
them 640 MB; the same ids as raw 32-byte digests in one sorted numpy array cost 320 MB, travel to
Ray workers as one zero-copy object, and answer membership by binary search. Additions go to a
small buffer that is merged into the sorted array once it grows, so adding stays amortised cheap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

# Merge the buffer into the sorted array once it holds this many digests (a few MB).
_MERGE_AT = 65_536


class DigestSet:
    """Digests of one width (32 bytes for image ids, 16 for source identities), sorted."""

    def __init__(self, width: int, digests: np.ndarray | None = None):
        self.width = width
        self._dtype = np.dtype(f"S{width}")
        # numpy compares fixed-width bytes as zero-padded memcmp, so digests that end in zero
        # bytes still sort and match correctly as long as both sides are arrays of this dtype.
        self._sorted = np.unique(np.asarray(digests, dtype=self._dtype)) if digests is not None and len(digests) \
            else np.zeros(0, dtype=self._dtype)
        self._pending: set[bytes] = set()

    @classmethod
    def of_parts(cls, width: int, parts: Iterable[np.ndarray]) -> DigestSet:
        """From arrays of digests (say, one per batch of a table scan), sorted once at the end."""
        parts = list(parts)
        return cls(width, np.concatenate(parts) if parts else None)

    def __len__(self) -> int:
        self._merge()
        return int(self._sorted.size)

    @property
    def nbytes(self) -> int:
        return int(self._sorted.nbytes) + len(self._pending) * (self.width + 50)

    def add(self, digest: bytes) -> None:
        # Kept as numpy hands elements back (trailing zero bytes stripped), to compare alike.
        self._pending.add(bytes(digest).rstrip(b"\0"))
        if len(self._pending) >= _MERGE_AT:
            self._merge()

    def contains_many(self, digests) -> np.ndarray:
        """A boolean per digest (a list of bytes, or an array of this set's dtype)."""
        if len(digests) == 0:
            return np.zeros(0, dtype=bool)
        keys = np.asarray(digests, dtype=self._dtype)
        found = np.zeros(len(digests), dtype=bool)
        if self._sorted.size:
            positions = np.minimum(np.searchsorted(self._sorted, keys), self._sorted.size - 1)
            found = self._sorted[positions] == keys
        if self._pending:
            found |= np.fromiter((bytes(k) in self._pending for k in keys), dtype=bool, count=len(keys))
        return found

    def __contains__(self, digest: bytes) -> bool:
        return bool(self.contains_many([digest])[0])

    def frozen(self) -> DigestSet:
        """Merged and ready to ship to workers (no pending buffer)."""
        self._merge()
        return self

    def _merge(self) -> None:
        if self._pending:
            added = np.asarray(sorted(self._pending), dtype=self._dtype)
            self._sorted = np.union1d(self._sorted, added)
            self._pending = set()


def image_key(image_id: str) -> bytes:
    """The 32-byte digest for an image id (its sha256 bytes; other ids are hashed)."""
    if len(image_id) == 64:
        try:
            return bytes.fromhex(image_id)
        except ValueError:
            pass
    return hashlib.sha256(image_id.encode()).digest()


def image_keys(image_ids: list[str]) -> np.ndarray:
    """image_key of each id, as an S32 array; sha256 hex ids (nearly all) convert in one go."""
    if all(len(i) == 64 for i in image_ids):
        try:
            return np.frombuffer(bytes.fromhex("".join(image_ids)), dtype="S32")
        except ValueError:
            pass
    return np.array([image_key(i) for i in image_ids], dtype="S32")


def source_key(uri: str, size: int, mtime_ns: int) -> bytes:
    """16 bytes naming one version of one input: its location, its size and its modification time
    (or etag-derived stamp). 128 bits keep accidental collisions out of reach at any corpus size."""
    return hashlib.blake2b(f"{uri}\0{size}\0{mtime_ns}".encode(), digest_size=16).digest()
