"""Data: the embedded synthetic surfaces, image folders, packing, and the manifest."""
