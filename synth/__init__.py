"""Synthetic media: test patterns with machine-readable frame counters, tones, QA calls."""
