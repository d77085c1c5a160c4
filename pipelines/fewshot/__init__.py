"""Few-shot segmentation: support sets (labels, folders, ingestion) and segmenting images with them."""
