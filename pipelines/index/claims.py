"""Which input of a run owns each image: decided before any worker writes that image's regions.

Byte-identical copies in one run hash to one image_id and reach the workers in any order; since
the workers write regions themselves, two of them would both write a copy's regions. A run-scoped
actor (no CPU reserved, on the driver's node, so it lives exactly as long as the driver and is not
lost with a worker node) answers each claim: the first input to claim an image owns it, and a
repeat of that same claim succeeds again, because Ray Data retries a failed batch whole and the
retry must write what the first attempt could not hand over. An input is its uri within its batch
(the batch's uris, hashed): another batch holding the same uri (the same parquet row read twice,
say) is a copy, not a retry.

The actor holds 48 bytes per image of the run plus dict overhead (about 170 MB per million
images, measured); a run of many millions is better sharded by source prefix anyway (README, "At corpus scale").
"""

from __future__ import annotations

import hashlib

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from maskdex.storage.digests import image_key


def batch_key(uris) -> bytes:
    """Names a batch by its inputs, the same for every attempt at it."""
    return hashlib.sha256("\n".join(str(uri) for uri in uris).encode()).digest()[:16]


@ray.remote(num_cpus=0)
class ImageClaims:
    def __init__(self):
        self._owners: dict[bytes, bytes] = {}

    def claim(self, image_ids: list[str], uris: list[str], batch: bytes) -> list[bool]:
        """Per image: whether this input owns it (and so writes its regions)."""
        won, in_this_call = [], set()
        for image_id, uri in zip(image_ids, uris):
            key = image_key(image_id)
            owner = hashlib.sha256(batch + str(uri).encode()).digest()[:16]
            # A batch holding one input twice owns it once.
            won.append(self._owners.setdefault(key, owner) == owner and key not in in_this_call)
            in_this_call.add(key)
        return won

    def size(self) -> int:
        return len(self._owners)


def start_claims():
    """A fresh ImageClaims actor for one run, on this (the driver's) node."""
    here = ray.get_runtime_context().get_node_id()
    return ImageClaims.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
