"""Metrics of design.md section 5: mIoU from a confusion matrix, and retrieval AP and recall."""
