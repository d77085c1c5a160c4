"""The index job: image sources -> SAM 2 masks -> Alpha-CLIP embeddings -> LanceDB, on Ray Data."""
