"""Model presets and all weight I/O: weight files, hub downloads and checkpoint loading. The only place in
operators/ that touches the file system."""
