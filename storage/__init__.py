"""LanceDB storage: table schemas, writers, readers and indexes."""

from storage.index_store import IndexStore, ModelMismatchError

__all__ = ["IndexStore", "ModelMismatchError"]
