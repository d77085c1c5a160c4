"""What every model operator shares: devices, image input forms, COCO RLE, CLIP models, text features, prompts."""
