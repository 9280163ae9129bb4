"""Serving speed and cost: vLLM engine runs, workloads, hardware catalogue, roofline model."""
