"""Floor 3, engines: running a model and asking it for scores and text.

`requests` (what is asked, what comes back, the `Engine` protocol), `hf_engine` (the
in-process engine on any transformers model, float or fake-quant; `hf_packing` its
request packing), `fake_quant` (quantized linears emulated in PyTorch), `loading`
(float folders and checkpoints into a runnable model), `vllm_server` (the vLLM
OpenAI-compatible server's lifecycle, or an endpoint someone else runs).
"""
