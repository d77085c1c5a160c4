"""SAM 2 automatic masks as COCO RLE with boxes and quality scores."""
