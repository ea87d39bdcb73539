"""IEMOCAP 4-class emotion recognition, leave-one-session-out."""
