"""SLURP spoken language understanding (scenario / action / intent classification)."""
