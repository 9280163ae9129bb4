"""Evaluate stage: accuracy of a baseline and its quantized variants."""
