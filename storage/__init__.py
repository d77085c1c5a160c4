"""LanceDB storage: table schemas, writers, readers and indexes."""

from maskdex.storage.index_store import IndexStore, ModelMismatchError
from maskdex.storage.support_store import SupportArrays, SupportStore

__all__ = ["IndexStore", "ModelMismatchError", "SupportArrays", "SupportStore"]
