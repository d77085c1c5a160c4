"""MaskCLIP dense patch features, the features RNS classifies."""
