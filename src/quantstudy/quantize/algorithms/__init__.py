"""Registered algorithms, one module each; `recipes.algorithms()` imports every module here.

Each module defines a config dataclass (the Recipe knobs it reads) and an `Algorithm`
subclass decorated with `@register`, whose `quantize_layer` turns one decoder layer's
calibration activations into quantized values by calling the pure maths (`quantize/rtn.py`,
`gptq.py`, `awq.py`). The walker (`quantize/sequential.py`) knows none of them by name.
"""
