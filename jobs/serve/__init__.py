"""The query service: a Ray Serve application with a FastAPI ingress (search, segmentation, supports)."""
