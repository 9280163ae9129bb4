"""A model served by vLLM as an evaluation engine, and the record of what served it.

`served(folder)` starts vLLM on the folder (or attaches to `url`), yields a `VLLMEngine` and
an `EngineRecord`: engine, version, dtype, device and, read from the server's log, the kernel
vLLM chose per quantized layer type with whether it computes the format natively, through
a fallback or emulated (`vllm_kernels`). Every served number carries that record. The
in-process engine has a record too (`inprocess_record`), so results always say which
engine produced them.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from quantstudy.hardware import cpu_model
from quantstudy.inference.vllm_engine import VLLMEngine
from quantstudy.inference.vllm_kernels import UNKNOWN, device_from_log, kernels_from_log
from quantstudy.inference.vllm_server import VLLMServer

SERVED_DTYPE = "bfloat16"


@dataclass(frozen=True)
class EngineRecord:
    engine: str                      # "hf" (in process) | "vllm"
    version: str
    dtype: str
    device: str
    how: str = ""                    # in process: "float" | "fakequant"
    kernels: tuple[dict, ...] = field(default_factory=tuple)   # vLLM: one per quantized layer type

    @property
    def status(self) -> str:
        """The weakest kernel's status: a model with one emulated layer type is emulated."""
        order = ["emulated", "unknown", "fallback", "native"]
        statuses = [k["status"] for k in self.kernels] or ["native"]
        return min(statuses, key=order.index)

    def to_dict(self) -> dict:
        return {"engine": self.engine, "version": self.version, "dtype": self.dtype, "device": self.device,
                "how": self.how, "kernels": [dict(k) for k in self.kernels], "status": self.status}


def inprocess_record(how: str, dtype: str, device: str = "cpu") -> EngineRecord:
    import torch
    import transformers

    where = f"cpu ({cpu_model()})" if device == "cpu" else device
    return EngineRecord("hf", f"transformers {transformers.__version__}, torch {torch.__version__}", dtype, where,
                        how, ({"layer_type": "all", "kernel": "fake-quant" if how == "fakequant" else "dense",
                               "status": "emulated" if how == "fakequant" else "native",
                               "why": "dequantized weights, activations quantized per token in float"
                               if how == "fakequant" else "the float model"},))


@contextlib.contextmanager
def served(folder: str | os.PathLike, tokenizer, *, url: str | None = None, python=None, concurrency: int = 16,
           max_model_len: int | None = 2048, progress: bool = False, log_dir: str | os.PathLike | None = None,
           prefix_cache: bool = False, seeded_sampling: bool = False):
    """(VLLMEngine, EngineRecord) for `folder` served by vLLM, stopped on exit.

    Prefix caching is off unless asked for: a request whose prefix is cached computes only its
    suffix, with other GEMM shapes, and in bf16 that moves its scores (measured: up to 0.7
    nats on a HellaSwag ending, 1 of 3 GSM8K greedy answers changed), so a score would depend
    on what the server ran before it -- a resumed evaluation would not reproduce a fresh one.
    On, MMLU's shared 5-shot prompts are computed once (much faster)."""
    name = "model" if url is None else None
    log_path = None if log_dir is None else Path(log_dir) / f"vllm-{Path(folder).name}.log"
    server = VLLMServer(folder, name, url=url, python=python, max_model_len=max_model_len, dtype=SERVED_DTYPE,
                        log_path=log_path, keep_log=log_path is not None,
                        extra_args=() if prefix_cache else ("--no-enable-prefix-caching",),
                        seeded_sampling=seeded_sampling)
    with server:
        info = server.info
        log = Path(info.log_path).read_text(errors="replace") if info.log_path else ""
        device = device_from_log(log) if log else "unknown (an endpoint we did not start)"
        kernels = kernels_from_log(log, device) if log else ()
        if not kernels:
            kernels = ({"layer_type": "all", "kernel": "unknown", "status": UNKNOWN,
                        "why": "the server's log is not ours to read"},)
        else:
            kernels = tuple(vars(k) for k in kernels)
        where = f"cpu ({cpu_model()})" if device == "cpu" else device
        how = "served" if url else ("served, prefix cache on" if prefix_cache else "served, prefix cache off")
        if not url and server.seeded_sampling and server.accelerator == "cpu":   # whole prefills: another configuration
            how += ", no chunked prefill"
        record = EngineRecord("vllm", info.version, SERVED_DTYPE, where, how, kernels)
        engine = VLLMEngine(info.url, server.name, tokenizer, concurrency=concurrency, progress=progress)
        yield engine, record
