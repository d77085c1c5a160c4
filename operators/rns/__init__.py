"""Retrieve and Segment: the support memory, test units, per-image head training, the method and baselines."""
