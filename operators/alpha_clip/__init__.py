"""Alpha-CLIP: the model, the crop geometry shared by image and mask, and the region/image/text encoder."""
