"""Benchmarks: one mixing layer, a whole encoder, a wav2vec 2.0 pre-training step."""
