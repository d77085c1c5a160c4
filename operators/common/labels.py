"""The label conventions every class-index map in maskdex follows (supports, data sets, predictions)."""

# Pixels with this value are ignored: not trained on, not scored.
IGNORE_INDEX = 255
# Class indices share one byte with the ignore value, so 0..254 are classes.
MAX_CLASSES = IGNORE_INDEX
