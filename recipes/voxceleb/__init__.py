"""VoxCeleb1 speaker verification."""
