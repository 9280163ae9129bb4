"""Record the Hessian GPTQ is handed for each linear group (keyed by the group's first member's
short name: q_proj for q/k/v, gate_proj for gate/up), while the real GPTQ still runs."""

from contextlib import contextmanager


@contextmanager
def recorded_hessians():
    from quantstudy.quantize.algorithms import gptq as handler

    seen = {}
    real = handler.gptq_quantize

    def spy(w, h, *args, layer: str = "", **kwargs):
        seen[layer.rsplit(".", 1)[-1]] = h.clone()
        return real(w, h, *args, layer=layer, **kwargs)

    handler.gptq_quantize = spy
    try:
        yield seen
    finally:
        handler.gptq_quantize = real
