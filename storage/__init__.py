"""LanceDB storage: table schemas, writers, readers and indexes."""

from storage.index_store import IndexStore, ModelMismatchError
from storage.support_store import SupportArrays, SupportStore

__all__ = ["IndexStore", "ModelMismatchError", "SupportArrays", "SupportStore"]
