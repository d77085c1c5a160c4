"""LanceDB storage: table schemas, writers, readers and indexes."""
