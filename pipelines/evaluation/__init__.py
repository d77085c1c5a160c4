"""Evaluation jobs: segmentation data sets and support sampling, the sharded mIoU job, retrieval mAP, reports."""
