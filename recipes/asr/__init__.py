"""CommonVoice speech recognition from scratch: SummaryMixing Conformer, CTC + attention."""
