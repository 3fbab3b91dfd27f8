"""Measurement tools: the training benchmark and the memory probe."""
