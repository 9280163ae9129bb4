"""quantstudy: accuracy-performance trade-offs of LLM quantization, as a tool."""

__version__ = "0.4.0"
