"""wav2vec 2.0 pre-training with SummaryMixing (or MHSA) on LibriLight."""
