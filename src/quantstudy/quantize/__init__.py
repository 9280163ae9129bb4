"""Quantize stage: pure algorithms over tensors, a model walker, and checkpoint I/O."""
