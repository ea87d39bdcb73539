"""CommonVoice Welsh speech recognition (CTC)."""
